"""A recipe's chain is checked before any work (like a compiler's type check): every table a stage reads is
written by an earlier stage or given by the task source, every column it needs is a field of that table's row
type and is filled by an earlier stage (its `fills`) or given by the task source, every table it writes is
registered, and every role it uses has an engine. A ConfigError names the stage, table and column."""
from __future__ import annotations

from schemas.errors import ConfigError
from schemas.registry import get_table
from stages.base import LINEAGE_COLUMNS, Stage


def check_chain(stages: list[Stage], inputs: list[str], roles: list[str] | None = None) -> None:
    available = set(inputs)
    filled: dict[str, set[str]] = {}          # table -> columns filled so far
    fillers: dict[str, list[str]] = {}        # table -> the stages that fill columns of it so far
    for t in inputs:
        filled[t] = set(get_table(t).columns)
    for k, st in enumerate(stages):
        where = f"stage '{st.name}' ({st.kind})"
        for table, cols in st.reads.items():
            try:
                spec = get_table(table)
            except ConfigError as e:
                raise ConfigError(f"{where} reads {e}") from None
            if table not in available:
                later = [s.name for s in stages[k + 1:] if table in s.writes]
                if later or table in st.writes:
                    raise ConfigError(f"{where} reads table '{table}', which only "
                                      f"{'itself' if not later else 'the later stage ' + repr(later[0])} writes: "
                                      f"a stage can only read what earlier stages or the task source wrote")
                raise ConfigError(f"{where} reads table '{table}', which no earlier stage writes and the task source "
                                  f"does not give (available: {', '.join(sorted(available))})")
            missing = [c for c in cols if c not in spec.columns]
            if missing:
                raise ConfigError(f"{where} needs column '{missing[0]}' of table '{table}', which "
                                  f"{spec.row_type.__name__} does not have")
            own = set()
            if table in st.writes:
                declared = st.filled_columns(table)
                own = set(spec.columns) if declared is None else declared
            always = {spec.id_column, "drop_reason", *LINEAGE_COLUMNS}
            unfilled = [c for c in cols if c not in filled.get(table, set()) | own | always]
            if unfilled:
                by = ", ".join(f"'{n}'" for n in fillers.get(table, [])) or "no stage"
                raise ConfigError(f"{where} needs column '{unfilled[0]}' of table '{table}', which no earlier stage "
                                  f"fills (filled by {by}: {', '.join(sorted(filled.get(table, set()) - always)) or 'none'})")
        for table in st.writes:
            try:
                spec = get_table(table)
            except ConfigError as e:
                raise ConfigError(f"{where} writes {e}") from None
            available.add(table)
            cols = st.filled_columns(table)
            filled.setdefault(table, set()).update(spec.columns if cols is None else cols)
            fillers.setdefault(table, []).append(st.name)
        for role in st.roles:
            if roles is not None and role not in roles:
                raise ConfigError(f"{where} uses engine role '{role}', which has no engine "
                                  f"(engines: {', '.join(roles)})")

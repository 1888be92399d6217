"""The table registry: table name -> row type, id column, parent columns, scope.

Adding a method's table is adding a row type (schemas/rows.py or a module of its own) and one `register_table` call.
Storage, SQL, `errata show --id`, exports and the recipe checker find tables here; no other code knows table names.

- `id_column`: the column that identifies a row (unique within a version).
- `parent_columns`: columns holding ids of the rows this row was made from (for lineage joins and `show --id`).
- `scope`: "shard" tables are split into shards like the problems they come from; a "build" table is computed
  once over the whole build by a global stage (e.g. a distribution measured over every shard).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pyarrow as pa

from schemas.errors import ConfigError
from schemas.rows import Attempt, ErrorRecord, Judgement, Problem, arrow_schema, columns


@dataclass(frozen=True)
class TableSpec:
    name: str
    row_type: type
    id_column: str
    parent_columns: tuple[str, ...] = ()
    scope: Literal["shard", "build"] = "shard"
    description: str = ""

    @property
    def schema(self) -> pa.Schema:
        return arrow_schema(self.row_type)

    @property
    def columns(self) -> list[str]:
        return columns(self.row_type)


_REGISTRY: dict[str, TableSpec] = {}


def register_table(spec: TableSpec) -> TableSpec:
    """Register a table; registering the same spec again is a no-op, a different one under a taken name an error."""
    have = _REGISTRY.get(spec.name)
    if have is not None and have != spec:
        raise ConfigError(f"table '{spec.name}' is already registered with another definition")
    if spec.id_column not in spec.columns:
        raise ConfigError(f"table '{spec.name}': id column '{spec.id_column}' is not a field of "
                          f"{spec.row_type.__name__}")
    missing = [c for c in spec.parent_columns if c not in spec.columns]
    if missing:
        raise ConfigError(f"table '{spec.name}': parent columns {missing} are not fields of {spec.row_type.__name__}")
    _REGISTRY[spec.name] = spec
    return spec


def get_table(name: str) -> TableSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown table '{name}' (registered: {', '.join(sorted(_REGISTRY))})") from None


def registered_tables() -> dict[str, TableSpec]:
    return dict(_REGISTRY)


def id_column(table: str) -> str | None:
    spec = _REGISTRY.get(table)
    return spec.id_column if spec else None


ERRORS = "errors"

register_table(TableSpec("problems", Problem, "problem_id",
                         description="the tasks: questions (math) or environment tasks (agents), with references"))
register_table(TableSpec("attempts", Attempt, "attempt_id", ("problem_id",),
                         description="model samples of a problem, verified against its reference"))
register_table(TableSpec("judgements", Judgement, "judgement_id", ("target_id", "problem_id"),
                         description="an LLM's verdict on an attempt (or injection): parsed fields beside its raw "
                                     "text, parse_ok"))
register_table(TableSpec(ERRORS, ErrorRecord, "error_id", ("row_id",),
                         description="rows that failed inside a stage: stage, table, row id, reason, raw input/output"))

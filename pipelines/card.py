"""The dataset card of a version: `README.md` beside its manifest, in the Hugging Face dataset-card convention (a
YAML header with one config per table, license and task tags, then text), with its plots as PNG files in `plots/`.

Written at publish time, before the manifest (so a published version always has its card), from the version's own
Parquet files through a sandboxed DuckDB and the manifest's fields: what built it (recipe, method, models, prompt
versions, code version, parents), rows and yield per stage, drop reasons, error types, verdicts, length
distributions, verification rates, the fraction of masked (loss false) text, and a few example rows. Every figure
is computed from what the version's tables hold, whatever the method: a column is summarised when a table has it.
Plots are drawn by matplotlib.
"""
from __future__ import annotations

import io
import json
import logging
from typing import Any, Callable

import duckdb

from pipelines.files import Root
from schemas.manifest import Manifest

CARD = "README.md"
PLOTS = "plots"
# the text column a table's lengths are measured on: the first of these it has
TEXT_COLUMNS = ("completion", "text", "solution", "raw_text", "question", "message")
# per-row lists whose items carry a loss flag, and the field holding their text
LOSS_LISTS = {"segments": "text", "messages": "content"}
EXAMPLE_ROWS = 3

log = logging.getLogger("errata.card")


def _q(ident: str) -> str:
    return '"' + ident.replace('"', '""') + '"'


def _lit(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


# --- reading a version's tables ---------------------------------------------------------------------------------
def version_connection(root: Root, vdir: str, m: Manifest) -> duckdb.DuckDBPyConnection:
    """A sandboxed DuckDB with one view per table of the version (works before its manifest is written)."""
    from pipelines.sql import sandboxed_connection

    def views(con: duckdb.DuckDBPyConnection) -> None:
        for table, e in m.tables.items():
            files = [f"{vdir}/{f.path}" for f in e.files]
            if not files:
                continue
            if root.local:
                src = f"read_parquet([{', '.join(_lit(f) for f in files)}], union_by_name=true)"
            else:
                import pyarrow.dataset as pads
                con.register(f"__card_{table}", pads.dataset(files, filesystem=root.fs, format="parquet"))
                src = _q(f"__card_{table}")
            con.execute(f"CREATE VIEW {_q(table)} AS SELECT * FROM {src}")
    return sandboxed_connection(root, None, views)


def _columns(con: duckdb.DuckDBPyConnection, table: str) -> dict[str, str]:
    return {r[0]: r[1] for r in con.execute(f"DESCRIBE {_q(table)}").fetchall()}


def _counts(con, table: str, col: str, where: str = "") -> dict[str, int]:
    rows = con.execute(f"SELECT {_q(col)}::VARCHAR, count(*) FROM {_q(table)} {where} GROUP BY 1 "
                       f"ORDER BY 2 DESC, 1 LIMIT 30").fetchall()
    return {("null" if k is None else k): n for k, n in rows}


# --- the figures ------------------------------------------------------------------------------------------------
def compute_stats(con: duckdb.DuckDBPyConnection, m: Manifest) -> dict[str, Any]:
    """Every figure of the card, from the version's tables (views named after them) and its manifest."""
    stages = {}
    for name, s in m.stages.items():
        n_in, n_out = s.get("in"), s.get("out")
        stages[name] = {"in": n_in, "out": n_out, "errors": s.get("errors", 0),
                        "yield": round(n_out / n_in, 4) if n_in and n_out is not None else None,
                        "dropped": {k[len("dropped_"):]: v for k, v in s.items()
                                    if k.startswith("dropped_") and isinstance(v, (int, float))}}
    tables: dict[str, Any] = {}
    present = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    for table, e in m.tables.items():
        t: dict[str, Any] = {"rows": e.rows}
        if table not in present or not e.rows:
            tables[table] = t
            continue
        cols = _columns(con, table)
        kept = "WHERE drop_reason IS NULL" if "drop_reason" in cols else ""
        if "drop_reason" in cols:
            t["drop_reasons"] = _counts(con, table, "drop_reason")
            t["kept"] = con.execute(f"SELECT count(*) FROM {_q(table)} {kept}").fetchone()[0]
        if "error_type" in cols:
            t["error_types"] = _counts(con, table, "error_type", "WHERE error_type IS NOT NULL")
        if "verdict" in cols:
            t["verdicts"] = _counts(con, table, "verdict")
        if "reason" in cols and "stage" in cols:      # the errors table
            t["error_reasons"] = _counts(con, table, "reason")
        if "is_correct" in cols:
            ok, bad, unk = con.execute(
                f"SELECT count(*) FILTER (WHERE is_correct), count(*) FILTER (WHERE NOT is_correct), "
                f"count(*) FILTER (WHERE is_correct IS NULL) FROM {_q(table)} {kept}").fetchone()
            t["verification"] = {"correct": ok, "wrong": bad, "unchecked": unk,
                                 "correct_rate": round(ok / (ok + bad), 4) if ok + bad else None}
        col = next((c for c in TEXT_COLUMNS if cols.get(c) == "VARCHAR"), None)
        if col:
            r = con.execute(f"SELECT count(*), min(n), quantile_disc(n, 0.1), quantile_disc(n, 0.5), "
                            f"quantile_disc(n, 0.9), max(n), avg(n) FROM (SELECT length({_q(col)}) AS n "
                            f"FROM {_q(table)} {kept}) WHERE n IS NOT NULL").fetchone()
            if r[0]:
                t["lengths"] = {"column": col, "unit": "characters", "rows": r[0], "min": r[1], "p10": r[2],
                                "p50": r[3], "p90": r[4], "max": r[5], "mean": round(r[6], 1)}
        for lst, field in LOSS_LISTS.items():
            if lst in cols and "loss" in cols[lst] and field in cols[lst]:
                rows = con.execute(
                    f"SELECT s.loss, sum(len(regexp_extract_all(s.{field}, '\\S+'))), count(*) FROM "
                    f"(SELECT unnest({_q(lst)}) AS s FROM {_q(table)} {kept}) GROUP BY 1").fetchall()
                by = {bool(k): (n or 0, c) for k, n, c in rows if k is not None}
                trained, masked = by.get(True, (0, 0))[0], by.get(False, (0, 0))[0]
                if trained + masked:
                    t["loss_mask"] = {"list": lst, "unit": "whitespace-separated words", "trained": trained,
                                      "masked": masked, "masked_fraction": round(masked / (trained + masked), 4),
                                      "parts_trained": by.get(True, (0, 0))[1],
                                      "parts_masked": by.get(False, (0, 0))[1]}
        tables[table] = t
    return {"ref": m.ref, "stages": stages, "tables": tables, "examples": examples(con, m, present)}


def example_table(m: Manifest, present: set[str] | None = None) -> str | None:
    """The table a card shows examples of: the last one with a loss-flagged list (revisions, trajectories), else
    attempts, else the biggest non-error table."""
    from schemas.registry import ERRORS, registered_tables
    specs = registered_tables()
    names = [t for t in m.tables if t != ERRORS and m.tables[t].rows and (present is None or t in present)]
    with_loss = [t for t in names if t in specs and set(specs[t].columns) & set(LOSS_LISTS)]
    if with_loss:
        return with_loss[-1]
    if "attempts" in names:
        return "attempts"
    return max(names, key=lambda t: m.tables[t].rows, default=None)


def _short(v: Any, n: int = 300) -> Any:
    if isinstance(v, str):
        return v if len(v) <= n else v[:n] + f"... [{len(v) - n} more characters]"
    if isinstance(v, list):
        return [_short(x, n) for x in v[:8]] + ([f"... [{len(v) - 8} more]"] if len(v) > 8 else [])
    if isinstance(v, dict):
        return {k: _short(x, n) for k, x in v.items()}
    return v


def examples(con, m: Manifest, present: set[str]) -> dict[str, Any]:
    table = example_table(m, present)
    if table is None:
        return {}
    cols = _columns(con, table)
    where = "WHERE drop_reason IS NULL" if "drop_reason" in cols else ""
    skip = {"run_id", "method", "created_at", "parent_ids", "sampling_json", "prompt"}
    rel = con.execute(f"SELECT * FROM {_q(table)} {where} LIMIT {EXAMPLE_ROWS}")
    names = [d[0] for d in rel.description]
    rows = [{k: _short(v) for k, v in zip(names, r) if k not in skip and v is not None} for r in rel.fetchall()]
    return {"table": table, "rows": json.loads(json.dumps(rows, default=str))}


# --- plots ------------------------------------------------------------------------------------------------------
# At most one figure per kind (each table a series or a labelled bar): a figure costs ~0.1-0.3 s to draw on a
# 2-core box, and every build publishes.
def _figure(width: float, height: float = 3.4):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(width, height), dpi=100)
    return plt, fig, ax


def _png(plt, fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _bar(title: str, labels: list[str], series: dict[str, list[float]], xlabel: str) -> bytes:
    """Horizontal bars (long labels stay readable), one group per label, one bar per series."""
    plt, fig, ax = _figure(7.5, 0.8 + 0.22 * len(labels) * len(series) + 0.1 * len(labels))
    height = 0.8 / max(1, len(series))
    for i, (name, vals) in enumerate(series.items()):
        ys = [y + i * height - 0.4 + height / 2 for y in range(len(labels))]
        ax.bar_label(ax.barh(ys, vals, height=height, label=name), fontsize=7, padding=2)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.margins(x=0.12)
    if len(series) > 1:
        ax.legend(fontsize=7, loc="lower right")
    return _png(plt, fig)


def _hists(title: str, values: dict[str, list[int]], xlabel: str) -> bytes:
    plt, fig, ax = _figure(7.5)
    for name, vals in values.items():
        ax.hist(vals, bins=min(40, max(5, len(set(vals)))), alpha=0.55, label=f"{name} ({len(vals)})")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel("rows", fontsize=8)
    ax.legend(fontsize=7)
    return _png(plt, fig)


def make_plots(con, stats: dict[str, Any]) -> dict[str, bytes]:
    """PNG bytes by file name (under plots/): one figure per kind the version has data for."""
    plots: dict[str, bytes] = {}
    st = {k: v for k, v in stats["stages"].items() if v["in"] is not None}
    if st:
        plots["stages.png"] = _bar("rows in and out per stage", list(st),
                                   {"in": [v["in"] or 0 for v in st.values()],
                                    "out": [v["out"] or 0 for v in st.values()]}, "rows")
    tables = stats["tables"]
    for key, title in (("drop_reasons", "drop reasons"), ("error_types", "error types"), ("verdicts", "verdicts")):
        bars = {f"{t}: {k}": n for t, s in tables.items() for k, n in (s.get(key) or {}).items()
                if not (key == "drop_reasons" and k == "null")}
        if bars:
            plots[f"{key.replace('_', '-')}.png"] = _bar(title + " (per table)", list(bars),
                                                         {"rows": list(bars.values())}, "rows")
    ver = {t: s["verification"] for t, s in tables.items() if s.get("verification")}
    if ver:
        plots["verification.png"] = _bar("verification (kept rows)", list(ver),
                                         {k: [v[k] for v in ver.values()] for k in ("correct", "wrong", "unchecked")},
                                         "rows")
    lengths = {}
    for t, s in tables.items():
        if s.get("lengths"):
            col = s["lengths"]["column"]
            kept = "WHERE drop_reason IS NULL" if "drop_reasons" in s else ""
            vals = [r[0] for r in con.execute(f"SELECT length({_q(col)}) FROM {_q(t)} {kept} "
                                              f"USING SAMPLE 20000 ROWS").fetchall() if r[0] is not None]
            if vals:
                lengths[f"{t}.{col}"] = vals
    if lengths:
        plots["lengths.png"] = _hists("text length (kept rows; up to 20000 sampled per table)", lengths,
                                      "characters")
    lm = {t: s["loss_mask"] for t, s in tables.items() if s.get("loss_mask")}
    if lm:
        plots["loss-mask.png"] = _bar("trained vs masked words (kept rows)", list(lm),
                                      {"trained": [v["trained"] for v in lm.values()],
                                       "masked": [v["masked"] for v in lm.values()]}, "words")
    return plots


# --- the card's text --------------------------------------------------------------------------------------------
def _yaml_header(m: Manifest, main_table: str | None) -> str:
    import yaml
    configs = []
    for table, e in m.tables.items():
        c: dict[str, Any] = {"config_name": table, "data_files": [{"split": "train", "path": f"{table}/*.parquet"}]}
        if table == main_table:
            c["default"] = True
        configs.append(c)
    header = {"configs": configs, "license": "other", "task_categories": ["text-generation"],
              "language": ["en"], "tags": ["errata", "self-correction", "synthetic", m.method],
              "pretty_name": f"{m.dataset} version {m.version}"}
    return "---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n"


def _table(head: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join("" if v is None else str(v).replace("|", "\\|") for v in r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def card_markdown(m: Manifest, stats: dict[str, Any], plots: list[str]) -> str:
    ex = stats.get("examples") or {}
    md = [_yaml_header(m, ex.get("table")), f"# {m.dataset} @ version {m.version}\n",
          f"Self-correction training data made by errata with the `{m.method}` method. "
          f"Published {m.created_at[:19]} UTC by run `{m.run_id}`. Each table is a config: "
          f"`datasets.load_dataset(\"parquet\", data_files=\"<table>/*.parquet\")` loads one.\n",
          "## What built it\n"]
    desc = (m.recipe or {}).get("description")
    eng = [f"{', '.join(e.get('roles', []))}: {e.get('kind')} {e.get('model')}" for e in m.engines.values()]
    if not eng:
        eng = [f"{k}: {v.get('model') or v.get('role')}" for k, v in m.models.items()
               if isinstance(v, dict) and (v.get("model") or v.get("role"))]
    md.append(_table(["", ""], [
        ["method", m.method], ["recipe", desc or "(no description)"], ["recipe hash", m.recipe_hash],
        ["models", "; ".join(eng) or "none"],
        ["prompt versions", ", ".join(f"{k}@{v}" if "@" not in str(v) else str(v)
                                      for k, v in m.prompt_templates.items()) or "none"],
        ["code version", m.code_version], ["parents", ", ".join(m.parents) or "none"],
        ["inputs", json.dumps(m.inputs) if m.inputs else "none"],
        ["tokens", ", ".join(f"{k} {v}" for k, v in m.tokens.items()) or "none"]]))
    md.append("\n## Tables\n")
    md.append(_table(["table", "rows", "kept (no drop_reason)"],
                     [[t, s["rows"], s.get("kept", "")] for t, s in stats["tables"].items()]))
    if stats["stages"]:
        md.append("\n## Rows and yield per stage\n")
        md.append(_table(["stage", "in", "out", "yield", "errors", "dropped"],
                         [[n, s["in"], s["out"], "" if s["yield"] is None else f"{s['yield']:.1%}", s["errors"],
                           ", ".join(f"{k} {v}" for k, v in s["dropped"].items())]
                          for n, s in stats["stages"].items()]))
    for key, title in (("drop_reasons", "Drop reasons"), ("error_types", "Error types"), ("verdicts", "Verdicts"),
                       ("error_reasons", "Stage errors (errors table)")):
        rows = [[t, k, n] for t, s in stats["tables"].items() for k, n in (s.get(key) or {}).items()
                if not (key == "drop_reasons" and k == "null")]      # kept rows are in the Tables section
        if rows:
            md.append(f"\n## {title}\n")
            md.append(_table(["table", key.rstrip("s").replace("_", " "), "rows"], rows))
    rows = [[t, s["verification"]["correct"], s["verification"]["wrong"], s["verification"]["unchecked"],
             "" if s["verification"]["correct_rate"] is None else f"{s['verification']['correct_rate']:.1%}"]
            for t, s in stats["tables"].items() if s.get("verification")]
    if rows:
        md.append("\n## Verification (kept rows)\n")
        md.append(_table(["table", "correct", "wrong", "unchecked", "correct rate"], rows))
    rows = [[t, s["lengths"]["column"], s["lengths"]["rows"], s["lengths"]["min"], s["lengths"]["p10"],
             s["lengths"]["p50"], s["lengths"]["p90"], s["lengths"]["max"], s["lengths"]["mean"]]
            for t, s in stats["tables"].items() if s.get("lengths")]
    if rows:
        md.append("\n## Lengths (characters, kept rows)\n")
        md.append(_table(["table", "column", "rows", "min", "p10", "median", "p90", "max", "mean"], rows))
    rows = [[t, s["loss_mask"]["list"], s["loss_mask"]["trained"], s["loss_mask"]["masked"],
             f"{s['loss_mask']['masked_fraction']:.1%}"] for t, s in stats["tables"].items() if s.get("loss_mask")]
    if rows:
        md.append("\n## Loss mask (kept rows)\n\nText a model is trained on (loss true) and text it only reads "
                  "(loss false), counted in whitespace-separated words (the tokenizer is chosen at export).\n\n")
        md.append(_table(["table", "parts", "trained words", "masked words", "masked fraction"], rows))
    if plots:
        md.append("\n## Plots\n")
        md += [f"![{p[:-4]}]({PLOTS}/{p})\n" for p in plots]
    if ex.get("rows"):
        md.append(f"\n## Example rows ({ex['table']}, kept)\n")
        for r in ex["rows"]:
            md.append("```json\n" + json.dumps(r, indent=1, ensure_ascii=False) + "\n```\n")
    return "\n".join(md)


def build_card(root: Root, vdir: str, m: Manifest, with_plots: bool = True) -> tuple[str, dict[str, bytes]]:
    """(README text, plots) of a version whose tables are in `vdir`."""
    con = version_connection(root, vdir, m)
    try:
        stats = compute_stats(con, m)
        plots = make_plots(con, stats) if with_plots else {}
    finally:
        con.close()
    return card_markdown(m, stats, list(plots)), plots


def write_card(root: Root, vdir: str, m: Manifest, warn: Callable[[str], None] = log.warning) -> str | None:
    """Write README.md and plots/ into a version directory (before its manifest). A card that cannot be made does
    not stop the publication: a short card saying why is written instead, and `warn` is told."""
    try:
        text, plots = build_card(root, vdir, m)
    except Exception as e:   # the data is already safe; a card bug must not lose a build
        warn(f"dataset card of {m.ref}: figures could not be computed ({type(e).__name__}: {e})")
        text = (_yaml_header(m, None) + f"# {m.dataset} @ version {m.version}\n\nMethod `{m.method}`, run "
                f"`{m.run_id}`, code {m.code_version}. The card's figures could not be computed: "
                f"{type(e).__name__}: {e}\n")
        plots = {}
    for name, blob in plots.items():
        root.write_bytes_atomic(f"{vdir}/{PLOTS}/{name}", blob)
    root.write_bytes_atomic(f"{vdir}/{CARD}", text.encode())
    return f"{vdir}/{CARD}"

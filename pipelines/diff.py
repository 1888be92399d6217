"""`errata diff A B`: what changed from version A to version B (of one dataset or two).

Counts per table, rows in / out / yield per stage, the distributions the dataset card shows (drop reasons, error
types, verdicts, verification, lengths, the loss mask's masked fraction), rows added and removed by id, and a few
rows whose content changed under the same id (lineage columns such as run_id and created_at are left out of the
comparison: a rebuild that makes the same rows changes nothing). Everything runs in `errata sql`'s read-only DuckDB
connection; nothing is loaded whole into memory. `render` gives the plain text the terminal and the viewer show.
"""
from __future__ import annotations

from typing import Any

from pipelines.card import compute_stats, version_connection
from pipelines.catalog import Catalog
from pipelines.sql import connect
from schemas.manifest import Manifest
from schemas.registry import registered_tables

LINEAGE = {"run_id", "created_at", "parent_ids", "method"}
SAMPLE = 5


def _q(ident: str) -> str:
    return '"' + ident.replace('"', '""') + '"'


def _src(m: Manifest, table: str) -> str:
    return f"{_q(f'{m.dataset}_v{m.version}')}.{_q(table)}"


def _stats(catalog: Catalog, m: Manifest) -> dict[str, Any]:
    con = version_connection(catalog.root, catalog.version_dir(m.dataset, m.version), m)
    try:
        return compute_stats(con, m)
    finally:
        con.close()


def _pct(x: Any) -> str:
    return "-" if x is None else f"{x:.1%}"


def diff_versions(catalog: Catalog, a_ref: str, b_ref: str) -> dict[str, Any]:
    a, b = catalog.resolve(a_ref), catalog.resolve(b_ref)
    sa, sb = _stats(catalog, a), _stats(catalog, b)
    con = connect(catalog)
    specs = registered_tables()
    out: dict[str, Any] = {"a": a.ref, "b": b.ref, "a_method": a.method, "b_method": b.method,
                           "a_run": a.run_id, "b_run": b.run_id, "a_code": a.code_version, "b_code": b.code_version,
                           "recipe_changed": a.recipe_hash != b.recipe_hash}
    tables = list(dict.fromkeys([*a.tables, *b.tables]))
    out["tables"] = {t: {"a": a.tables[t].rows if t in a.tables else None,
                         "b": b.tables[t].rows if t in b.tables else None} for t in tables}
    out["stages"] = {s: {"a": sa["stages"].get(s), "b": sb["stages"].get(s)}
                     for s in dict.fromkeys([*sa["stages"], *sb["stages"]])}
    dist: dict[str, Any] = {}
    for t in tables:
        ta, tb = sa["tables"].get(t, {}), sb["tables"].get(t, {})
        d = {}
        for key in ("drop_reasons", "error_types", "verdicts", "error_reasons"):
            ka, kb = ta.get(key) or {}, tb.get(key) or {}
            if ka or kb:
                d[key] = {k: {"a": ka.get(k, 0), "b": kb.get(k, 0)} for k in dict.fromkeys([*ka, *kb])}
        if ta.get("verification") or tb.get("verification"):
            d["correct_rate"] = {"a": (ta.get("verification") or {}).get("correct_rate"),
                                 "b": (tb.get("verification") or {}).get("correct_rate")}
        if ta.get("lengths") or tb.get("lengths"):
            d["length_median"] = {"a": (ta.get("lengths") or {}).get("p50"), "b": (tb.get("lengths") or {}).get("p50")}
            d["length_mean"] = {"a": (ta.get("lengths") or {}).get("mean"), "b": (tb.get("lengths") or {}).get("mean")}
        if ta.get("loss_mask") or tb.get("loss_mask"):
            d["masked_fraction"] = {"a": (ta.get("loss_mask") or {}).get("masked_fraction"),
                                    "b": (tb.get("loss_mask") or {}).get("masked_fraction")}
        if d:
            dist[t] = d
    out["distributions"] = dist
    ids: dict[str, Any] = {}
    for t in tables:
        if t not in a.tables or t not in b.tables or t not in specs:
            continue
        idc = _q(specs[t].id_column)
        ta, tb = _src(a, t), _src(b, t)
        added = con.execute(f"SELECT count(*) FROM (SELECT {idc} FROM {tb} EXCEPT SELECT {idc} FROM {ta})").fetchone()[0]
        removed = con.execute(f"SELECT count(*) FROM (SELECT {idc} FROM {ta} EXCEPT SELECT {idc} FROM {tb})").fetchone()[0]
        ex_add = [r[0] for r in con.execute(f"SELECT {idc} FROM {tb} EXCEPT SELECT {idc} FROM {ta} ORDER BY 1 "
                                            f"LIMIT {SAMPLE}").fetchall()]
        ex_rem = [r[0] for r in con.execute(f"SELECT {idc} FROM {ta} EXCEPT SELECT {idc} FROM {tb} ORDER BY 1 "
                                            f"LIMIT {SAMPLE}").fetchall()]
        cols_a = [r[0] for r in con.execute(f"DESCRIBE {ta}").fetchall()]
        cols_b = {r[0] for r in con.execute(f"DESCRIBE {tb}").fetchall()}
        common = [c for c in cols_a if c in cols_b and c not in LINEAGE]
        h = "hash(" + ", ".join(f"x.{_q(c)}" for c in common) + ")"
        changed_sql = (f"FROM (SELECT {h.replace('x.', '')} AS h, {idc} FROM {ta}) x JOIN (SELECT "
                       f"{h.replace('x.', '')} AS h, {idc} FROM {tb}) y USING ({idc}) WHERE x.h <> y.h")
        changed = con.execute(f"SELECT count(*) {changed_sql}").fetchone()[0]
        samples = []
        for (rid,) in con.execute(f"SELECT {idc} {changed_sql} ORDER BY 1 LIMIT 3").fetchall():
            ra = con.execute(f"SELECT * FROM {ta} WHERE {idc} = ?", [rid])
            names = [d[0] for d in ra.description]
            va = dict(zip(names, ra.fetchone()))
            rb = con.execute(f"SELECT * FROM {tb} WHERE {idc} = ?", [rid])
            vb = dict(zip([d[0] for d in rb.description], rb.fetchone()))
            samples.append({"id": rid, "columns": {c: {"a": _short(va.get(c)), "b": _short(vb.get(c))}
                                                   for c in common if va.get(c) != vb.get(c)}})
        ids[t] = {"id_column": specs[t].id_column, "added": added, "removed": removed, "changed": changed,
                  "added_examples": ex_add, "removed_examples": ex_rem, "changed_examples": samples}
    out["rows"] = ids
    con.close()
    return out


def _short(v: Any, n: int = 160) -> str:
    s = str(v)
    return s if len(s) <= n else s[:n] + f"... [{len(s) - n} more]"


def render(d: dict[str, Any]) -> str:
    """The diff as plain text (what `errata diff` prints and the viewer shows)."""
    lines = [f"diff {d['a']} -> {d['b']}",
             f"  method {d['a_method']} -> {d['b_method']}; run {d['a_run']} -> {d['b_run']}; code {d['a_code']} -> "
             f"{d['b_code']}; recipe {'changed' if d['recipe_changed'] else 'unchanged'}", "", "tables (rows):"]
    for t, c in d["tables"].items():
        delta = "" if c["a"] is None or c["b"] is None else f"  ({c['b'] - c['a']:+d})"
        lines.append(f"  {t:<24} {'-' if c['a'] is None else c['a']:>8} -> {'-' if c['b'] is None else c['b']:>8}"
                     f"{delta}")
    lines += ["", "stages (in -> out, yield):"]
    for s, c in d["stages"].items():
        def one(x):
            return "-" if not x else f"{x['in']} -> {x['out']} ({_pct(x['yield'])})"
        lines.append(f"  {s:<24} {one(c['a']):>24}   |   {one(c['b'])}")
    if d["distributions"]:
        lines += ["", "distributions (A -> B):"]
        for t, dd in d["distributions"].items():
            for key, v in dd.items():
                if isinstance(v, dict) and "a" in v:
                    fmt = _pct if key.endswith(("rate", "fraction")) else (lambda x: "-" if x is None else str(x))
                    lines.append(f"  {t}.{key}: {fmt(v['a'])} -> {fmt(v['b'])}")
                else:
                    changed = {k: c for k, c in v.items() if c["a"] != c["b"]}
                    same = len(v) - len(changed)
                    body = ", ".join(f"{k} {c['a']} -> {c['b']}" for k, c in changed.items())
                    lines.append(f"  {t}.{key}: " + (body or "unchanged") + (f" ({same} unchanged)" if changed
                                                                               and same else ""))
    lines += ["", "rows by id (added / removed / changed):"]
    for t, r in d["rows"].items():
        lines.append(f"  {t:<24} +{r['added']} -{r['removed']} ~{r['changed']}")
        if r["added_examples"]:
            lines.append(f"    added:   {', '.join(map(str, r['added_examples']))}")
        if r["removed_examples"]:
            lines.append(f"    removed: {', '.join(map(str, r['removed_examples']))}")
        for ex in r["changed_examples"]:
            lines.append(f"    changed {r['id_column']}={ex['id']}:")
            for c, v in ex["columns"].items():
                lines.append(f"      {c}: {v['a']!r} -> {v['b']!r}")
    return "\n".join(lines) + "\n"

"""Exports in TRL's column conventions, registered by name with the tables they read.

An export is a pure per-row converter over a version's tables, written as Parquet (and JSONL on request) that
`datasets` and TRL load unchanged, plus a dataset card (with the source version's card copied in). `errata export REF --format sft|dpo` picks the export the
version's method names for that format (sample_verify: sft -> sft_attempts, dpo -> dpo_attempts); any registered
export can be named directly. Exporting a version that lacks a table the export reads is a clear error.

Every export row keeps lineage columns (ids back to the rows it came from, `source_version`) so SQL can join it
back to its problem and attempt; TRL ignores the extra columns.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.catalog import Catalog
from pipelines.files import Root
from schemas.errors import ConfigError, StorageError
from schemas.manifest import Manifest
from schemas.registry import ExportSpec, get_export, get_method, methods, registered_exports

MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


def known_formats() -> list[str]:
    """Every --format a version may be exported as: the methods' aliases and the registered exports."""
    return sorted({a for m in methods().values() for a in m.exports} | set(registered_exports()))


def export_for(m: Manifest, fmt: str) -> ExportSpec:
    """The export serving `fmt` for this version: the method's choice for an alias (sft, dpo), or a registered
    export by name."""
    try:
        aliases = get_method(m.method).exports
    except ConfigError:
        aliases = {}
    if fmt in aliases:
        return get_export(aliases[fmt])
    exports = registered_exports()
    if fmt in exports:
        return exports[fmt]
    known = sorted(set(aliases) | set(exports))
    raise ConfigError(f"unknown export format '{fmt}' for {m.ref} (method {m.method}; known: {', '.join(known)})")


# --- running an export ------------------------------------------------------------------------------------------
@dataclass
class ExportResult:
    format: str
    export: str
    source: str
    rows: int
    files: list[str]


def _nothing_message(spec: ExportSpec, m: Manifest, tables: dict[str, list[dict]]) -> str:
    sizes = ", ".join(f"{len(v)} {k}" for k, v in tables.items())
    return f"nothing to export: {m.ref} gives no {spec.name} rows ({sizes}; {spec.description})"


def copy_source_card(catalog: Catalog, m: Manifest, out_dir: str) -> str:
    """Copy the version's dataset card (README.md and plots/) into `<out_dir>/source_card/`; return the text to
    append to the export's own card (the source card's body, its plot links pointing into source_card/)."""
    from pipelines.card import CARD, PLOTS
    root = catalog.root
    vdir = catalog.version_dir(m.dataset, m.version)
    if not root.exists(f"{vdir}/{CARD}"):
        return f"\n## Source dataset card\n\n{m.ref} was published before dataset cards existed.\n"
    dest = os.path.join(out_dir, "source_card")
    os.makedirs(os.path.join(dest, PLOTS), exist_ok=True)
    with root.fs.open(f"{vdir}/{CARD}", "rb") as f:
        text = f.read().decode()
    with open(os.path.join(dest, CARD), "w") as f:
        f.write(text)
    for name in root.ls_names(f"{vdir}/{PLOTS}"):
        with root.fs.open(f"{vdir}/{PLOTS}/{name}", "rb") as src, open(os.path.join(dest, PLOTS, name), "wb") as f:
            f.write(src.read())
    if text.startswith("---\n") and "\n---\n" in text[4:]:
        text = text[text.index("\n---\n", 4) + 5:]
    body = text.replace(f"]({PLOTS}/", f"](source_card/{PLOTS}/")
    return (f"\n## Source dataset card ({m.ref})\n\nCopied from the version (also in `source_card/`); its "
            f"headings follow.\n\n{body}")


def export(root: Root | str, ref: str, fmt: str, out_dir: str, jsonl: bool = False,
           options: dict[str, Any] | None = None) -> ExportResult:
    catalog = Catalog(root if isinstance(root, Root) else Root(root))
    m = catalog.resolve(ref)
    spec = export_for(m, fmt)
    missing = [t for t in spec.reads if t not in m.tables]
    if missing:
        raise StorageError(f"export '{spec.name}' reads table '{missing[0]}', which {m.ref} does not have "
                           f"(tables: {', '.join(m.tables)})")
    tables = {t: catalog.read_table(m, t).to_pylist() for t in spec.reads}
    options = {"_models_dir": catalog.root.models_dir, **(options or {})}    # where 'embedded' lives
    meta = spec.metadata(options) if spec.metadata is not None else None
    rows = spec.convert(tables, m.ref, options)
    if not rows:
        raise StorageError(_nothing_message(spec, m, tables))
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, "train-00000-of-00001")
    if os.path.exists(base + ".parquet"):
        raise StorageError(f"{base}.parquet exists: export to an empty directory")
    table = pa.Table.from_pylist(rows, schema=spec.schema)
    pq.write_table(table, base + ".parquet")
    files = [base + ".parquet"]
    if jsonl:
        with open(base + ".jsonl", "w") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")
        files.append(base + ".jsonl")
    # the card's `configs` block lets `datasets.load_dataset(out_dir)` pick the Parquet files (not the JSONL)
    card = ("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: \"*.parquet\"\n---\n"
            f"# {m.dataset} {fmt} export ({spec.name})\n\nSource: `{m.ref}` (run {m.run_id}, recipe hash "
            f"{m.recipe_hash}, code {m.code_version}).\nRows: {len(rows)}: {spec.description}. Columns follow "
            f"TRL's {spec.trl_format} format.\n\n"
            f"Load: `datasets.load_dataset(\"parquet\", data_files=\"{out_dir}/*.parquet\")`\n")
    if meta is not None:
        card += f"\n## Export metadata\n\n```json\n{json.dumps(meta, indent=2, sort_keys=True)}\n```\n"
        with open(os.path.join(out_dir, "export_metadata.json"), "w") as f:
            json.dump({"export": spec.name, "format": fmt, "source": m.ref, **meta}, f, indent=2, sort_keys=True)
    card += copy_source_card(catalog, m, out_dir)
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write(card)
    return ExportResult(fmt, spec.name, m.ref, len(rows), files)

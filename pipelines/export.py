"""Exports in TRL's column conventions, registered by name with the tables they read.

An export is a pure per-row converter over a version's tables, written as Parquet (and JSONL on request) that
`datasets` and TRL load unchanged, plus a dataset card. `errata export REF --format sft|dpo` picks the export the
version's method names for that format (sample_verify: sft -> sft_attempts, dpo -> dpo_attempts); any registered
export can be named directly. Exporting a version that lacks a table the export reads is a clear error.

Every export row keeps lineage columns (ids back to the rows it came from, `source_version`) so SQL can join it
back to its problem and attempt; TRL ignores the extra columns.
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.catalog import Catalog
from pipelines.files import Root
from schemas.errors import ConfigError, StorageError
from schemas.manifest import Manifest

MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


@dataclass(frozen=True)
class ExportSpec:
    name: str
    reads: tuple[str, ...]
    description: str
    schema: pa.Schema
    convert: Callable[[dict[str, list[dict]], str, dict[str, Any]], list[dict]]   # tables, source ref, options
    trl_format: str = ""          # what the card says TRL sees
    options: dict[str, str] = field(default_factory=dict)   # option -> description
    # options -> facts recorded with the export (card and export_metadata.json), e.g. the tokenizer and its
    # chat template's hash of a pre-tokenized export; None: nothing beyond the card
    metadata: Callable[[dict[str, Any]], dict[str, Any]] | None = None


_EXPORTS: dict[str, ExportSpec] = {}


def register_export(spec: ExportSpec) -> ExportSpec:
    _EXPORTS[spec.name] = spec
    return spec


def get_export(name: str) -> ExportSpec:
    try:
        return _EXPORTS[name]
    except KeyError:
        raise ConfigError(f"unknown export '{name}' (registered: {', '.join(sorted(_EXPORTS))})") from None


def registered_exports() -> dict[str, ExportSpec]:
    return dict(_EXPORTS)


def known_formats() -> list[str]:
    """Every --format a version may be exported as: the methods' aliases and the registered exports."""
    from pipelines.methods import methods
    return sorted({a for m in methods().values() for a in m.exports} | set(_EXPORTS))


def export_for(m: Manifest, fmt: str) -> ExportSpec:
    """The export serving `fmt` for this version: the method's choice for an alias (sft, dpo), or a registered
    export by name."""
    from pipelines.methods import get_method
    try:
        aliases = get_method(m.method).exports
    except ConfigError:
        aliases = {}
    if fmt in aliases:
        return get_export(aliases[fmt])
    if fmt in _EXPORTS:
        return _EXPORTS[fmt]
    known = sorted(set(aliases) | set(_EXPORTS))
    raise ConfigError(f"unknown export format '{fmt}' for {m.ref} (method {m.method}; known: {', '.join(known)})")


# --- sample_verify: attempts ------------------------------------------------------------------------------------
def _kept(a: dict) -> bool:
    return a.get("drop_reason") is None and a.get("is_correct") is not None


def sft_row(attempt: dict, source_version: str) -> dict[str, Any]:
    """A verified-correct attempt as one conversational SFT example."""
    return {"messages": [{"role": "user", "content": attempt["prompt"]},
                         {"role": "assistant", "content": attempt["completion"]}],
            "problem_id": attempt["problem_id"], "attempt_id": attempt["attempt_id"],
            "source_version": source_version}


def dpo_row(chosen: dict, rejected: dict, source_version: str) -> dict[str, Any]:
    """A correct (chosen) and an incorrect (rejected) attempt of the same problem as one DPO pair."""
    if chosen["problem_id"] != rejected["problem_id"]:
        raise ValueError("a DPO pair must come from one problem")
    return {"prompt": [{"role": "user", "content": chosen["prompt"]}],
            "chosen": [{"role": "assistant", "content": chosen["completion"]}],
            "rejected": [{"role": "assistant", "content": rejected["completion"]}],
            "pair_source": "correct_vs_incorrect",
            "margin": float((chosen.get("reward") or 0.0) - (rejected.get("reward") or 0.0)),
            "problem_id": chosen["problem_id"], "chosen_id": chosen["attempt_id"],
            "rejected_id": rejected["attempt_id"], "source_version": source_version}


def sft_attempt_rows(tables: dict[str, list[dict]], source: str, options: dict[str, Any]) -> list[dict]:
    keep = [a for a in tables["attempts"] if _kept(a) and a["is_correct"]]
    keep.sort(key=lambda a: (a["problem_id"], a["sample_index"]))
    return [sft_row(a, source) for a in keep]


def dpo_attempt_rows(tables: dict[str, list[dict]], source: str, options: dict[str, Any]) -> list[dict]:
    max_pairs = int(options.get("max_pairs_per_problem", 1))
    by_problem: dict[str, dict[bool, list[dict]]] = defaultdict(lambda: {True: [], False: []})
    for a in tables["attempts"]:
        if _kept(a):
            by_problem[a["problem_id"]][bool(a["is_correct"])].append(a)
    out = []
    for pid in sorted(by_problem):
        good = sorted(by_problem[pid][True], key=lambda a: a["sample_index"])
        bad = sorted(by_problem[pid][False], key=lambda a: a["sample_index"])
        for c, r in list(zip(good, bad))[:max_pairs]:
            out.append(dpo_row(c, r, source))
    return out


SFT_SCHEMA = pa.schema([("messages", MESSAGES), ("problem_id", pa.string()), ("attempt_id", pa.string()),
                        ("source_version", pa.string())])
DPO_SCHEMA = pa.schema([("prompt", MESSAGES), ("chosen", MESSAGES), ("rejected", MESSAGES),
                        ("pair_source", pa.string()), ("margin", pa.float64()), ("problem_id", pa.string()),
                        ("chosen_id", pa.string()), ("rejected_id", pa.string()), ("source_version", pa.string())])

register_export(ExportSpec("sft_attempts", ("attempts",), "verified-correct attempts as user/assistant messages",
                           SFT_SCHEMA, sft_attempt_rows, "conversational language-modeling (`messages`)"))
register_export(ExportSpec("dpo_attempts", ("attempts",), "a correct and an incorrect attempt of one problem",
                           DPO_SCHEMA, dpo_attempt_rows, "preference (`prompt`, `chosen`, `rejected`)",
                           {"max_pairs_per_problem": "pairs per problem (default 1)"}))


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
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write(card)
    return ExportResult(fmt, spec.name, m.ref, len(rows), files)

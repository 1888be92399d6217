"""Exports in TRL's column conventions, written as Parquet (and JSONL on request) that `datasets` loads unchanged.

- sft: `messages` (conversational: user question, assistant verified-correct attempt)
- dpo: `prompt`, `chosen`, `rejected` (conversational), a correct and an incorrect attempt of one problem

The converters are pure per-row functions. Each export row keeps lineage columns (`problem_id`, attempt ids,
`source_version`) so SQL can join it back to its problem and attempt; TRL ignores the extra columns.
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.storage import Store
from schemas.errors import ConfigError, StorageError

FORMATS = ("sft", "dpo")
MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
SFT_SCHEMA = pa.schema([("messages", MESSAGES), ("problem_id", pa.string()), ("attempt_id", pa.string()),
                        ("source_version", pa.string())])
DPO_SCHEMA = pa.schema([("prompt", MESSAGES), ("chosen", MESSAGES), ("rejected", MESSAGES),
                        ("pair_source", pa.string()), ("margin", pa.float64()), ("problem_id", pa.string()),
                        ("chosen_attempt_id", pa.string()), ("rejected_attempt_id", pa.string()),
                        ("source_version", pa.string())])


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
            "problem_id": chosen["problem_id"], "chosen_attempt_id": chosen["attempt_id"],
            "rejected_attempt_id": rejected["attempt_id"], "source_version": source_version}


def sft_rows(attempts: list[dict], source_version: str) -> list[dict]:
    keep = [a for a in attempts if _kept(a) and a["is_correct"]]
    keep.sort(key=lambda a: (a["problem_id"], a["sample_index"]))
    return [sft_row(a, source_version) for a in keep]


def dpo_rows(attempts: list[dict], source_version: str, max_pairs_per_problem: int = 1) -> list[dict]:
    by_problem: dict[str, dict[bool, list[dict]]] = defaultdict(lambda: {True: [], False: []})
    for a in attempts:
        if _kept(a):
            by_problem[a["problem_id"]][bool(a["is_correct"])].append(a)
    out = []
    for pid in sorted(by_problem):
        good = sorted(by_problem[pid][True], key=lambda a: a["sample_index"])
        bad = sorted(by_problem[pid][False], key=lambda a: a["sample_index"])
        for c, r in list(zip(good, bad))[:max_pairs_per_problem]:
            out.append(dpo_row(c, r, source_version))
    return out


@dataclass
class ExportResult:
    format: str
    source: str
    rows: int
    files: list[str]


def export(store: Store, ref: str, fmt: str, out_dir: str, jsonl: bool = False,
           max_pairs_per_problem: int = 1) -> ExportResult:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format '{fmt}' (known: {', '.join(FORMATS)})")
    m = store.resolve(ref)
    attempts = store.read_table(m, "attempts").to_pylist()
    if fmt == "sft":
        rows, schema = sft_rows(attempts, m.ref), SFT_SCHEMA
    else:
        rows, schema = dpo_rows(attempts, m.ref, max_pairs_per_problem), DPO_SCHEMA
    if not rows:
        n_ok = sum(1 for a in attempts if _kept(a) and a["is_correct"])
        raise StorageError(f"nothing to export: {m.ref} has no {fmt.upper()} rows ({len(attempts)} attempts, "
                           f"{n_ok} kept and correct{'' if fmt == 'sft' else '; DPO needs a problem with both a correct and an incorrect kept attempt'})")
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, "train-00000-of-00001")
    if os.path.exists(base + ".parquet"):
        raise StorageError(f"{base}.parquet exists: export to an empty directory")
    table = pa.Table.from_pylist(rows, schema=schema)
    pq.write_table(table, base + ".parquet")
    files = [base + ".parquet"]
    if jsonl:
        with open(base + ".jsonl", "w") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        files.append(base + ".jsonl")
    # the card's `configs` block lets `datasets.load_dataset(out_dir)` pick the Parquet files (not the JSONL)
    card = ("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: \"*.parquet\"\n---\n"
            f"# {m.dataset} {fmt.upper()} export\n\nSource: `{m.ref}` (run {m.run_id}, recipe hash "
            f"{m.recipe_hash}, code {m.code_version}).\nRows: {len(rows)}. Columns follow TRL's "
            f"{'conversational language-modeling (`messages`)' if fmt == 'sft' else 'preference (`prompt`, `chosen`, `rejected`)'}"
            f" format.\n\nLoad: `datasets.load_dataset(\"parquet\", data_files=\"{out_dir}/*.parquet\")`\n")
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write(card)
    return ExportResult(fmt, m.ref, len(rows), files)

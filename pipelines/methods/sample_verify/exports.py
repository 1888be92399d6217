"""Exports of sample_verify (and self_correct) versions: their verified attempts.

- `sft_attempts` (`--format sft`): `messages` (user question, assistant verified-correct attempt).
- `dpo_attempts` (`--format dpo`): `prompt`, `chosen`, `rejected` (a correct and an incorrect attempt of one
  problem), plus `pair_source`, `margin`.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any

import pyarrow as pa

from pipelines.export import MESSAGES
from schemas.registry import ExportSpec, register_export


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

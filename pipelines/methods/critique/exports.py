"""Exports of a critique version, registered on import (TRL's column names; pure per-row converters).

- `critic_sft` (`--format critic-sft`): one row per kept critique: `prompt` [user: the critic instruction +
  question + numbered solution, without the reference answer], `completion` [assistant: the critique as written].
- `critic_sft_tokenized` (`--format sft-tokenized --tokenizer MODEL`): the same rows pre-tokenized with the chat
  template: `input_ids`, `labels` (-100 on the prompt), `completion_mask`.
- `critic_dpo` (`--format critic-dpo`): for one wrong path, chosen = a critique whose refinement was kept, rejected
  = a critique of the same path whose refinements all failed (refinement_wrong or shortcut); `pair_source`
  critique_effective_vs_not.
- `actor_sft` (`--format actor-sft`): accepted refinements as `prompt` [user: the question] / `completion`
  [assistant: the refinement]; `--option with_critique=true` puts the critique-conditioned refine prompt in the
  prompt instead; `--option include_correct=true` adds the actor's verified-correct original paths.
- `stepwise_critiques` (`--format stepwise`): TRL's stepwise supervision: `prompt` (the question), `completions`
  (the path's steps), `labels` (true before the kept critique's first Wrong step, false from it to the end).

Every row keeps ids back to its critique, path and problem, and `source_version`.
"""
from __future__ import annotations

from typing import Any

import pyarrow as pa

import pipelines.methods.critique.rows  # noqa: F401  (the tables these exports read)
from pipelines.chat_tokens import sft_tokenized_export, tokenize_conversation, tokenizer_of
from pipelines.export import MESSAGES
from schemas.errors import ConfigError
from schemas.registry import ExportSpec, register_export

_IDS = [("critique_id", pa.string()), ("path_id", pa.string()), ("path_source", pa.string()),
        ("problem_id", pa.string()), ("source_version", pa.string())]
CRITIC_SFT_SCHEMA = pa.schema([("prompt", MESSAGES), ("completion", MESSAGES), *_IDS])
CRITIC_TOKENIZED_SCHEMA = pa.schema([("input_ids", pa.list_(pa.int64())), ("labels", pa.list_(pa.int64())),
                                     ("completion_mask", pa.list_(pa.int64())), *_IDS])
CRITIC_DPO_SCHEMA = pa.schema([("prompt", MESSAGES), ("chosen", MESSAGES), ("rejected", MESSAGES),
                               ("pair_source", pa.string()), ("path_id", pa.string()), ("problem_id", pa.string()),
                               ("chosen_id", pa.string()), ("rejected_id", pa.string()),
                               ("rejected_reason", pa.string()), ("source_version", pa.string())])
ACTOR_SFT_SCHEMA = pa.schema([("prompt", MESSAGES), ("completion", MESSAGES), ("kind", pa.string()),
                              ("refinement_id", pa.string()), ("critique_id", pa.string()), ("path_id", pa.string()),
                              ("problem_id", pa.string()), ("source_version", pa.string())])
STEPWISE_SCHEMA = pa.schema([("prompt", pa.string()), ("completions", pa.list_(pa.string())),
                             ("labels", pa.list_(pa.bool_())), ("first_wrong_step", pa.int64()), *_IDS])


def _flag(options: dict[str, Any], key: str) -> bool:
    v = str(options.get(key, "false")).strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"--option {key}: expected true or false, got {v!r}")


def kept_critiques(critiques: list[dict]) -> list[dict]:
    """Critiques the closed loop kept (parsed, agreeing, refined where the path is wrong), in a stable order."""
    return sorted((c for c in critiques if c.get("drop_reason") is None and c.get("parse_ok")),
                  key=lambda c: (c["problem_id"], c["path_id"], c["critique_id"]))


def _ids(c: dict, source: str) -> dict[str, Any]:
    return {"critique_id": c["critique_id"], "path_id": c["path_id"], "path_source": c.get("path_source"),
            "problem_id": c["problem_id"], "source_version": source}


def critic_sft_row(c: dict, source: str) -> dict[str, Any]:
    return {"prompt": [{"role": "user", "content": c["train_prompt"]}],
            "completion": [{"role": "assistant", "content": c["raw_text"]}], **_ids(c, source)}


def critic_sft_rows(tables: dict[str, list[dict]], source: str, options: dict[str, Any]) -> list[dict]:
    return [critic_sft_row(c, source) for c in kept_critiques(tables["critiques"])]


def critic_tokenized_rows(tables: dict[str, list[dict]], source: str, options: dict[str, Any]) -> list[dict]:
    _, tok = tokenizer_of(options)
    out = []
    for r in critic_sft_rows(tables, source, options):
        conv = [{**r["prompt"][0], "loss": False}, {**r["completion"][0], "loss": True}]
        out.append({**tokenize_conversation(conv, tok), **{k: r[k] for k, _ in _IDS}})
    return out


def critic_dpo_rows(tables: dict[str, list[dict]], source: str, options: dict[str, Any]) -> list[dict]:
    max_pairs = int(options.get("max_pairs_per_problem", 1) or 1)
    by: dict[str, list[dict]] = {}
    for c in tables["critiques"]:
        if c.get("path_is_correct") is False and c.get("parse_ok"):
            by.setdefault(c["path_id"], []).append(c)
    out = []
    for pid in sorted(by):
        cs = sorted(by[pid], key=lambda c: c["critique_id"])
        good = [c for c in cs if c.get("drop_reason") is None and c.get("refinements_kept", 0) > 0]
        bad = [c for c in cs if c.get("drop_reason") in ("refinement_wrong", "shortcut")]
        for g, b in list(zip(good, bad))[:max_pairs]:
            out.append({"prompt": [{"role": "user", "content": g["train_prompt"]}],
                        "chosen": [{"role": "assistant", "content": g["raw_text"]}],
                        "rejected": [{"role": "assistant", "content": b["raw_text"]}],
                        "pair_source": "critique_effective_vs_not", "path_id": pid, "problem_id": g["problem_id"],
                        "chosen_id": g["critique_id"], "rejected_id": b["critique_id"],
                        "rejected_reason": b["drop_reason"], "source_version": source})
    return out


def actor_sft_rows(tables: dict[str, list[dict]], source: str, options: dict[str, Any]) -> list[dict]:
    with_critique, include_correct = _flag(options, "with_critique"), _flag(options, "include_correct")
    q = {p["problem_id"]: p["question"] for p in tables["problems"]}
    kept = sorted((r for r in tables["refinements"] if r.get("drop_reason") is None and r.get("is_correct") is True),
                  key=lambda r: (r["problem_id"], r["refinement_id"]))
    live = {c["critique_id"] for c in tables["critiques"] if c.get("drop_reason") is None}
    out = []
    for r in kept:
        if r["critique_id"] not in live:
            continue
        user = r["prompt"] if with_critique else q[r["problem_id"]]
        out.append({"prompt": [{"role": "user", "content": user}],
                    "completion": [{"role": "assistant", "content": r["text"]}], "kind": "refinement",
                    "refinement_id": r["refinement_id"], "critique_id": r["critique_id"], "path_id": r["path_id"],
                    "problem_id": r["problem_id"], "source_version": source})
    if include_correct:
        for p in sorted(tables["paths"], key=lambda p: p["path_id"]):
            if p.get("source") == "actor" and p.get("is_correct") is True and p.get("drop_reason") is None:
                out.append({"prompt": [{"role": "user", "content": q[p["problem_id"]]}],
                            "completion": [{"role": "assistant", "content": p["text"]}], "kind": "correct_original",
                            "refinement_id": None, "critique_id": None, "path_id": p["path_id"],
                            "problem_id": p["problem_id"], "source_version": source})
    return out


def stepwise_labels(n_steps: int, first_wrong_step: int | None) -> list[bool]:
    """True before the first Wrong step (1-based), false from it to the end; all true when there is none."""
    return [first_wrong_step is None or i < first_wrong_step for i in range(1, n_steps + 1)]


def stepwise_rows(tables: dict[str, list[dict]], source: str, options: dict[str, Any]) -> list[dict]:
    q = {p["problem_id"]: p["question"] for p in tables["problems"]}
    paths = {p["path_id"]: p for p in tables["paths"]}
    out = []
    for c in kept_critiques(tables["critiques"]):
        steps = [s["text"] for s in paths[c["path_id"]]["steps"]]
        out.append({"prompt": q[c["problem_id"]], "completions": steps,
                    "labels": stepwise_labels(len(steps), c.get("first_wrong_step")),
                    "first_wrong_step": c.get("first_wrong_step"), **_ids(c, source)})
    return out


register_export(ExportSpec(
    "critic_sft", ("critiques",), "kept critiques: critic instruction + question + solution -> critique",
    CRITIC_SFT_SCHEMA, critic_sft_rows, "prompt-completion (`prompt`, `completion` as messages)"))
register_export(sft_tokenized_export(
    "critic_sft_tokenized", ("critiques",), "kept critiques pre-tokenized: labels only on the critique",
    CRITIC_TOKENIZED_SCHEMA, critic_tokenized_rows, {}))
register_export(ExportSpec(
    "critic_dpo", ("critiques",), "a critique whose refinement was kept (chosen) vs one of the same wrong "
                                  "solution whose refinements failed (rejected)",
    CRITIC_DPO_SCHEMA, critic_dpo_rows, "preference (`prompt`, `chosen`, `rejected`)",
    {"max_pairs_per_problem": "pairs per path (default 1)"}))
register_export(ExportSpec(
    "actor_sft", ("refinements", "critiques", "paths", "problems"),
    "accepted refinements (question -> solution), and the actor's correct originals on request",
    ACTOR_SFT_SCHEMA, actor_sft_rows, "prompt-completion (`prompt`, `completion` as messages)",
    {"with_critique": "true: the prompt is the refine prompt (question, first solution, critique)",
     "include_correct": "true: add the actor's verified-correct original paths"}))
register_export(ExportSpec(
    "stepwise_critiques", ("critiques", "paths", "problems"),
    "kept critiques as stepwise supervision: each step labelled true before the first Wrong step, false from it",
    STEPWISE_SCHEMA, stepwise_rows, "stepwise supervision (`prompt`, `completions`, `labels`)"))

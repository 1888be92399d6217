"""Exports of revision trajectories (LEMMA and later revision methods), registered on import.

- `sft_revisions` (`--format sft`): one row per kept revision (verified correct, no drop_reason): `messages`
  [user: the question, assistant: the revision text] with a per-message `loss` flag, and `segments`
  [{text, author, loss}] as stored. LEMMA trains on the whole revision, erroneous prefix included (loss true on
  every segment). `--option mask_errors=true` sets loss false on the erroneous prefix (author ``model``) in
  `segments` (the assistant message keeps loss true: it is one message; train on `segments`, or use
  `sft-tokenized`, to mask).
- `sft_tokenized_revisions` (`--format sft-tokenized --tokenizer MODEL`): the same rows pre-tokenized with the
  chat template (pipelines/chat_tokens.py): `input_ids`, `labels`, `completion_mask`; each token of the assistant
  turn takes the loss of its segment, so with `mask_errors` the erroneous prefix has label -100 and the
  transition, fix and continuation keep theirs; the question has none.
- `dpo_revisions` (`--format dpo`): chosen = a kept revision, rejected = the wrong text it revises (the student's
  wrong attempt, or the injected solution), `pair_source` revision_vs_self_error / revision_vs_injected_error.
  `--option clean_pairs=true` adds correct_attempt_vs_wrong_attempt pairs (a clean correct attempt vs a wrong one
  of the same problem), at most `max_pairs_per_problem` of them.

Every row keeps ids back to its revision, judgement, attempt / injection and problem, and `source_version`.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any

import pyarrow as pa

import pipelines.methods.lemma.rows  # noqa: F401  (the tables these exports read)
from pipelines.chat_tokens import sft_tokenized_export, tokenize_conversation, tokenizer_of
from pipelines.export import MESSAGES
from schemas.registry import ExportSpec, register_export
from schemas.errors import ConfigError

MESSAGES_LOSS = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string()), ("loss", pa.bool_())]))
SEGMENTS = pa.list_(pa.struct([("text", pa.string()), ("author", pa.string()), ("loss", pa.bool_())]))
_IDS = [("revision_id", pa.string()), ("strategy", pa.string()), ("error_source", pa.string()),
        ("error_type", pa.string()), ("first_error_step", pa.int64()), ("problem_id", pa.string()),
        ("judgement_id", pa.string()), ("attempt_id", pa.string()), ("injection_id", pa.string()),
        ("source_version", pa.string())]
SFT_REV_SCHEMA = pa.schema([("messages", MESSAGES_LOSS), ("segments", SEGMENTS), *_IDS])
SFT_TOKENIZED_REV_SCHEMA = pa.schema([("input_ids", pa.list_(pa.int64())), ("labels", pa.list_(pa.int64())),
                                      ("completion_mask", pa.list_(pa.int64())), *_IDS])
DPO_REV_SCHEMA = pa.schema([("prompt", MESSAGES), ("chosen", MESSAGES), ("rejected", MESSAGES),
                            ("pair_source", pa.string()), ("problem_id", pa.string()), ("chosen_id", pa.string()),
                            ("rejected_id", pa.string()), ("revision_id", pa.string()),
                            ("judgement_id", pa.string()), ("source_version", pa.string())])


def _flag(options: dict[str, Any], key: str, default: bool = False) -> bool:
    v = str(options.get(key, default)).strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"--option {key}: expected true or false, got {v!r}")


def kept_revisions(revisions: list[dict]) -> list[dict]:
    """Exportable revisions: verified correct and not dropped, in a stable order."""
    keep = [r for r in revisions if r.get("drop_reason") is None and r.get("is_correct") is True and r.get("text")]
    return sorted(keep, key=lambda r: (r["problem_id"], r["strategy"], r["revision_id"]))


def _ids(r: dict, source: str) -> dict[str, Any]:
    return {"revision_id": r["revision_id"], "strategy": r["strategy"], "error_source": r.get("error_source"),
            "error_type": r.get("error_type"), "first_error_step": r.get("first_error_step"),
            "problem_id": r["problem_id"], "judgement_id": r.get("judgement_id"), "attempt_id": r.get("attempt_id"),
            "injection_id": r.get("injection_id"), "source_version": source}


def sft_revision_row(r: dict, question: str, source: str, mask_errors: bool = False) -> dict[str, Any]:
    segs = [{"text": s["text"], "author": s["author"],
             "loss": False if (mask_errors and s["author"] == "model") else bool(s["loss"])}
            for s in r.get("segments") or []]
    return {"messages": [{"role": "user", "content": question, "loss": False},
                         {"role": "assistant", "content": r["text"], "loss": True}],
            "segments": segs, **_ids(r, source)}


def sft_revision_rows(tables: dict[str, list[dict]], source: str, options: dict[str, Any]) -> list[dict]:
    mask = _flag(options, "mask_errors")
    q = {p["problem_id"]: p["question"] for p in tables["problems"]}
    return [sft_revision_row(r, q[r["problem_id"]], source, mask) for r in kept_revisions(tables["revisions"])]


def sft_tokenized_revision_rows(tables: dict[str, list[dict]], source: str, options: dict[str, Any]) -> list[dict]:
    _, tok = tokenizer_of(options)
    out = []
    for r in sft_revision_rows(tables, source, options):
        user, assistant = r["messages"]
        conv = [user, {**assistant, "segments": r["segments"]}]
        out.append({**tokenize_conversation(conv, tok), **{k: r[k] for k, _ in _IDS}})
    return out


def _pair(question: str, chosen: str, rejected: str, pair_source: str, pid: str, cid: str, rid: str,
          revision_id: Any, judgement_id: Any, source: str) -> dict[str, Any]:
    return {"prompt": [{"role": "user", "content": question}], "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}], "pair_source": pair_source,
            "problem_id": pid, "chosen_id": cid, "rejected_id": rid, "revision_id": revision_id,
            "judgement_id": judgement_id, "source_version": source}


def dpo_revision_rows(tables: dict[str, list[dict]], source: str, options: dict[str, Any]) -> list[dict]:
    q = {p["problem_id"]: p["question"] for p in tables["problems"]}
    attempts = {a["attempt_id"]: a for a in tables["attempts"]}
    injections = {i["injection_id"]: i for i in tables["injections"]}
    out = []
    for r in kept_revisions(tables["revisions"]):
        if r.get("attempt_id"):
            bad, kind, bad_id = attempts.get(r["attempt_id"]), "revision_vs_self_error", r["attempt_id"]
            text = bad.get("completion") if bad else None
        else:
            bad, kind, bad_id = injections.get(r.get("injection_id")), "revision_vs_injected_error", r.get(
                "injection_id")
            text = bad.get("solution") if bad else None
        if not text or (bad.get("is_correct") is not False):
            continue        # the rejected side must be verified wrong
        out.append(_pair(q[r["problem_id"]], r["text"], text, kind, r["problem_id"], r["revision_id"], bad_id,
                         r["revision_id"], r.get("judgement_id"), source))
    if _flag(options, "clean_pairs"):
        max_pairs = int(options.get("max_pairs_per_problem", 1))
        by: dict[str, dict[bool, list[dict]]] = defaultdict(lambda: {True: [], False: []})
        for a in tables["attempts"]:
            if a.get("drop_reason") is None and a.get("is_correct") is not None:
                by[a["problem_id"]][bool(a["is_correct"])].append(a)
        for pid in sorted(by):
            good = sorted(by[pid][True], key=lambda a: a["sample_index"])
            bad = sorted(by[pid][False], key=lambda a: a["sample_index"])
            for c, w in list(zip(good, bad))[:max_pairs]:
                out.append(_pair(q[pid], c["completion"], w["completion"], "correct_attempt_vs_wrong_attempt", pid,
                                 c["attempt_id"], w["attempt_id"], None, None, source))
    return out


register_export(ExportSpec(
    "sft_revisions", ("revisions", "problems"), "verified-correct revision trajectories as user/assistant "
                                                "messages, with their segments (author, loss)",
    SFT_REV_SCHEMA, sft_revision_rows, "conversational language-modeling (`messages`; `segments` with loss)",
    {"mask_errors": "true: loss false on the erroneous prefix segment (default false: LEMMA trains on it)"}))
register_export(sft_tokenized_export(
    "sft_tokenized_revisions", ("revisions", "problems"), "verified-correct revision trajectories pre-tokenized: "
                                                          "labels per segment (-100 on masked segments)",
    SFT_TOKENIZED_REV_SCHEMA, sft_tokenized_revision_rows,
    {"mask_errors": "true: labels -100 on the erroneous prefix (default false: LEMMA trains on it)"}))
register_export(ExportSpec(
    "dpo_revisions", ("revisions", "problems", "attempts", "injections"),
    "a verified revision (chosen) and the wrong attempt or injected solution it revises (rejected)",
    DPO_REV_SCHEMA, dpo_revision_rows, "preference (`prompt`, `chosen`, `rejected`)",
    {"clean_pairs": "true: add correct-vs-wrong attempt pairs (default false)",
     "max_pairs_per_problem": "clean pairs per problem (default 1)"}))

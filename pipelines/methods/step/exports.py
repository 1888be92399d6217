"""Exports of STeP versions (registered on import, by the method package).

- `sft_step` (`--format sft`): one row per kept `step_trajectories` row: `messages` [{role, content, loss}] (loss
  false on the opening, observations and erroneous agent turns; true on correct turns, reflections + corrected
  steps and golden turns), `trajectory_kind` (self_reflected | golden), `golden_source`, the masked fraction and
  ids. A per-message flag cannot keep an erroneous turn's thought while masking its action: with
  `mask_error_thought: false` that turn is loss false here; use `sft-tokenized`, which honours the segments.
- `sft_tokenized_step` (`--format sft-tokenized --tokenizer MODEL`): the same rows pre-tokenized with the chat
  template (pipelines/chat_tokens.py): labels -100 on every token without loss, per segment where a turn's
  segments differ.
- `dpo_step` (`--format dpo`): one row per intervention of a kept row: `prompt` = the conversation before the
  agent's erroneous turn, `chosen` = the teacher's corrected step (Thought + Action, without the reflection, which
  speaks of the error), `rejected` = the agent's erroneous turn as written. Same context for both.

Options (`--option KEY=VALUE`): `kind` all (default), self_reflected or golden (sft formats); `vs_agent` (dpo) any
(default), better or not_worse: only interventions whose corrected step the env showed to be better (or no worse)
than the agent's step, so a teacher false positive can be left out.
"""
from __future__ import annotations

from typing import Any

import pyarrow as pa

from pipelines.chat_tokens import sft_tokenized_export, tokenize_conversation, tokenizer_of
from pipelines.export import MESSAGES
from pipelines.methods.agent_rollout.exports import MESSAGES_LOSS
from schemas.errors import ConfigError
from schemas.registry import ExportSpec, register_export
from stages.agents.react import format_turn

KINDS = ("all", "self_reflected", "golden")
VS = ("any", "better", "not_worse")
_IDS = [("trajectory_kind", pa.string()), ("golden_source", pa.string()), ("revision_id", pa.string()),
        ("problem_id", pa.string()), ("task_id", pa.string()), ("env", pa.string()), ("interventions", pa.int64()),
        ("masked_fraction", pa.float64()), ("success", pa.bool_()), ("final_reward", pa.float64()),
        ("source_version", pa.string())]
SFT_SCHEMA = pa.schema([("messages", MESSAGES_LOSS), *_IDS])
SFT_TOKENIZED_SCHEMA = pa.schema([("input_ids", pa.list_(pa.int64())), ("labels", pa.list_(pa.int64())),
                                  ("completion_mask", pa.list_(pa.int64())), *_IDS])
DPO_SCHEMA = pa.schema([("prompt", MESSAGES), ("chosen", MESSAGES), ("rejected", MESSAGES),
                        ("pair_source", pa.string()), ("vs_agent", pa.string()), ("compare", pa.string()),
                        ("intervention", pa.int64()), ("verdict_reason", pa.string()), ("revision_id", pa.string()),
                        ("problem_id", pa.string()), ("task_id", pa.string()), ("source_version", pa.string())])


def _choice(options: dict[str, Any], key: str, allowed: tuple[str, ...], default: str) -> str:
    v = str(options.get(key, default)).strip().lower()
    if v not in allowed:
        raise ConfigError(f"--option {key}: expected one of {', '.join(allowed)}, got {v!r}")
    return v


def selected(rows: list[dict], options: dict[str, Any]) -> list[dict]:
    kind = _choice(options, "kind", KINDS, "all")
    keep = [r for r in rows if r.get("drop_reason") is None and (kind == "all" or r.get("trajectory_kind") == kind)]
    return sorted(keep, key=lambda r: (r["problem_id"], bool(r.get("is_golden")), r["revision_id"]))


def _ids(r: dict, source: str) -> dict[str, Any]:
    return {**{k: r.get(k) for k, _ in _IDS[:-1]}, "source_version": source}


def sft_row(r: dict, source: str) -> dict[str, Any]:
    """One trajectory as a conversational SFT example; every message keeps its loss flag."""
    return {"messages": [{"role": m["role"], "content": m["content"], "loss": bool(m["loss"])}
                         for m in r["messages"]], **_ids(r, source)}


def segmented_messages(r: dict) -> list[dict]:
    """The row's messages, each with its `segments` where they differ in loss (tokenize_conversation reads them)."""
    by_msg: dict[int, list[dict]] = {}
    for sg in r.get("segments") or []:
        by_msg.setdefault(int(sg["message"]), []).append({"text": sg["text"], "loss": bool(sg["loss"])})
    out = []
    for k, m in enumerate(r["messages"]):
        msg = {"role": m["role"], "content": m["content"], "loss": bool(m["loss"])}
        segs = by_msg.get(k)
        if segs and len({s["loss"] for s in segs}) > 1:
            msg["segments"] = segs
        out.append(msg)
    return out


def sft_rows(tables: dict[str, list[dict]], source: str, options: dict[str, Any]) -> list[dict]:
    return [sft_row(r, source) for r in selected(tables["step_trajectories"], options)]


def sft_tokenized_rows(tables: dict[str, list[dict]], source: str, options: dict[str, Any]) -> list[dict]:
    _, tok = tokenizer_of(options)
    return [{**tokenize_conversation(segmented_messages(r), tok), **_ids(r, source)}
            for r in selected(tables["step_trajectories"], options)]


def dpo_pairs(r: dict, source: str, vs: str = "any") -> list[dict]:
    """The preference rows of one trajectory: each intervention's erroneous step (rejected) and corrected step
    (chosen), after the same conversation. Step j of `steps` is messages 3 + 2j (its turn) and 4 + 2j."""
    steps, msgs, out = r["steps"], r["messages"], []
    for j, s in enumerate(steps):
        if s["author"] != "teacher" or j == 0 or steps[j - 1]["author"] != "agent":
            continue
        bad = steps[j - 1]
        if vs == "better" and s["vs_agent"] != "better" or vs == "not_worse" and s["vs_agent"] == "worse":
            continue
        at = 3 + 2 * (j - 1)
        if msgs[at]["content"] != bad["raw_text"]:
            raise ConfigError(f"step_trajectories row {r['revision_id']}: messages and steps disagree at step "
                              f"{bad['idx']}")
        out.append({"prompt": [{"role": m["role"], "content": m["content"]} for m in msgs[:at]],
                    "chosen": [{"role": "assistant", "content": format_turn(s["thought"], s["action"])}],
                    "rejected": [{"role": "assistant", "content": bad["raw_text"]}],
                    "pair_source": "teacher_correction", "vs_agent": s["vs_agent"], "compare": s["compare"],
                    "intervention": s["intervention"], "verdict_reason": bad.get("verdict_reason"),
                    "revision_id": r["revision_id"], "problem_id": r["problem_id"], "task_id": r.get("task_id"),
                    "source_version": source})
    return out


def dpo_rows(tables: dict[str, list[dict]], source: str, options: dict[str, Any]) -> list[dict]:
    vs = _choice(options, "vs_agent", VS, "any")
    return [p for r in selected(tables["step_trajectories"], {"kind": "self_reflected"}) for p in dpo_pairs(r, source, vs)]


_OPTIONS = {"kind": "all (default), self_reflected or golden"}

register_export(ExportSpec(
    "sft_step", ("step_trajectories",), "STeP trajectories as messages with per-message loss (erroneous turns "
                                        "masked)", SFT_SCHEMA, sft_rows,
    "conversational language-modeling (`messages`; `loss` per message)", dict(_OPTIONS)))
register_export(sft_tokenized_export(
    "sft_tokenized_step", ("step_trajectories",), "STeP trajectories pre-tokenized: labels -100 on every token "
                                                  "without loss (per segment)", SFT_TOKENIZED_SCHEMA,
    sft_tokenized_rows, dict(_OPTIONS)))
register_export(ExportSpec(
    "dpo_step", ("step_trajectories",), "STeP interventions: the teacher's corrected step over the agent's "
                                        "erroneous step, same context", DPO_SCHEMA, dpo_rows,
    "preference (`prompt`, `chosen`, `rejected`)",
    {"vs_agent": "any (default), better or not_worse: interventions the env showed better (or no worse)"}))

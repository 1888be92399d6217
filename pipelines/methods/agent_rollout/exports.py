"""Exports of agent trajectories (registered on import, by the method package).

- `sft_trajectories` (`--format sft`): `messages` [{role, content, loss}] as recorded: the policy's turns have
  loss true; the instruction, "OK" and every observation have loss false. Plus ids back to the trajectory and its
  problem, env, gold, success and `source_version`. TRL's SFTTrainer reads `messages` (it ignores `loss`; use the
  pre-tokenized export to train on exactly the loss-true turns).
- `sft_tokenized_trajectories` (`--format sft-tokenized --tokenizer MODEL`): `input_ids`, `labels` (-100 where no
  loss) and `completion_mask`, built with MODEL's tokenizer and chat template (pipelines/chat_tokens.py); the
  tokenizer and the template's sha256 are recorded in the card and export_metadata.json. SFTTrainer uses
  `labels` as given.

Options (`errata export --option KEY=VALUE`): `include` success (default: successful trajectories) or all;
`gold` true (default: gold paths too), false, or only; `tokenizer` (sft-tokenized; `--tokenizer` sets it).
Both converters are pure per row: the loss flags of the trajectory pass through unchanged.
"""
from __future__ import annotations

from typing import Any

import pyarrow as pa

from pipelines.chat_tokens import sft_tokenized_export, tokenize_conversation, tokenizer_of
from schemas.registry import ExportSpec, register_export
from schemas.errors import ConfigError

MESSAGES_LOSS = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string()), ("loss", pa.bool_())]))
_IDS = [("trajectory_id", pa.string()), ("problem_id", pa.string()), ("task_id", pa.string()), ("env", pa.string()),
        ("gold", pa.bool_()), ("success", pa.bool_()), ("final_reward", pa.float64()), ("source_version", pa.string())]
SFT_TRAJ_SCHEMA = pa.schema([("messages", MESSAGES_LOSS), *_IDS])
SFT_TOKENIZED_SCHEMA = pa.schema([("input_ids", pa.list_(pa.int64())), ("labels", pa.list_(pa.int64())),
                                  ("completion_mask", pa.list_(pa.int64())), *_IDS])

INCLUDE = ("success", "all")
GOLD = ("true", "false", "only")


def _choice(options: dict[str, Any], key: str, allowed: tuple[str, ...], default: str) -> str:
    v = str(options.get(key, default)).strip().lower()
    if v not in allowed:
        raise ConfigError(f"--option {key}: expected one of {', '.join(allowed)}, got {v!r}")
    return v


def selected(trajectories: list[dict], options: dict[str, Any]) -> list[dict]:
    """Kept trajectories (no drop_reason) that the options ask for, in a stable order."""
    include = _choice(options, "include", INCLUDE, "success")
    gold = _choice(options, "gold", GOLD, "true")
    keep = [t for t in trajectories if t.get("drop_reason") is None
            and (include == "all" or t.get("success"))
            and (gold != "false" or not t.get("gold")) and (gold != "only" or t.get("gold"))]
    return sorted(keep, key=lambda t: (t["problem_id"], bool(t.get("gold")), t.get("sample_index", 0),
                                       t["trajectory_id"]))


def _ids(t: dict, source_version: str) -> dict[str, Any]:
    return {"trajectory_id": t["trajectory_id"], "problem_id": t["problem_id"], "task_id": t.get("task_id"),
            "env": t.get("env"), "gold": bool(t.get("gold")), "success": bool(t.get("success")),
            "final_reward": float(t.get("final_reward") or 0.0), "source_version": source_version}


def sft_trajectory_row(t: dict, source_version: str) -> dict[str, Any]:
    """One trajectory as a conversational SFT example, loss flags as recorded."""
    return {"messages": [{"role": m["role"], "content": m["content"], "loss": bool(m["loss"])}
                         for m in t["messages"]], **_ids(t, source_version)}


def sft_tokenized_row(t: dict, source_version: str, tokenizer: Any) -> dict[str, Any]:
    """One trajectory pre-tokenized: labels -100 on every token of a loss-false message."""
    return {**tokenize_conversation(sft_trajectory_row(t, source_version)["messages"], tokenizer),
            **_ids(t, source_version)}


def sft_trajectory_rows(tables: dict[str, list[dict]], source: str, options: dict[str, Any]) -> list[dict]:
    return [sft_trajectory_row(t, source) for t in selected(tables["trajectories"], options)]


def sft_tokenized_rows(tables: dict[str, list[dict]], source: str, options: dict[str, Any]) -> list[dict]:
    _, tok = tokenizer_of(options)
    return [sft_tokenized_row(t, source, tok) for t in selected(tables["trajectories"], options)]


_OPTIONS = {"include": "success (default) or all trajectories",
            "gold": "true (default: gold paths too), false, or only"}

register_export(ExportSpec(
    "sft_trajectories", ("trajectories",), "agent trajectories as messages with a per-message loss flag",
    SFT_TRAJ_SCHEMA, sft_trajectory_rows, "conversational language-modeling (`messages`; `loss` per message)",
    dict(_OPTIONS)))
register_export(sft_tokenized_export(
    "sft_tokenized_trajectories", ("trajectories",), "agent trajectories pre-tokenized: labels -100 on loss-false "
                                                     "messages",
    SFT_TOKENIZED_SCHEMA, sft_tokenized_rows, _OPTIONS))

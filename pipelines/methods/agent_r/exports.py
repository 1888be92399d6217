"""Exports of Agent-R versions (registered on import, by the method package).

- `sft_agent_r` (`--format sft`): one row per kept `revision_trajectories` row: `messages` [{role, content, loss}] with the
  loss flags as spliced (revision: shared prefix and bad steps false, revision turn and good branch true; good:
  every policy turn true), `kind` (revision | good | general), ids back to the tree, pair and problem.
- `sft_tokenized_agent_r` (`--format sft-tokenized --tokenizer MODEL`): the same rows pre-tokenized with the
  chat template (pipelines/chat_tokens.py): labels -100 on every token of a loss-false message.
- `dpo_agent_r` (`--format dpo`): one row per (divergence parent, good child, bad child) of the pairs table:
  `prompt` = the conversation up to the divergence parent (ends with its observation), `chosen` = the good
  child's turn, `rejected` = the bad child's turn (TRL's conversational preference columns), from every pair
  whatever its judge walk gave (the preference needs only the leaf values). A child pair seen
  in both orientations (each child has a leaf better than one of the other's) is left out as contradictory.

Options (`--option KEY=VALUE`): `kind` all (default), revision or good (sft formats); `mix` FILE and `eta` (also
`--mix FILE --eta 0.2`): mix in a general chat dataset (JSONL or Parquet with a `messages` column of {role,
content}; assistant turns get loss true) so that general rows are a fraction eta of the output (Agent-R's
eta = 0.2), drawn without replacement by `mix_seed` (default 0); too few rows in FILE is an error.
"""
from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipelines.methods.agent_rollout.exports import MESSAGES_LOSS
from pipelines.chat_tokens import sft_tokenized_export, tokenize_conversation, tokenizer_of
from pipelines.export import MESSAGES
from schemas.registry import ExportSpec, register_export
from schemas.errors import ConfigError
from stages.agents.tokens import plain_messages

KINDS = ("all", "revision", "good")
_IDS = [("kind", pa.string()), ("revision_id", pa.string()), ("problem_id", pa.string()), ("tree_id", pa.string()),
        ("pair_id", pa.string()), ("task_id", pa.string()), ("env", pa.string()), ("iteration", pa.int64()),
        ("revision_signal", pa.string()), ("final_reward", pa.float64()), ("source_version", pa.string())]
SFT_SCHEMA = pa.schema([("messages", MESSAGES_LOSS), *_IDS])
SFT_TOKENIZED_SCHEMA = pa.schema([("input_ids", pa.list_(pa.int64())), ("labels", pa.list_(pa.int64())),
                                  ("completion_mask", pa.list_(pa.int64())), *_IDS])
DPO_SCHEMA = pa.schema([("prompt", MESSAGES), ("chosen", MESSAGES), ("rejected", MESSAGES),
                        ("pair_source", pa.string()), ("margin", pa.float64()), ("problem_id", pa.string()),
                        ("tree_id", pa.string()), ("divergence_node_id", pa.string()),
                        ("chosen_id", pa.string()), ("rejected_id", pa.string()), ("n_pairs", pa.int64()),
                        ("source_version", pa.string())])


def selected(revisions: list[dict], options: dict[str, Any]) -> list[dict]:
    kind = str(options.get("kind", "all")).strip().lower()
    if kind not in KINDS:
        raise ConfigError(f"--option kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    keep = [r for r in revisions if r.get("drop_reason") is None and (kind == "all" or r.get("kind") == kind)]
    return sorted(keep, key=lambda r: (r["problem_id"], r.get("kind") or "", r["revision_id"]))


def sft_row(r: dict, source_version: str) -> dict[str, Any]:
    """A revision_trajectories row as a conversational SFT example; every message keeps its loss flag."""
    return {"messages": [{"role": m["role"], "content": m["content"], "loss": bool(m["loss"])}
                         for m in r["messages"]],
            **{k: r.get(k) for k in ("kind", "revision_id", "problem_id", "tree_id", "pair_id", "task_id", "env",
                                     "iteration", "revision_signal", "final_reward")},
            "source_version": source_version}


# ---- mixing general data -----------------------------------------------------------------------------------------
def _read_mix(path: str) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--mix {path}: no such file")
    try:
        if p.suffix == ".parquet":
            import pyarrow.parquet as pq
            rows = pq.read_table(p, columns=["messages"]).to_pylist()
        else:
            rows = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    except Exception as e:
        raise ConfigError(f"--mix {path}: cannot read it ({type(e).__name__}: {str(e)[:200]})") from None
    out = []
    for i, r in enumerate(rows):
        msgs = r.get("messages") if isinstance(r, dict) else None
        if not isinstance(msgs, list) or not msgs or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in msgs):
            raise ConfigError(f"--mix {path}: row {i + 1} has no `messages` list of {{role, content}}")
        out.append({"messages": [{"role": m["role"], "content": m["content"],
                                  "loss": bool(m.get("loss", m["role"] == "assistant"))} for m in msgs]})
    return out


def general_needed(n_agent: int, eta: float) -> int:
    """General rows so that they are a fraction eta of agent + general rows."""
    return 0 if eta <= 0 else math.ceil(n_agent * eta / (1.0 - eta) - 1e-9)


def mix_rows(agent_rows: list[dict], options: dict[str, Any], source_version: str) -> list[dict]:
    path = options.get("mix")
    if not path:
        if options.get("eta") not in (None, ""):
            raise ConfigError("--eta needs --mix FILE (the general chat dataset to mix in)")
        return agent_rows
    try:
        eta = float(options.get("eta", 0.2))
    except (TypeError, ValueError):
        raise ConfigError(f"--eta: expected a number in [0, 1), got {options.get('eta')!r}") from None
    if not 0 <= eta < 1:
        raise ConfigError(f"--eta: expected a number in [0, 1), got {eta}")
    general = _read_mix(str(path))
    need = general_needed(len(agent_rows), eta)
    if need > len(general):
        raise ConfigError(f"--mix {path}: eta {eta} needs {need} general rows for {len(agent_rows)} Agent-R rows, "
                          f"the file has {len(general)} (lower --eta or give more rows)")
    rng = random.Random(f"{options.get('mix_seed', 0)}")
    picked = rng.sample(range(len(general)), need)
    blank = {k: None for k, _ in _IDS}
    extra = [dict(blank, messages=general[i]["messages"], kind="general", source_version=str(path))
             for i in picked]
    out = agent_rows + extra
    rng.shuffle(out)
    return out


# ---- converters --------------------------------------------------------------------------------------------------
def sft_rows(tables: dict[str, list[dict]], source: str, options: dict[str, Any]) -> list[dict]:
    return mix_rows([sft_row(r, source) for r in selected(tables["revision_trajectories"], options)], options, source)


def sft_tokenized_rows(tables: dict[str, list[dict]], source: str, options: dict[str, Any]) -> list[dict]:
    _, tok = tokenizer_of(options)
    rows = sft_rows(tables, source, options)
    return [{**tokenize_conversation(r["messages"], tok), **{k: r.get(k) for k, _ in _IDS}} for r in rows]


def dpo_rows(tables: dict[str, list[dict]], source: str, options: dict[str, Any]) -> list[dict]:
    """One preference row per (divergence parent, good child, bad child); see the module docstring."""
    nodes = {n["node_id"]: n for n in tables["nodes"]}
    groups: dict[tuple[str, frozenset], list[dict]] = defaultdict(list)
    for p in tables["pairs"]:
        if p.get("kind") == "pair" and p.get("good_child_id") and p.get("bad_child_id"):
            groups[(p["divergence_node_id"], frozenset((p["good_child_id"], p["bad_child_id"])))].append(p)
    out = []
    for (div_id, _), ps in sorted(groups.items(), key=lambda kv: (kv[0][0], sorted(kv[0][1]))):
        if len({p["good_child_id"] for p in ps}) > 1:
            continue                                      # contradictory orientations
        p0 = ps[0]
        prompt = _path_messages(nodes, div_id)
        chosen, rejected = nodes[p0["good_child_id"]], nodes[p0["bad_child_id"]]
        out.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": chosen["raw_text"]}],
                    "rejected": [{"role": "assistant", "content": rejected["raw_text"]}],
                    "pair_source": "sibling_branch", "margin": max(float(p["value_gap"]) for p in ps),
                    "problem_id": p0["problem_id"], "tree_id": p0["tree_id"], "divergence_node_id": div_id,
                    "chosen_id": chosen["node_id"], "rejected_id": rejected["node_id"], "n_pairs": len(ps),
                    "source_version": source})
    return out


def _path_messages(nodes: dict[str, dict], node_id: str) -> list[dict]:
    """The conversation up to a node, from node rows: the root's opening, then each step's turn and observation."""
    chain = []
    n = nodes[node_id]
    while n is not None:
        chain.append(n)
        n = nodes.get(n["parent_id"]) if n["parent_id"] else None
    chain.reverse()
    msgs = plain_messages(json.loads(chain[0]["opening_json"] or "[]"))
    for n in chain[1:]:
        msgs += [{"role": "assistant", "content": n["raw_text"]}, {"role": "user", "content": n["observation"]}]
    return msgs


_OPTIONS = {"kind": "all (default), revision or good",
            "mix": "a general chat dataset (JSONL/Parquet with `messages`) to mix in; also --mix FILE",
            "eta": "fraction of general rows in the output (default 0.2 with --mix); also --eta",
            "mix_seed": "seed of the general-row draw and the shuffle (default 0)"}

register_export(ExportSpec(
    "sft_agent_r", ("revision_trajectories",), "Agent-R revision and good trajectories as messages with per-message loss",
    SFT_SCHEMA, sft_rows, "conversational language-modeling (`messages`; `loss` per message)", dict(_OPTIONS)))
register_export(sft_tokenized_export(
    "sft_tokenized_agent_r", ("revision_trajectories",), "Agent-R trajectories pre-tokenized: labels -100 on loss-false "
                                             "messages",
    SFT_TOKENIZED_SCHEMA, sft_tokenized_rows, _OPTIONS))
register_export(ExportSpec(
    "dpo_agent_r", ("pairs", "nodes"), "Agent-R sibling branches at the divergence parent: the good child's "
                                       "turn over the bad child's",
    DPO_SCHEMA, dpo_rows, "preference (`prompt`, `chosen`, `rejected`)"))

"""Exports of trajectories: `sft` (messages with per-message loss flags, kept end to end) and `sft-tokenized`
(input_ids / labels / completion_mask with SmolLM2's own tokenizer and chat template, which has no
{% generation %} markers), on rows of a real build on the fake engine."""
from __future__ import annotations

import json
import random

import pyarrow.parquet as pq
import pytest

from flows.cli import main
from pipelines.methods.agent_rollout.exports import (SFT_TRAJ_SCHEMA, selected, sft_trajectory_row, sft_trajectory_rows,
                                     sft_tokenized_rows)
from pipelines.build import build
from pipelines.catalog import Catalog
from pipelines.chat_tokens import IGNORE, message_spans, tokenize_conversation
from pipelines.export import export
from schemas.registry import get_export
from schemas.errors import ConfigError
from stages.agents.tokens import load_tokenizer
from stages.engines.model_prep import embedded_model_dir
from tests.conftest import MODELS_DIR
from tests.unit.test_rollout import GEN, agent_recipe

needs_model = pytest.mark.skipif(not embedded_model_dir(MODELS_DIR).is_dir(),
                                 reason="the embedded model is not prepared (make model)")


@pytest.fixture
def version(data_root, monkeypatch):
    """A published agent_rollout version: craft episodes of the planner script (some garbage turns among them
    would be counted the same), gold paths included."""
    monkeypatch.setenv("ERRATA_MODELS", str(MODELS_DIR))
    cfg = agent_recipe(data_root, {"kind": "craft", "config": GEN}, tasks={"count": 3},
                       rollout={"n": 2, "gold": True, "max_steps": 3})
    m = build(cfg, progress=False).manifest
    return m, Catalog(str(data_root)).read_table(m, "trajectories").to_pylist()


@pytest.fixture(scope="module")
def smol():
    return load_tokenizer(str(embedded_model_dir(MODELS_DIR)))


def test_sft_export_keeps_every_loss_flag(version, tmp_path):
    m, traj = version
    r = export(str(tmp_path / "data"), m.ref, "sft", str(tmp_path / "sft"), jsonl=True, options={"include": "all"})
    assert r.export == "sft_trajectories" and r.rows == len(traj)
    table = pq.read_table(tmp_path / "sft" / "train-00000-of-00001.parquet")
    assert table.schema.field("messages").type == SFT_TRAJ_SCHEMA.field("messages").type      # loss is a column
    by_id = {t["trajectory_id"]: t for t in traj}
    for row in table.to_pylist():
        t = by_id[row["trajectory_id"]]
        assert row["messages"] == [{"role": x["role"], "content": x["content"], "loss": x["loss"]}
                                   for x in t["messages"]]
        assert [x["loss"] for x in row["messages"]] == [False, False, False] + [True, False] * t["n_steps"]
        assert row["source_version"] == m.ref and row["gold"] == t["gold"]
    lines = (tmp_path / "sft" / "train-00000-of-00001.jsonl").read_text().splitlines()
    assert all("loss" in msg for line in lines for msg in json.loads(line)["messages"])


def test_converters_are_pure_and_do_not_drop_loss_flags():
    """A regression guard: any converter that loses or rewrites `loss` fails here."""
    t = {"trajectory_id": "t-1", "problem_id": "p-1", "task_id": "x:0", "env": "craft", "gold": False,
         "success": True, "final_reward": 1.0, "drop_reason": None, "sample_index": 0,
         "messages": [{"role": "user", "content": "u", "loss": False}, {"role": "assistant", "content": "OK",
                                                                         "loss": False},
                      {"role": "user", "content": "obs", "loss": False},
                      {"role": "assistant", "content": "a1", "loss": True},
                      {"role": "user", "content": "o1", "loss": False},
                      {"role": "assistant", "content": "a2", "loss": False},   # e.g. a turn masked out later
                      {"role": "user", "content": "o2", "loss": True}]}        # flags pass through as recorded
    before = json.dumps(t, sort_keys=True)
    row = sft_trajectory_row(t, "x@1")
    assert [x["loss"] for x in row["messages"]] == [x["loss"] for x in t["messages"]]
    assert json.dumps(t, sort_keys=True) == before                          # input untouched
    assert get_export("sft_trajectories").schema.field("messages").type.value_type.get_field_index("loss") == 2


def test_selection_options():
    rows = [{"trajectory_id": f"t{i}", "problem_id": "p", "gold": g, "success": s, "drop_reason": d,
             "sample_index": i} for i, (g, s, d) in enumerate([(False, True, None), (False, False, None),
                                                               (True, True, None), (False, True, "dup")])]
    ids = lambda opts: [t["trajectory_id"] for t in selected(rows, opts)]     # noqa: E731
    assert ids({}) == ["t0", "t2"]
    assert ids({"include": "all"}) == ["t0", "t1", "t2"]
    assert ids({"gold": "false"}) == ["t0"] and ids({"gold": "only"}) == ["t2"]
    with pytest.raises(ConfigError, match="--option include"):
        selected(rows, {"include": "some"})


# --- pre-tokenized ---------------------------------------------------------------------------------------------
def _content_spans(full: str, messages: list[dict]) -> list[tuple[int, int]]:
    """Where each message's content sits in the rendered text (found by search, independently of the code)."""
    out, pos = [], 0
    for m in messages:
        i = full.index(m["content"], pos)
        out.append((i, i + len(m["content"])))
        pos = i + len(m["content"])
    return out


def check_labels(messages: list[dict], tok) -> dict:
    row = tokenize_conversation(messages, tok)
    full = tok.apply_chat_template([{"role": m["role"], "content": m["content"]} for m in messages],
                                   tokenize=False)
    enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
    assert row["input_ids"] == enc["input_ids"]                             # exactly the template's tokens
    ids, labels, offsets = row["input_ids"], row["labels"], enc["offset_mapping"]
    assert len(labels) == len(ids) == len(row["completion_mask"])
    assert row["completion_mask"] == [int(x != IGNORE) for x in labels]
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    for m, (a, b) in zip(messages, _content_spans(full, messages)):
        inside = [i for i, (s, e) in enumerate(offsets) if a <= s < b]
        assert inside or a == b
        if m["loss"]:
            assert all(labels[i] == ids[i] for i in inside), m              # every token of it is learned
            after = max(inside) + 1 if inside else next(i for i, (s, e) in enumerate(offsets) if s >= b)
            assert ids[after] == eot and labels[after] == eot              # and its end-of-turn token
        else:
            assert all(labels[i] == IGNORE for i in inside), m              # none of it is
    heads = [i for i, t in enumerate(ids) if t == tok.convert_tokens_to_ids("<|im_start|>")]
    assert all(labels[i] == IGNORE and labels[i + 1] == IGNORE for i in heads)   # role headers never
    return row


@needs_model
def test_tokenized_labels_on_real_rows(version, smol, tmp_path):
    m, traj = version
    for t in traj:
        row = check_labels(t["messages"], smol)
        learned = sum(x != IGNORE for x in row["labels"])
        assert learned > 0
    r = export(str(tmp_path / "data"), m.ref, "sft-tokenized", str(tmp_path / "tok"),
               options={"tokenizer": "embedded", "include": "all"})
    assert r.export == "sft_tokenized_trajectories" and r.rows == len(traj)
    rows = pq.read_table(tmp_path / "tok" / "train-00000-of-00001.parquet").to_pylist()
    by_id = {t["trajectory_id"]: t for t in traj}
    for row in rows:
        assert row["labels"] == tokenize_conversation(by_id[row["trajectory_id"]]["messages"], smol)["labels"]
    meta = json.loads((tmp_path / "tok" / "export_metadata.json").read_text())
    import hashlib
    assert meta["chat_template_sha256"] == hashlib.sha256(smol.chat_template.encode()).hexdigest()
    assert meta["tokenizer"] == "embedded" and meta["source"] == m.ref and meta["format"] == "sft-tokenized"
    assert meta["chat_template_sha256"] in (tmp_path / "tok" / "README.md").read_text()


@needs_model
def test_tokenized_labels_on_awkward_conversations(smol):
    rng = random.Random(0)
    texts = ["Thought: x\nAction: get 1 a", "  leading and trailing spaces  ", "line\n\nbreaks\n", "ünïcødé ✓",
             "a", "Action:", "<b>tags</b> & {braces}", "\n"]
    for trial in range(40):
        n = rng.randint(1, 7)
        msgs = [{"role": ["user", "assistant"][k % 2], "content": rng.choice(texts) + str(trial),
                 "loss": rng.random() < 0.5} for k in range(n)]
        if rng.random() < 0.3:
            msgs.insert(0, {"role": "system", "content": "sys " + str(trial), "loss": False})
        check_labels(msgs, smol)


def test_a_template_that_is_not_prefix_preserving_is_refused():
    def render(msgs):                # drops the thoughts of earlier assistant turns, as some templates do
        out = ""
        for i, m in enumerate(msgs):
            c = m["content"] if i == len(msgs) - 1 or m["role"] != "assistant" else "..."
            out += f"<{m['role']}>{c}</>"
        return out
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "long thought"},
            {"role": "user", "content": "o"}]
    with pytest.raises(ConfigError, match="not prefix-preserving"):
        message_spans(msgs, render)


@needs_model
def test_cli_export_with_tokenizer_flag(version, tmp_path, capsys):
    m, traj = version
    assert main(["export", m.ref, "--format", "sft-tokenized", "--out", str(tmp_path / "a"),
                 "--tokenizer", "embedded", "--option", "gold=only"]) == 0
    assert "exported 3 sft-tokenized rows (sft_tokenized_trajectories)" in capsys.readouterr().out
    assert main(["export", m.ref, "--format", "sft-tokenized", "--out", str(tmp_path / "b")]) == 2
    assert "needs a tokenizer: --tokenizer MODEL" in capsys.readouterr().err
    assert main(["export", m.ref, "--format", "sft", "--out", str(tmp_path / "c")]) == 0


def test_tokenized_converter_needs_the_tokenizer_option():
    with pytest.raises(ConfigError, match="needs a tokenizer"):
        sft_tokenized_rows({"trajectories": []}, "x@1", {})
    assert sft_trajectory_rows({"trajectories": []}, "x@1", {}) == []

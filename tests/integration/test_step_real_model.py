"""`errata build step` on the real embedded model as agent and teacher, in the crafting world (the built-in recipe,
shrunk). The 135M model is a weak agent and a weak teacher, so the figures vary; what must hold on any build:
counts add up per stage, every verdict is ok / error / unparsed with its raw text, an intervention follows each
corrected error, replaying the executed actions from reset reproduces every observation, no token of an erroneous
step has a label and every reflection and correction token does (through the tokenized export), and the three
exports run."""
import json

import pyarrow.parquet as pq
import pytest

from pipelines.chat_tokens import IGNORE, message_spans, tokenize_conversation
from pipelines.methods.step.exports import segmented_messages
from stages.agents.tokens import load_tokenizer, plain_messages
from stages.engines.model_prep import embedded_model_dir
from stages.envs.spec import read_task_record
from stages.envs import make_env
from tests.conftest import MODELS_DIR, cli_env, errata, published_manifest, published_rows

pytestmark = pytest.mark.integration

# 4 tasks x 6 steps at temperature 1.0: the settings under which the 135M teacher judged 4 of 21 steps wrong and
# corrected 3 (so the masking checks below usually meet real interventions; the counts are printed)
SMALL = ["--set", "tasks.count=4", "--set", "synthesize.max_steps=6", "--set", "synthesize.max_tokens=48",
         "--set", "synthesize.temperature=1.0",
         "--set", "select.golden_ratio=1.0", "--no-progress"]


def _labelled(row: dict, tok, messages: list[dict], k: int) -> tuple[str, str]:
    full, spans = message_spans(messages, lambda ms: tok.apply_chat_template(plain_messages(ms), tokenize=False))
    enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
    s, e = spans[k]
    pairs = [(full[a:b], lab) for (a, b), lab in zip(enc["offset_mapping"], row["labels"]) if s <= a < e]
    return "".join(t for t, lab in pairs if lab != IGNORE), "".join(t for t, lab in pairs if lab == IGNORE)


def test_step_on_craft_with_the_embedded_model_as_agent_and_teacher(tmp_path):
    root = tmp_path / "data"
    p = errata("build", "step", *SMALL, env=cli_env(root))
    assert "published step@1" in p.stdout and "interventions vs the agent's step" in p.stdout
    print("\n".join(line for line in p.stdout.splitlines()
                    if line.startswith(("yield", "verdicts", "interventions", "masked", "parse rate", "stages", "  "))))
    man = published_manifest(root, "step", 1)
    rows = published_rows(root, "step_trajectories", "step", 1)
    problems = published_rows(root, "problems", "step", 1)
    errors = [e for e in published_rows(root, "errors", "step", 1) if e["stage"] == "synthesize"]
    syn, sel = man["stages"]["synthesize"], man["stages"]["select"]
    c = syn["counts"]
    assert c["episodes"] == 4 and len(rows) + len(errors) == 8 and c["golden_success"] == 4
    agent_steps = [s for r in rows if not r["is_golden"] for s in r["steps"] if s["author"] == "agent"]
    assert c["judged"] == len(agent_steps) > 0
    assert c.get("verdict_ok", 0) + c.get("verdict_error", 0) + c.get("verdict_unparsed", 0) == c["judged"]
    assert c.get("interventions", 0) == sum(r["interventions"] for r in rows)
    assert sum(c.get(f"intervention_{o}", 0) for o in ("better", "equal", "worse")) == c.get("interventions", 0)
    assert sel["counts"]["kept"] == sum(r["drop_reason"] is None for r in rows) > 0
    assert {r["drop_reason"] for r in rows} <= {None, "not_successful", "golden_over_ratio"}
    assert all(r["success"] for r in rows if r["drop_reason"] is None)
    assert {m["roles"][0] for m in man["engines"].values()} and \
        sorted(r for e in man["engines"].values() for r in e["roles"]) == ["agent", "teacher"]
    for s in agent_steps:
        assert s["verdict"] in ("ok", "error", "unparsed") and s["verdict_raw"] is not None
        assert s["verdict_parse_ok"] == (s["verdict"] != "unparsed")
        assert not (s["verdict"] == "error" and s["loss"])
    # replaying the executed actions from reset reproduces every observation
    specs = {p["problem_id"]: read_task_record(p["env_config_json"]) for p in problems}
    for r in rows:
        spec, task = specs[r["problem_id"]]
        env = make_env(spec["kind"], dict(spec["config"]), spec["class"])
        env.setup()
        env.reset(task)
        assert [env.step(s["executed_action"])[0] for s in r["steps"]] == [s["observation"] for s in r["steps"]]
    # no token of an erroneous step has a label; every reflection and correction token does (real rows, all of them)
    tok = load_tokenizer(str(embedded_model_dir(MODELS_DIR)))
    seen = {"error": 0, "teacher": 0}
    for r in rows:
        msgs = segmented_messages(r)
        t = tokenize_conversation(msgs, tok)
        for j, s in enumerate(r["steps"]):
            on, off = _labelled(t, tok, msgs, 3 + 2 * j)
            if s["verdict"] == "error":
                assert on == "" and off.strip()
                seen["error"] += 1
            elif s["author"] == "teacher":
                assert off.strip() == "" and on.startswith("Reflection:")
                seen["teacher"] += 1
            on, off = _labelled(t, tok, msgs, 4 + 2 * j)          # observations: context only
            assert on == ""
        assert r["masked_fraction"] == pytest.approx(r["masked_tokens"] / max(1, r["assistant_tokens"]), abs=1e-6)
    assert seen["error"] == c.get("verdict_error", 0)
    print(f"masking checked on real rows: {seen['error']} erroneous steps, {seen['teacher']} teacher corrections")
    # the exports (a dpo export of no rows is refused: the agent may have kept no corrected trajectory)
    n_dpo = sum(r["interventions"] for r in rows if r["drop_reason"] is None and not r["is_golden"])
    for fmt, extra in (("sft", []), ("sft-tokenized", ["--tokenizer", "embedded"])):
        out = tmp_path / fmt
        errata("export", "step", "--format", fmt, "--out", str(out), *extra, env=cli_env(root))
        assert "Source: `step@1`" in (out / "README.md").read_text() and (out / "train-00000-of-00001.parquet").exists()
    assert json.loads((tmp_path / "sft-tokenized" / "export_metadata.json").read_text())["tokenizer"] == "embedded"
    tok_rows = pq.read_table(tmp_path / "sft-tokenized" / "train-00000-of-00001.parquet").to_pylist()
    assert len(tok_rows) == sel["counts"]["kept"] and all(any(x != IGNORE for x in r["labels"]) for r in tok_rows)
    p = errata("export", "step", "--format", "dpo", "--out", str(tmp_path / "dpo"), env=cli_env(root), check=n_dpo > 0)
    if n_dpo:
        assert len(pq.read_table(tmp_path / "dpo" / "train-00000-of-00001.parquet")) == n_dpo
    else:
        assert p.returncode == 2 and "nothing to export" in p.stderr

"""Agent-R end to end on the scripted fake engine: the `agent_r` method (mcts -> pairs -> judge -> splice) on the
craft env and on an env without snapshots (replay), the tables it writes, the splice invariants
(docs/methods/agent_r.md) checked on the real trees of a build, the exports (sft, sft-tokenized, dpo,
general-data mix) and the loss-flag regression on every converter."""
from __future__ import annotations

import json
import re
from collections import Counter

import pyarrow.parquet as pq
import pytest

from flows.cli import main
from pipelines.methods.agent_r.exports import dpo_rows, general_needed, sft_row, sft_rows, sft_tokenized_rows
from pipelines.methods.agent_rollout.exports import sft_trajectory_row
from pipelines.build import build
from pipelines.catalog import Catalog
from pipelines.chat_tokens import IGNORE, message_spans
from pipelines.config import load_recipe, validate_recipe
from pipelines.export import export
from schemas.errors import ConfigError
from pipelines.methods.agent_r.search_stages import pair_from_row, trees_from_tables
from pipelines.methods.agent_r.revision_stages import SpliceConfig, environment_name
from pipelines.methods.agent_r.splice import REVISION_SIGNALS, revision_turn
from stages.agents.tokens import load_tokenizer
from stages.engines.fake_engine import register_script, request_text
from stages.engines.model_prep import embedded_model_dir
from stages.envs.craft import CraftEnv
from tests.conftest import MODELS_DIR

GEN = {"generate": {"seed": 0, "depth": 3}, "max_goal_depth": 1}
_world = CraftEnv(**GEN)
_world.setup()
COUNTER = "tests.agent_envs:CounterEnv"
REVIEW = re.compile(r"The step to review:\nAction: (.*)\nObservation: (.*)", re.S)

needs_model = pytest.mark.skipif(not embedded_model_dir(MODELS_DIR).is_dir(),
                                 reason="the embedded model is not prepared (make model)")


def _judge_reply(text: str) -> str:
    m = REVIEW.search(text)
    action, obs = m.group(1), m.group(2)
    bad = "Could not" in obs or "Invalid" in obs or action.startswith("(no valid action)") or action == "inventory"
    return f"The step {'does not help' if bad else 'helps'}.\nJudgement: {'Bad' if bad else 'Good'}"


def script_agent_r(req, i):
    """Judge prompts: Bad for refused/useless steps, else Good. Policy turns: sample 0 takes the craft planner's
    next step (counting the steps that worked so far; counter env: 'inc'), sample 1 a useless 'inventory'
    (counter: an invalid 'dec'), sample 2 no action at all."""
    text = request_text(req)
    if "Judgement: Uncertain" in text:
        return _judge_reply(text)
    k = sum(m["role"] == "user" and not m["content"].startswith(("Could not", "Inventory"))
            for m in req.messages[3:])
    if i % 3 == 2:
        return "I am not sure what to do."
    goal = re.search(r"Goal: craft (.+)\.$", text, re.M)
    if goal:
        plan = [a for _, a in _world.world.plan(goal.group(1))]
        return f"Thought: step {k}\nAction: {plan[min(k, len(plan) - 1)] if i % 3 == 0 else 'inventory'}"
    return f"Thought: count\nAction: {'inc' if i % 3 == 0 else 'dec'}"


def script_garbled_judge(req, i):
    text = request_text(req)
    if "Judgement: Uncertain" in text:
        return "Hmm, hard to say. Judgement: maybe"
    return script_agent_r(req, i)


register_script("agent_r", script_agent_r)
register_script("agent_r_garbled_judge", script_garbled_judge)


def recipe(data_root, env=None, script="agent_r", **over):
    d = {"dataset": "ar", "method": "agent_r", "env": env or {"kind": "craft", "config": GEN},
         "tasks": {"kind": "env", "count": 4}, "engines": {"policy": {"kind": "fake", "fake_script": script}},
         "mcts": {"iterations": 6, "children": 3, "max_depth": 4, "constrain": "off"},
         "judge": {"constrain": "off"},      # the scripts' own text (unparsed turns, garbled judges) is what is tested
         "execution": {"runner": "local", "shard_size": 2}, "storage": {"root": str(data_root)}}
    for k, v in over.items():
        d[k] = {**d[k], **v} if isinstance(v, dict) and isinstance(d.get(k), dict) else v
    return validate_recipe(d)


@pytest.fixture
def built(data_root, monkeypatch):
    monkeypatch.setenv("ERRATA_MODELS", str(MODELS_DIR))
    m = build(recipe(data_root), progress=False).manifest
    cat = Catalog(str(data_root))
    return m, {t: cat.read_table(m, t).to_pylist() for t in m.tables}


# ---- the recipe ---------------------------------------------------------------------------------------------------
def test_builtin_recipe_loads_with_spec_defaults_documented_and_overrides():
    cfg = load_recipe("agent_r", ["env.kind=twx", "mcts.iterations=8", "pairs.alpha=0.75"])
    assert cfg.method == "agent_r" and cfg.env.kind == "twx" and cfg.mcts.iterations == 8
    assert isinstance(cfg.pairs.alpha, float) and cfg.pairs.alpha == 0.75
    full = validate_recipe({"dataset": "x", "method": "agent_r", "env": {"kind": "craft"},
                            "tasks": {"kind": "env"}})
    assert (full.mcts.iterations, full.mcts.children, full.mcts.max_depth) == (8, 4, 10)
    assert (full.pairs.alpha, full.pairs.beta, full.judge.on_unparsed) == (0.5, 0.3, "stop")
    for section in ("mcts", "pairs", "judge", "splice"):
        for name, f in type(getattr(full, section)).model_fields.items():
            assert f.description, f"{section}.{name}"
    with pytest.raises(ConfigError, match="signals"):
        validate_recipe({"dataset": "x", "method": "agent_r", "env": {"kind": "craft"}, "tasks": {"kind": "env"},
                         "splice": {"signals": list(REVISION_SIGNALS[:10])}})
    with pytest.raises(ConfigError):
        load_recipe("agent_r", ["pairs.alpha=high"])


def test_judge_names_the_environment_never_science():
    assert "crafting" in environment_name("craft") and "TextWorldExpress" in environment_name("twx")
    assert "counter" in environment_name("counter")
    assert not any("science" in environment_name(e) for e in ("craft", "twx", "counter"))


# ---- the build ----------------------------------------------------------------------------------------------------
def test_build_writes_every_table_with_counts(built):
    m, t = built
    assert set(m.tables) >= {"problems", "trees", "nodes", "pairs", "judgements", "revision_trajectories"}
    assert len(t["trees"]) == 4 and m.tables["errors"].rows == 0
    st = m.stages
    assert st["mcts"]["in"] == 4 and st["mcts"]["out"] == 4
    c = st["mcts"]["counts"]
    assert c["nodes"] == len(t["nodes"]) and c["policy_calls"] > 4 and c["unparsed_samples"] > 0
    assert m.models["mcts"]["search"]["iterations"] == 6 and m.models["mcts"]["iteration"] == 0
    # every node row has the audit fields, and the parent links form trees
    ids = {n["node_id"]: n for n in t["nodes"]}
    for n in t["nodes"]:
        assert n["parent_id"] is None or ids[n["parent_id"]]["depth"] == n["depth"] - 1
        assert (n["action"] is None) == (not n["parse_ok"]) or n["parent_id"] is None
    assert sum(n["parent_id"] is None for n in t["nodes"]) == 4
    pairs = [p for p in t["pairs"] if p["kind"] == "pair"]
    assert pairs and st["pairs"]["counts"]["pairs"] == len(pairs)
    assert st["judge"]["counts"]["judgements"] == len(t["judgements"]) > 0
    for table, id_col in (("nodes", "node_id"), ("pairs", "pair_id"), ("judgements", "judgement_id"),
                          ("revision_trajectories", "revision_id")):             # shards run in parallel threads
        assert len({r[id_col] for r in t[table]}) == len(t[table]), table
    kinds = Counter(r["kind"] for r in t["revision_trajectories"])
    assert kinds["revision"] == st["splice"]["counts"]["rows_revision"] > 0
    assert kinds["good"] == st["splice"]["counts"]["rows_good"] > 0
    for j in t["judgements"]:
        assert j["target_table"] == "nodes" and j["target_id"] in ids and j["judge_role"] == "self"
        assert j["verdict"] in ("good", "bad", "uncertain", "unparsed") and j["raw_text"]
        # a node is judged, not numbered math steps: no steps; a bad one is named by its depth (actions from 1)
        assert j["steps"] == [] and j["first_error_step"] == (ids[j["target_id"]]["depth"] if j["verdict"] == "bad"
                                                              else None)
        assert j["first_error_step"] is None or j["first_error_step"] >= 1
        assert "science" not in j["raw_text"]


def test_splice_invariants_on_real_trees(built):
    """The splice invariants (docs/methods/agent_r.md), checked on the trees of the build."""
    m, t = built
    trees = trees_from_tables(t)
    pairs = {p["pair_id"]: p for p in t["pairs"]}
    revisions = [r for r in t["revision_trajectories"] if r["kind"] == "revision"]
    assert revisions
    for r in revisions:
        p = pairs[r["pair_id"]]
        tree = trees[r["tree_id"]]
        pair = pair_from_row(tree, p)
        good_path, bad_path = pair.good.lineage(), pair.bad.lineage()
        d = pair.divergence.depth
        # good and bad leaves share the prefix up to the divergence parent, and differ right after
        assert good_path[:d + 1] == bad_path[:d + 1] and good_path[d + 1] is not bad_path[d + 1]
        assert good_path[d + 1] is pair.good_child and bad_path[d + 1] is pair.bad_child
        # the judged error depth is >= the divergence depth (strictly after: the walk starts at the child)
        end = tree.node(p["bad_end_node_id"])
        assert end.depth > d and bad_path[end.depth] is end
        if r["first_error_depth"] is not None:
            assert r["first_error_depth"] == end.depth and p["judge_status"] in ("first_error", "unparsed_as_bad")
        else:
            assert p["judge_status"] == "no_error" and end is pair.bad
        # gap > beta and good > alpha, as floats
        assert r["good_leaf_value"] - r["bad_leaf_value"] > p["beta"] and r["good_leaf_value"] > p["alpha"]
        msgs = r["messages"]
        n_open = len(tree.opening)
        # the shared prefix: the opening, then the good path's first d steps, all masked
        assert r["prefix_len"] == n_open + 2 * d
        assert [m_["content"] for m_ in msgs[n_open:r["prefix_len"]:2]] == [n.raw_text for n in good_path[1:d + 1]]
        # the bad steps from the divergence child through the judged error, masked
        i = r["revision_turn_index"]
        bad_turns = [n.raw_text for n in bad_path[d + 1:end.depth + 1]]
        assert [m_["content"] for m_ in msgs[r["prefix_len"]:i:2]] == bad_turns
        assert not any(m_["loss"] for m_ in msgs[:i])
        # the revision turn comes right after the last masked turn, with loss, then the env's reply to wait
        assert msgs[i] == {"role": "assistant", "content": revision_turn(r["revision_signal"]), "loss": True}
        assert msgs[i + 1]["role"] == "user" and not msgs[i + 1]["loss"] and msgs[i + 1]["content"] == r["wait_reply"]
        last_masked = max(k for k, m_ in enumerate(msgs) if m_["role"] == "assistant" and not m_["loss"])
        assert last_masked < i and msgs[i - 2]["content"] == end.raw_text
        # the good continuation starts exactly at the divergence child, every policy turn with loss
        cont = msgs[i + 2:]
        assert cont[0]["content"] == pair.good_child.raw_text
        assert [m_["content"] for m_ in cont[::2]] == [n.raw_text for n in good_path[d + 1:]]
        assert all(m_["loss"] for m_ in cont[::2]) and not any(m_["loss"] for m_ in cont[1::2])
        # segments say the same, with authors
        assert [s["text"] for s in r["segments"]] == [m_["content"] for m_ in msgs]
        assert [s["loss"] for s in r["segments"]] == [m_["loss"] for m_ in msgs]
        assert r["segments"][i]["author"] == "template" and r["strategy"] == "splice"
        assert r["revision_signal"] == REVISION_SIGNALS[r["revision_signal_index"]]
    for g in (r for r in t["revision_trajectories"] if r["kind"] == "good"):
        assert g["final_reward"] > 0.5
        assert all(m_["loss"] == (m_["role"] == "assistant" and k >= 3) for k, m_ in enumerate(g["messages"]))


def test_judgement_walk_stops_at_the_first_bad(built):
    m, t = built
    js = {j["judgement_id"]: j for j in t["judgements"]}
    for p in (p for p in t["pairs"] if p["kind"] == "pair"):
        verdicts = [js[j]["verdict"] for j in p["judgement_ids"]]
        assert verdicts and all(v in ("good", "uncertain") for v in verdicts[:-1])
        if p["judge_status"] == "first_error":
            assert verdicts[-1] == "bad"
            assert js[p["judgement_ids"][-1]]["target_id"] == p["first_error_node_id"]
            assert js[p["judgement_ids"][-1]]["first_error_step"] == p["first_error_depth"]


def test_unparsed_judgements_stop_and_are_recorded_not_taken_as_bad(data_root):
    m = build(recipe(data_root, script="agent_r_garbled_judge"), progress=False).manifest
    cat = Catalog(str(data_root))
    pairs = [p for p in cat.read_table(m, "pairs").to_pylist() if p["kind"] == "pair"]
    judgements = cat.read_table(m, "judgements").to_pylist()
    assert pairs and all(p["drop_reason"] == "judgement_unparsed" and p["judge_status"] == "unparsed" for p in pairs)
    assert judgements and all(j["verdict"] == "unparsed" and not j["parse_ok"] and j["parse_error"]
                              for j in judgements)
    assert m.stages["judge"]["dropped_judgement_unparsed"] == len(pairs)
    revs = cat.read_table(m, "revision_trajectories").to_pylist()
    assert not [r for r in revs if r["kind"] == "revision"] and [r for r in revs if r["kind"] == "good"]
    # the reference behaviour, as a setting
    m2 = build(recipe(data_root, script="agent_r_garbled_judge", judge={"on_unparsed": "treat_as_bad"},
                      dataset="ar2"), progress=False).manifest
    revs2 = [r for r in cat.read_table(m2, "revision_trajectories").to_pylist() if r["kind"] == "revision"]
    assert revs2 and all(r["judge_status"] == "unparsed_as_bad" for r in revs2)


def test_env_without_snapshots_works_by_replay_and_matches_snapshots(data_root):
    env = {"kind": "python", "class": COUNTER, "config": {"target": 2}}
    m = build(recipe(data_root, env=env), progress=False).manifest
    assert m.stages["mcts"]["counts"]["replay_steps"] > 0 and "env_restores" not in m.stages["mcts"]["counts"]
    cat = Catalog(str(data_root))
    revs = cat.read_table(m, "revision_trajectories").to_pylist()
    assert [r for r in revs if r["kind"] == "revision"] and m.tables["errors"].rows == 0
    # craft can snapshot: with snapshots off, the same trees by replay
    snap = build(recipe(data_root, dataset="snap"), progress=False).manifest
    replay = build(recipe(data_root, dataset="replay", mcts={"use_snapshots": False}), progress=False).manifest
    assert snap.stages["mcts"]["counts"]["env_restores"] > 0 and replay.stages["mcts"]["counts"]["replay_steps"] > 0

    def rows(mm):
        keep = ("node_id", "raw_text", "observation", "visits", "value", "terminal")
        return sorted(tuple(n[k] for k in keep) for n in cat.read_table(mm, "nodes").to_pylist())
    assert rows(snap) == rows(replay)


def test_rebuild_gives_the_same_ids(built, data_root):
    m, t = built
    m2 = build(recipe(data_root), progress=False).manifest
    t2 = {k: Catalog(str(data_root)).read_table(m2, k).to_pylist() for k in ("nodes", "pairs", "revision_trajectories")}
    for k in ("nodes", "pairs", "revision_trajectories"):
        id_col = {"nodes": "node_id", "pairs": "pair_id", "revision_trajectories": "revision_id"}[k]
        assert sorted(r[id_col] for r in t[k]) == sorted(r[id_col] for r in t2[k])


def test_a_later_round_starts_from_the_previous_version(built, data_root):
    m, t = built
    cfg = recipe(data_root, tasks={"kind": "version", "ref": m.ref}, mcts={"iteration": 1})
    m2 = build(cfg, progress=False).manifest
    assert m2.parents == [m.ref] and m2.models["mcts"]["iteration"] == 1
    trees = Catalog(str(data_root)).read_table(m2, "trees").to_pylist()
    assert {x["iteration"] for x in trees} == {1}
    assert not {x["tree_id"] for x in trees} & {x["tree_id"] for x in t["trees"]}


# ---- signals ------------------------------------------------------------------------------------------------------
def test_every_revision_signal_is_used():
    from pipelines.methods.agent_r.splice import choose_signal
    assert len(REVISION_SIGNALS) >= 20 and len(set(REVISION_SIGNALS)) == len(REVISION_SIGNALS)
    drawn = Counter(choose_signal(f"pair-{k}")[0] for k in range(2000))
    assert set(drawn) == set(range(len(REVISION_SIGNALS)))
    assert min(drawn.values()) > 2000 / len(REVISION_SIGNALS) / 2      # roughly uniform, none starved
    mine = [f"My own signal number {k}." for k in range(21)]
    assert SpliceConfig(signals=mine).signals == mine
    assert {choose_signal(f"p{k}", 0, mine)[1] for k in range(500)} == set(mine)


# ---- exports ------------------------------------------------------------------------------------------------------
def test_sft_export_keeps_loss_flags_and_kind(built, data_root, tmp_path):
    m, t = built
    r = export(str(data_root), m.ref, "sft", str(tmp_path / "sft"))
    assert r.export == "sft_agent_r" and r.rows == len(t["revision_trajectories"])
    rows = pq.read_table(tmp_path / "sft" / "train-00000-of-00001.parquet").to_pylist()
    by_id = {x["revision_id"]: x for x in t["revision_trajectories"]}
    for row in rows:
        assert row["messages"] == [{"role": x["role"], "content": x["content"], "loss": x["loss"]}
                                   for x in by_id[row["revision_id"]]["messages"]]
        assert row["kind"] in ("revision", "good")
    only = export(str(data_root), m.ref, "sft", str(tmp_path / "rev"), options={"kind": "revision"})
    assert only.rows == sum(x["kind"] == "revision" for x in t["revision_trajectories"])


def test_no_converter_drops_the_loss_flag(built):
    """Regression (cf. the reference's rewrite()): every converter of messages keeps each message's loss."""
    m, t = built
    for r in t["revision_trajectories"]:
        assert [x["loss"] for x in sft_row(r, "v")["messages"]] == [x["loss"] for x in r["messages"]]
    rows = sft_rows({"revision_trajectories": t["revision_trajectories"]}, "v", {})
    flags = [x["loss"] for r in rows for x in r["messages"]]
    assert any(flags) and not all(flags)
    traj = {"trajectory_id": "t", "problem_id": "p", "messages": t["revision_trajectories"][0]["messages"]}
    assert [x["loss"] for x in sft_trajectory_row(traj, "v")["messages"]] == [x["loss"] for x in traj["messages"]]
    # flipping one flag in the source flips it in the output (the converter reads it, it does not recompute it)
    r = dict(t["revision_trajectories"][0])
    r["messages"] = [dict(x) for x in r["messages"]]
    r["messages"][0]["loss"] = True
    assert sft_row(r, "v")["messages"][0]["loss"] is True


@needs_model
def test_tokenized_export_masks_bad_steps_and_labels_revision_and_good_branch(built):
    """The loss mask of a splice with SmolLM2's tokenizer: no label on a masked turn, every token of the revision turn and
    of the good branch labelled."""
    m, t = built
    tok = load_tokenizer(str(embedded_model_dir(MODELS_DIR)))
    rows = sft_tokenized_rows({"revision_trajectories": t["revision_trajectories"]}, "v", {"tokenizer": "embedded",
                                                                   "_models_dir": str(MODELS_DIR)})
    by_id = {x["revision_id"]: x for x in t["revision_trajectories"]}
    checked = 0
    for row in rows:
        msgs = by_id[row["revision_id"]]["messages"]
        plain = [{"role": x["role"], "content": x["content"]} for x in msgs]
        full, spans = message_spans(plain, lambda ms: tok.apply_chat_template(ms, tokenize=False))
        enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
        assert enc["input_ids"] == row["input_ids"]
        for k, ((s, e), msg) in enumerate(zip(spans, msgs)):
            toks = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if s <= a < e]
            assert toks, k
            labels = [row["labels"][i] for i in toks]
            if msg["loss"]:
                assert labels == [row["input_ids"][i] for i in toks]
            else:
                assert all(x == IGNORE for x in labels)
            checked += 1
        masked = [i for i, x in enumerate(row["labels"]) if x == IGNORE]
        assert row["completion_mask"] == [int(x != IGNORE) for x in row["labels"]] and masked
    assert checked > 0


def test_dpo_export_at_the_divergence_parent(built, data_root, tmp_path):
    m, t = built
    r = export(str(data_root), m.ref, "dpo", str(tmp_path / "dpo"))
    rows = pq.read_table(tmp_path / "dpo" / "train-00000-of-00001.parquet").to_pylist()
    assert r.export == "dpo_agent_r" and rows and set(rows[0]) >= {"prompt", "chosen", "rejected"}
    nodes = {n["node_id"]: n for n in t["nodes"]}
    trees = trees_from_tables(t)
    for row in rows:
        div = nodes[row["divergence_node_id"]]
        ch, rj = nodes[row["chosen_id"]], nodes[row["rejected_id"]]
        assert ch["parent_id"] == rj["parent_id"] == div["node_id"] and ch["node_id"] != rj["node_id"]
        assert row["chosen"] == [{"role": "assistant", "content": ch["raw_text"]}]
        assert row["rejected"] == [{"role": "assistant", "content": rj["raw_text"]}]
        from pipelines.methods.agent_r.tree import path_messages
        tree = trees[div["tree_id"]]
        want = [{"role": x["role"], "content": x["content"]} for x in path_messages(tree, tree.node(div["node_id"]))]
        assert row["prompt"] == want and row["prompt"][-1]["role"] == "user"
        assert row["margin"] > 0.3 and row["pair_source"] == "sibling_branch"
    # one row per (divergence, child pair)
    assert len({(x["divergence_node_id"], x["chosen_id"], x["rejected_id"]) for x in rows}) == len(rows)
    assert len(dpo_rows({"pairs": t["pairs"], "nodes": t["nodes"]}, "v", {})) == len(rows)


def test_mixing_general_data_at_eta(built, data_root, tmp_path, capsys):
    m, t = built
    general = tmp_path / "general.jsonl"
    general.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": f"Hi {k}"},
                                                          {"role": "assistant", "content": f"Hello {k}"}]})
                                 for k in range(200)) + "\n")
    n = len(t["revision_trajectories"])
    out = tmp_path / "mixed"
    assert main(["export", m.ref, "--format", "sft", "--out", str(out), "--mix", str(general), "--eta", "0.2"]) == 0
    rows = pq.read_table(out / "train-00000-of-00001.parquet").to_pylist()
    kinds = Counter(r["kind"] for r in rows)
    assert kinds["general"] == general_needed(n, 0.2) and len(rows) == n + kinds["general"]
    assert abs(kinds["general"] / len(rows) - 0.2) < 1 / len(rows) + 1e-9
    for r in rows:
        if r["kind"] == "general":
            assert [x["loss"] for x in r["messages"]] == [False, True]
    assert general_needed(80, 0.2) == 20 and general_needed(10, 0.0) == 0
    small = tmp_path / "small.jsonl"
    small.write_text(general.read_text().splitlines()[0] + "\n")
    with pytest.raises(ConfigError, match="needs .* general rows"):
        sft_rows({"revision_trajectories": t["revision_trajectories"]}, "v", {"mix": str(small), "eta": "0.5"})
    with pytest.raises(ConfigError, match="--eta needs --mix"):
        sft_rows({"revision_trajectories": t["revision_trajectories"]}, "v", {"eta": "0.2"})


def test_a_splice_is_auditable_in_sql(built, data_root):
    """revisions -> pairs -> nodes / judgements, joined by ids in DuckDB over the published version."""
    from pipelines.sql import connect, fetch
    m, t = built
    con = connect(Catalog(str(data_root)))
    _, rows = fetch(con, """
        SELECT r.revision_id, p.divergence_depth, b.depth, g.parent_id = d.node_id, j.verdict
        FROM ar.revision_trajectories r
        JOIN ar.pairs p USING (pair_id)
        JOIN ar.nodes d ON d.node_id = p.divergence_node_id
        JOIN ar.nodes g ON g.node_id = p.good_child_id
        JOIN ar.nodes b ON b.node_id = p.bad_end_node_id
        LEFT JOIN ar.judgements j ON j.target_id = p.first_error_node_id
        WHERE r.kind = 'revision'""")
    revisions = [r for r in t["revision_trajectories"] if r["kind"] == "revision"]
    assert len(rows) == len(revisions) > 0
    for _, div_depth, end_depth, good_child_of_div, verdict in rows:
        assert end_depth > div_depth and good_child_of_div and verdict in ("bad", None)


@needs_model
def test_tokenized_export_mixes_general_rows_with_their_assistant_turns_labelled(built, tmp_path):
    m, t = built
    general = tmp_path / "general.jsonl"
    general.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": f"Name a colour ({k})."},
                                                          {"role": "assistant", "content": "Blue."}]})
                                 for k in range(150)) + "\n")
    rows = sft_tokenized_rows({"revision_trajectories": t["revision_trajectories"]}, "v",
                              {"tokenizer": "embedded", "_models_dir": str(MODELS_DIR), "mix": str(general),
                               "eta": "0.25"})
    mixed = [r for r in rows if r["kind"] == "general"]
    assert len(mixed) == general_needed(len(t["revision_trajectories"]), 0.25) and len(rows) == len(t["revision_trajectories"]) + len(mixed)
    tok = load_tokenizer(str(embedded_model_dir(MODELS_DIR)))
    for r in mixed:
        labelled = [x for x in r["labels"] if x != IGNORE]
        assert tok.decode(labelled).strip().startswith("Blue.") and "colour" not in tok.decode(labelled)

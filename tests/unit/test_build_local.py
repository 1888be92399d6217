"""The build on the scripted fake engine, in process: problems -> stages -> version; resume; errors; stage by
stage; global stages and build-scope tables; progress lines. The recipe contract: test_recipe_contract.py."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Optional

import pytest

from pipelines.build import build, run_build
from pipelines.config import validate_recipe
from pipelines.execute import run_stage
from pipelines.plan import make_stages, plan_build, stage_names
from pipelines.publish import publish_plan
from pipelines.session import BuildSession
from schemas.registry import Method, StageSpec, get_method, register_method
from schemas.errors import InputError
from schemas.rows import Lineage
from schemas.registry import TableSpec, register_table
from stages.base import MapStage
from stages.generate import GenerateStage
from stages.verify import VerifyStage
from tests.conftest import catalog, with_extra_stage


def test_build_publishes_counts_and_lineage(fake_recipe, data_root):
    cfg = fake_recipe(n=6, n_samples=2, shard_size=4)
    r = build(cfg, progress=False)
    m = r.manifest
    assert (m.dataset, m.version) == ("fake", 1)
    assert m.tables["problems"].rows == 6
    assert m.tables["attempts"].rows == 12 and m.tables["errors"].rows == 0
    assert m.stages["generate"]["in"] == 6 and m.stages["generate"]["out"] == 12
    assert m.stages["verify"]["in"] == 12 and m.stages["filter"]["out"] <= 12
    assert list(m.stages) == ["generate", "verify", "filter", "dedup"]
    assert m.shards == {"total": 2, "resumed": 0}
    assert m.recipe_hash == cfg.config_hash() and m.code_version
    (eng,) = m.engines.values()
    assert eng["roles"] == ["student"] and eng["starts"] == 1 and eng["kind"] == "fake"
    assert m.models["generate"]["role"] == "student" and m.inputs["kind"] == "jsonl"
    cat = catalog(data_root)
    att = cat.read_table(m, "attempts").to_pylist()
    # mixed script: even samples right, odd samples wrong
    assert {a["sample_index"]: a["is_correct"] for a in att} == {0: True, 1: False}
    probs = {p["problem_id"] for p in cat.read_table(m, "problems").to_pylist()}
    for a in att:
        assert a["run_id"] == m.run_id and a["method"] == "sample_verify" and a["created_at"] is not None
        assert a["parent_ids"] == [a["problem_id"]] and a["problem_id"] in probs
    assert len({a["attempt_id"] for a in att}) == 12
    # a second build is a new version; the first is untouched
    m2 = build(cfg, progress=False).manifest
    assert m2.version == 2 and cat.verify_version(m) == []


class Crash(MapStage):
    """Raises on one shard, like a process dying mid-build."""
    kind = "crash"
    table = "attempts"
    reads = {"attempts": ("problem_id",)}
    on: Optional[str] = None

    def process(self, rows, tables, stats, shard):
        if any(r.get("problem_id") == Crash.on for r in rows):
            raise RuntimeError("simulated crash")
        return rows


def test_crash_publishes_nothing_and_rerun_resumes(fake_recipe, data_root, methods_restored):
    with_extra_stage("crash", Crash, after="verify")
    cfg = fake_recipe(n=6, n_samples=2, shard_size=2, method="sv_crash")
    plan = plan_build(cfg, log=lambda s: None)
    Crash.on = plan.staging.read_table(2, "problems", []).to_pylist()[0]["problem_id"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_build(plan, progress=False)
    assert catalog(data_root).versions("fake") == []
    st = plan.staging
    assert [st.done(i, "crash") for i in range(3)] == [True, True, False]
    assert st.done(2, "verify"), "the stages before the crash keep their checkpoint"
    Crash.on = None
    logs = []
    plan2 = plan_build(cfg, log=logs.append)
    assert plan2.resumed and plan2.run_id == plan.run_id and plan2.pending("crash") == [2]
    r = run_build(plan2, progress=False)
    assert r.manifest.shards == {"total": 3, "resumed": 3} and r.resumed_shards == 3
    att = catalog(data_root).read_table(r.manifest, "attempts").to_pylist()
    assert len(att) == 12 and len({a["attempt_id"] for a in att}) == 12
    assert r.manifest.stages["generate"]["in"] == 6      # stats of every shard, also the resumed ones
    assert any("resuming" in s for s in logs)


def test_failed_rows_become_error_records(fake_recipe, data_root, tmp_path):
    cfg = fake_recipe(n=4, n_samples=2, shard_size=4)
    p = tmp_path / "tasks.jsonl"
    lines = p.read_text().splitlines()
    lines[1] = lines[1].replace("[gold=", "[fail=prompt_too_long] [gold=")
    p.write_text("\n".join(lines) + "\n")
    m = build(cfg, progress=False).manifest
    assert m.tables["errors"].rows == 1 and m.tables["attempts"].rows == 6
    assert m.stages["generate"]["errors"] == 1
    err = catalog(data_root).read_table(m, "errors").to_pylist()[0]
    assert err["stage"] == "generate" and err["reason"] == "prompt_too_long" and err["table"] == "problems"
    assert err["row_id"] == err["problem_id"] and "plus" in err["raw_input"]


def test_bad_input_fails_before_anything_is_written(fake_recipe, data_root, tmp_path):
    cfg = fake_recipe(n=4)
    p = tmp_path / "tasks.jsonl"
    lines = p.read_text().splitlines()
    lines[2] = '{"question": "broken'
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError) as e:
        build(cfg, progress=False)
    assert "tasks.jsonl" in str(e.value) and ":3" in str(e.value)
    assert not os.path.exists(data_root / "datasets") and not os.path.exists(data_root / "staging")


def test_ray_runner_runs_an_llm_stage_as_one_actor_with_shards_in_flight_calls(fake_recipe):
    from pipelines.runner import RayRunner
    cfg = fake_recipe(n=2)
    stages = make_stages(get_method(cfg.method), cfg)
    r = RayRunner(shards_in_flight=4, cpu_stage_concurrency=1)
    got = {s.name: r.resources([s]) for s in stages}
    assert got["generate"] == {"actors": 1, "calls": 4, "num_cpus": 0.01}    # threads waiting on the engine
    assert got["verify"] == got["filter"] == {"actors": 1, "calls": 1, "num_cpus": 0.25}
    assert r.resources(stages[:1], shards=2)["calls"] == 2                    # never more than the shards
    assert r.resources(stages) == got["generate"]           # a fused segment with an LLM stage: the LLM shape


def test_fused_segments_start_at_each_llm_stage():
    from pipelines.runner import segments
    from stages.base import Stage

    class S(Stage):
        kind = "s"

        def __init__(self, name, role=None):
            super().__init__(name=name)
            self._role = role

        @property
        def role(self):
            return self._role

    chain = [S("prep"), S("gen", "student"), S("verify"), S("filter"), S("judge", "teacher"), S("score")]
    names = lambda segs: [[st.name for st in seg] for seg in segs]   # noqa: E731
    assert names(segments(chain, fuse=False)) == [[n] for n in ("prep", "gen", "verify", "filter", "judge", "score")]
    assert names(segments(chain, fuse=True)) == [["prep", "gen", "verify", "filter"], ["judge", "score"]]
    assert names(segments(chain[2:4], fuse=True)) == [["verify", "filter"]]          # CPU stages only: one actor
    assert names(segments(chain[1:2] + chain[4:5], fuse=True)) == [["gen"], ["judge"]]


def test_fuse_stages_defaults_to_local_ray_and_does_not_change_the_recipe_hash(fake_recipe):
    cfg = fake_recipe(n=2)
    plan_hash = cfg.config_hash()
    assert cfg.execution.fuse_stages is None and cfg.execution.fused()
    on_cluster = cfg.execution.model_copy(update={"ray_address": "10.0.0.1:6379"})
    assert not on_cluster.fused() and on_cluster.model_copy(update={"fuse_stages": True}).fused()
    unfused = cfg.model_copy(update={"execution": cfg.execution.model_copy(update={"fuse_stages": False})})
    assert not unfused.execution.fused() and unfused.config_hash() == plan_hash


# --- stage by stage (the Prefect flow's shape) --------------------------------------------------------------
def _stage_by_stage(plan):
    with BuildSession(plan, progress=False) as session:
        for name in stage_names(plan.config):
            run_stage(session, name, log=lambda s: None)
        engines = session.describe_engines()
    return publish_plan(plan, engines)


def _rows(cat, m, table, key):
    rows = cat.read_table(m, table).to_pylist()
    for r in rows:
        r.pop("created_at", None), r.pop("run_id", None)
    return sorted(rows, key=lambda r: r[key])


def test_stage_by_stage_gives_the_same_version_as_streaming(fake_recipe, data_root, tmp_path):
    lines = (tmp_path / "tasks.jsonl")
    cfg = fake_recipe(n=6, n_samples=2, shard_size=4)
    text = lines.read_text().splitlines()
    text[3] = text[3].replace("[gold=", "[fail=prompt_too_long] [gold=")
    lines.write_text("\n".join(text) + "\n")
    cat = catalog(data_root)
    streamed = build(cfg, progress=False).manifest
    plan = plan_build(cfg, log=lambda s: None)
    staged = _stage_by_stage(plan)
    assert (streamed.version, staged.version) == (1, 2)
    for table, key in (("problems", "problem_id"), ("attempts", "attempt_id"), ("errors", "error_id")):
        assert _rows(cat, streamed, table, key) == _rows(cat, staged, table, key), table
    assert staged.tables["errors"].rows == 1
    for name in ("generate", "verify", "filter", "dedup"):
        a, b = dict(streamed.stages[name]), dict(staged.stages[name])
        for k in ("seconds", "t_start", "t_end", "wall_seconds", "tokens_per_s"):
            a.pop(k, None), b.pop(k, None)
        assert a == b, name
    assert [e["starts"] for e in staged.engines.values()] == [1]
    assert not os.path.exists(plan.staging.dir)  # checkpoints went with staging


def test_stage_by_stage_checkpoints_skip_finished_shards(fake_recipe, data_root, monkeypatch):
    import pipelines.runner as runner
    cfg = fake_recipe(n=6, n_samples=2, shard_size=2)
    plan = plan_build(cfg, log=lambda s: None)
    st = plan.staging
    real = runner.run_stage_on_shard
    calls = []

    def crash_on_third(stage, staging, shard_id, *a, **k):
        if not staging.done(shard_id, stage.name):
            calls.append(stage.name)
        if stage.name == "verify" and calls.count("verify") == 3:
            raise RuntimeError("killed")
        return real(stage, staging, shard_id, *a, **k)
    monkeypatch.setattr(runner, "run_stage_on_shard", crash_on_third)
    with BuildSession(plan, progress=False) as session:
        run_stage(session, "generate", log=lambda s: None)
        with pytest.raises(RuntimeError, match="killed"):
            run_stage(session, "verify", log=lambda s: None)
        names = stage_names(cfg)
        assert [st.last_done(s, names) for s in range(3)] == [1, 1, 0]
        with pytest.raises(Exception, match="have not been through stage 'verify'"):
            run_stage(session, "filter", log=lambda s: None)

    logs = []
    plan2 = plan_build(cfg, log=lambda s: None)
    with BuildSession(plan2, progress=False) as session:
        out = run_stage(session, "generate", log=logs.append)
        assert (out["shards_run"], out["shards_skipped"]) == (0, 3)
        out = run_stage(session, "verify", log=logs.append)
        assert (out["shards_run"], out["shards_skipped"]) == (1, 2) and out["stats"]["in"] == 4
        run_stage(session, "filter", log=logs.append)
        run_stage(session, "dedup", log=logs.append)
        engines = session.describe_engines()
    assert calls == ["generate"] * 3 + ["verify"] * 4 + ["filter"] * 3   # dedup is global: not per shard
    m = publish_plan(plan2, engines)
    att = catalog(data_root).read_table(m, "attempts").column("attempt_id").to_pylist()
    assert m.tables["attempts"].rows == 12 == len(set(att))
    assert m.stages["verify"]["in"] == 12 and m.stages["generate"]["out"] == 12
    assert any("generate: 0 shard(s) run, 3 already done" in s for s in logs)
    # a global stage reports once, as global, not as if it had run per shard
    assert [s for s in logs if s.startswith("dedup:")][0].startswith("dedup: global, in 12, out ")
    assert len([s for s in logs if s.startswith("dedup:")]) == 1, logs



def test_global_stage_runs_between_per_shard_stages_in_both_modes(tmp_path, data_root):
    rows = [{"question": "What is 1 plus 1? [gold=2]", "answer": "#### 2"},
            {"question": "What is 2 plus 2? [gold=4]", "answer": "#### 4"},
            {"question": "what is 1 plus  1? [gold=2]", "answer": "#### 2"}]     # repeats the first
    f = tmp_path / "dup.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    # task loading would flag the repeat (tests/unit/test_clean.py); kept here, the global dedup stage drops its
    # attempts, which only the whole build shows (one problem per shard)
    cfg = validate_recipe({"dataset": "dup", "tasks": {"kind": "jsonl", "path": str(f), "keep_duplicates": True},
                           "engines": {"student": {"kind": "fake", "fake_script": "echo_answer"}},
                           "generate": {"n": 2}, "execution": {"runner": "local", "shard_size": 1},
                           "dedup": {"enabled": True}, "storage": {"root": str(data_root)}})
    m = build(cfg, progress=False).manifest
    assert m.stages["dedup"] == {**m.stages["dedup"], "in": 6, "out": 4, "dropped_duplicate_problem": 2}
    att = catalog(data_root).read_table(m, "attempts").to_pylist()
    assert sorted(a["drop_reason"] or "" for a in att) == ["", "", "", "", "duplicate_problem",
                                                           "duplicate_problem"]
    staged = _stage_by_stage(plan_build(cfg, log=lambda s: None))
    assert staged.stages["dedup"]["dropped_duplicate_problem"] == 2


def test_self_correct_method_reviews_and_retries_wrong_attempts_with_one_engine(fake_recipe, data_root):
    from pipelines.methods.self_correct.self_check_stages import parse_verdict
    cfg = fake_recipe(n=4, n_samples=2, shard_size=2, script="reviewer", method="self_correct",
                      verify_retry={"only_unverified": True})
    m = build(cfg, progress=False).manifest
    # mixed: sample 1 of each problem is wrong -> reviewed "incorrect" -> retried once -> correct
    assert m.stages["generate"]["out"] == 8 and m.stages["self_check"]["out"] == 8
    assert m.stages["self_check"]["counts"] == {"parse_ok": 8, "parsed": 8} and m.stages["self_check"]["parse_rate"] == 1.0
    assert m.stages["retry"]["in"] == 8 and m.stages["retry"]["out"] == 4        # 4 retries appended
    assert m.stages["verify_retry"]["in"] == 12 and m.stages["verify_retry"]["counts"] == {"already_verified": 8}
    assert m.tables["attempts"].rows == 12
    (eng,) = m.engines.values()
    assert eng["starts"] == 1       # three LLM stages, one engine
    cat = catalog(data_root)
    att = cat.read_table(m, "attempts").to_pylist()
    retries = [a for a in att if a["sample_index"] >= 1000]
    assert len(retries) == 4 and all(a["is_correct"] for a in retries)
    judgements = {j["target_id"]: j for j in cat.read_table(m, "judgements").to_pylist()}
    originals = {a["attempt_id"]: a for a in att if a["sample_index"] < 1000}
    for j in judgements.values():   # the review agrees with the verifier here
        assert j["verdict"] == ("correct" if originals[j["target_id"]]["is_correct"] else "incorrect")
        assert j["steps"] == [] and j["first_error_step"] is None     # the review saw no numbered steps
    for r in retries:
        wrong, judgement = r["parent_ids"]
        assert originals[wrong]["is_correct"] is False and judgement == judgements[wrong]["judgement_id"]
    assert parse_verdict("ok\n**Verdict:** Incorrect") == ("incorrect", None)
    assert parse_verdict("looks good to me")[0] is None


def test_progress_lines_count_sequences_shards_tokens_and_eta():
    from pipelines.progress import ProgressMonitor, aggregate, status_line
    per = {"k1": {"planned_requests": 4, "planned_sequences": 16, "done_requests": 2, "done_sequences": 8,
                  "failed_requests": 0, "prompt_tokens": 100, "completion_tokens": 800, "shards": [0],
                  "first_submit": 100.0, "last_done": 110.0}}
    a = aggregate(per)
    ln = status_line("generate", a, shards_pending=4, now=120.0)
    assert ln["total"] == 64 and not ln["exact"] and ln["done"] == 8          # 1 of 4 shards seen: extrapolated
    assert ln["text"] == "generate: 8/~64 sequences, 1/4 shards, 40 tok/s, ETA 2m20s"
    ln = status_line("generate", a, shards_pending=1, now=120.0, live_tps=123.4)
    assert ln["total"] == 16 and ln["exact"] and "123 tok/s" in ln["text"]

    class Plan:
        shard_ids = [0, 1]

        def pending(self, tag):
            return [0, 1]

    class Engines:
        n = 0

        def progress(self):
            Engines.n += 1
            return {"generate": per, "__engine__": {"k1": {"generation_tokens": 500 * Engines.n, "at": 10.0 * Engines.n}}}
    import io
    out = io.StringIO()
    mon = ProgressMonitor(Engines(), Plan(), stream=out, log_every=0)
    mon.render(Engines().progress())
    lines = mon.render(Engines().progress())
    assert lines[0]["tokens_per_s"] == 50.0            # 500 tokens in 10 s, counted by the engine every step
    assert "generate: 8/~32 sequences, 1/2 shards, 50 tok/s" in out.getvalue()



def test_a_stage_s_last_progress_line_comes_before_the_line_that_reports_it_done(fake_recipe, data_root, monkeypatch):
    """Seen in a fresh `make demo`: "generate: 256/256 sequences ..." was printed after every stage's summary line
    (at the end of the build); it must come when the stage ends."""
    import pipelines.console as console
    said: list[str] = []

    class Stream:
        def write(self, text):
            if text.strip():
                said.append(text.strip())

        def flush(self):
            pass

        def isatty(self):
            return False
    monkeypatch.setattr(console, "console_stream", lambda: Stream())
    cfg = fake_recipe(n=6, n_samples=2, shard_size=4)
    plan = plan_build(cfg, log=lambda s: None)
    with BuildSession(plan, progress=True, stage_by_stage=True) as session:
        for name in stage_names(cfg):
            run_stage(session, name, log=said.append)
    last = [i for i, s in enumerate(said) if s.startswith("generate: 12/12 sequences")]
    done = [i for i, s in enumerate(said) if s.startswith("generate: 2 shard(s) run")]
    verify_done = [i for i, s in enumerate(said) if s.startswith("verify: 2 shard(s) run")]
    assert len(last) == 1 and len(done) == 1 and len(verify_done) == 1, said
    assert last[0] < done[0] < verify_done[0], said

# --- build-scope tables: measured over every shard, read by every shard ----------------------------------------
@dataclass
class Share(Lineage):
    """A test build-scope table: the share of correct attempts over the whole build."""
    share_id: str = ""
    correct: int = 0
    total: int = 0


register_table(TableSpec("test_shares", Share, "share_id", scope="build", description="test only"))


def _measure_method():
    from stages.base import GlobalStage

    class Measure(GlobalStage):
        kind = "measure"
        build_tables = ("test_shares",)
        reads = {"attempts": ("is_correct",)}

        def summarize(self, tables, stats):
            att = tables["attempts"]
            stats.count("measured", len(att))
            return {"test_shares": [{"share_id": "all", "correct": sum(1 for a in att if a["is_correct"]),
                                     "total": len(att), **self.lineage([])}]}

    class UseShare(MapStage):
        kind = "use_share"
        table = "attempts"
        reads = {"attempts": ("attempt_id",), "test_shares": ("correct", "total")}

        def process(self, rows, tables, stats, shard):
            (s,) = tables["test_shares"]
            stats.count(f"saw_{s['correct']}_of_{s['total']}", len(rows))
            return rows

    return register_method(Method("test_measure", "measure then use", (
        StageSpec("generate", GenerateStage), StageSpec("verify", VerifyStage), StageSpec("measure", Measure),
        StageSpec("use", UseShare))))


@pytest.mark.parametrize("mode", ["streaming", "stage_by_stage"])
def test_a_build_scope_table_is_measured_once_and_read_by_every_shard(fake_recipe, data_root, methods_restored,
                                                                      mode):
    _measure_method()
    cfg = fake_recipe(n=6, n_samples=2, shard_size=2, method="test_measure")
    if mode == "streaming":
        m = build(cfg, progress=False).manifest
    else:
        m = _stage_by_stage(plan_build(cfg, log=lambda s: None))
    assert m.tables["test_shares"].rows == 1 and [f.path for f in m.tables["test_shares"].files] == \
        ["test_shares/part-build.parquet"]
    assert m.stages["measure"]["counts"] == {"measured": 12}
    assert m.stages["use"]["counts"] == {"saw_6_of_12": 12}      # every shard read the whole build's numbers
    assert catalog(data_root).read_table(m, "test_shares").to_pylist()[0]["total"] == 12

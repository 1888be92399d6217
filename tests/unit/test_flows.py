"""Prefect flows on real Prefect (prefect_test_harness: a temporary server and database for this module)."""
from __future__ import annotations

import os
import tempfile

# Prefect reads its settings when first imported: keep its state out of the repo and the user's home.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="errata-prefect-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")

import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402

from pipelines.catalog import Catalog  # noqa: E402
from schemas.errors import ConfigError, TransientEngineError  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def harness():
    from prefect.testing.utilities import prefect_test_harness
    with prefect_test_harness(server_startup_timeout=120):
        yield


def _attempt_ids(store, m):
    return store.read_table(m, "attempts").column("attempt_id").to_pylist()


def _task_runs(flow_run_id):
    from flows.runs import show_run
    return {t["name"].rsplit("-", 1)[0]: t for t in show_run(str(flow_run_id)).tasks}


# --- builds -----------------------------------------------------------------------------------------------------
def test_build_flow_publishes_and_records_the_run(fake_recipe, data_root):
    from flows.build import build_flow_run
    from flows.runs import list_runs, show_run
    cfg = fake_recipe(n=6)
    result = build_flow_run(cfg, progress=False, recipe="fake-recipe")
    m = result.manifest
    assert (m.dataset, m.version) == ("fake", 1)
    assert m.tables["attempts"].rows == 12 and m.tables["problems"].rows == 6
    assert Catalog(str(data_root)).versions("fake") == [1] and result.root == str(data_root)

    run = next(r for r in list_runs(limit=10) if r.version == "fake@1")
    assert run.state == "Completed" and run.recipe == "fake-recipe" and run.flow == "errata-build"
    assert run.seconds is not None and run.error is None
    info = show_run(run.id[:8])  # a prefix is enough
    assert {"dataset:fake", "recipe:fake-recipe", "version:fake@1"} <= set(info.tags)
    assert [t["name"].rsplit("-", 1)[0] for t in info.tasks] == ["plan", "generate", "verify", "filter", "dedup",
                                                                  "publish"]
    assert all(t["state"] == "Completed" for t in info.tasks)
    md = next(a for a in info.artifacts if a["key"] == "build-fake")["data"]
    assert "# fake@1" in md and "| attempts | 12 |" in md and "| generate | 6 | 12 |" in md
    assert "| engine | roles |" in md and "| student |" in md
    from prefect.client.orchestration import get_client   # the build's process, for "no zombie runs"
    with get_client(sync_client=True) as client:
        labels = client.read_flow_run(info.id).labels
    assert labels["errata.pid"] == os.getpid() and labels["errata.pid_start"]


def test_failed_build_fails_the_flow_run_with_the_reason_and_publishes_nothing(fake_recipe, data_root, tmp_path):
    from flows.build import build_flow
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "1+1? [gold=2]", "answer": "#### 2"}\nnot json at all\n')
    cfg = fake_recipe(n=2).model_copy(deep=True)
    data = cfg.model_dump(mode="json")
    data["tasks"]["path"] = str(bad)
    state = build_flow(config=data, return_state=True)
    assert state.is_failed()
    assert "InputError" in state.message and "bad.jsonl:2" in state.message
    assert Catalog(str(data_root)).versions("fake") == []


def test_a_stage_over_its_error_budget_fails_the_flow_run_after_that_stage(data_root, tmp_path):
    from flows.build import build_flow
    from tests.unit.test_error_budget import recipe
    cfg = recipe(data_root, tmp_path)
    state = build_flow(config=cfg.model_dump(mode="json"), return_state=True)
    assert state.is_failed()
    assert "stage 'generate'" in state.message and "max_error_fraction 0.5" in state.message
    assert Catalog(str(data_root)).versions("budget") == []
    tasks = _task_runs(state.state_details.flow_run_id)
    assert "generate" in tasks and "verify" not in tasks and "publish" not in tasks   # stopped after the stage


def test_runs_whose_process_is_gone_are_marked_crashed_and_only_those(data_root):
    """A Running run whose recorded process is gone on this host (dead, or its pid now another process) becomes
    Crashed with the reason, its running task runs too; a live one, one on another host and a finished one stay."""
    import dataclasses
    import subprocess
    import sys

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.responses import SetStateStatus
    from prefect.states import Completed, Crashed, Running

    from flows.build import build_flow, stage_task
    from flows.lost_runs import mark_lost_runs, process_identity
    from flows.runs import list_runs, show_run
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    dead = process_identity(child.pid)
    child.kill()
    child.wait()
    me = process_identity()
    cases = {"dead": dead, "live": me, "elsewhere": dataclasses.replace(dead, host="elsewhere"),
             "reused": dataclasses.replace(me, start="ticks:1")}
    ids = {}
    with get_client(sync_client=True) as client:
        for name, who in cases.items():
            fr = client.create_flow_run(build_flow, name=f"zombie-{name}", state=Running())
            client.update_flow_run_labels(fr.id, who.labels())
            ids[name] = str(fr.id)
        task_run = client.create_task_run(stage_task, fr.id, "generate-0", name="generate-0", state=Running())
        ids["unrecorded"] = str(client.create_flow_run(build_flow, name="zombie-unrecorded", state=Running()).id)
        done = client.create_flow_run(build_flow, name="zombie-done", state=Completed())
        client.update_flow_run_labels(done.id, dead.labels())
        # what keeps a run that finishes while it is checked: Prefect does not crash a run in a final state
        assert client.set_flow_run_state(done.id, Crashed(message="x")).status != SetStateStatus.ACCEPT

    notes = []
    assert sorted(mark_lost_runs(log=notes.append)) == sorted([ids["dead"], ids["reused"]])
    assert len(notes) == 2 and "marked Crashed" in notes[0]
    runs = {r.name: r for r in list_runs(limit=50)}
    assert runs["zombie-dead"].state == "Crashed"
    assert runs["zombie-dead"].error == f"build process {dead.pid} on {dead.host} is gone (killed or lost)"
    assert runs["zombie-reused"].state == "Crashed" and f"build process {me.pid} on" in runs["zombie-reused"].error
    # its duration runs to its last sign of life (here: its task run's start), not to when it was found gone
    seen = runs["zombie-reused"].last_seen
    assert seen is not None and runs["zombie-reused"].seconds == (seen - runs["zombie-reused"].started).total_seconds()
    assert {runs[f"zombie-{n}"].state for n in ("live", "elsewhere", "unrecorded")} == {"Running"}
    assert runs["zombie-done"].state == "Completed"
    shown = show_run(ids["reused"])
    assert shown.state == "Crashed" and [(t["name"], t["state"]) for t in shown.tasks] == [("generate-0", "Crashed")]
    assert task_run.id and mark_lost_runs() == []          # once is enough


def _stage_calls(monkeypatch, fail=None):
    """Record (stage, shard id) for every (shard, stage) step that really runs; `fail(calls)` may raise."""
    import pipelines.runner as runner
    real = runner.run_stage_on_shard
    calls = []

    def recording(stage, staging, shard_id, *a, **k):
        if not staging.done(shard_id, stage.name):
            calls.append((stage.name, shard_id))
            if fail is not None:
                fail(calls)
        return real(stage, staging, shard_id, *a, **k)
    monkeypatch.setattr(runner, "run_stage_on_shard", recording)
    return calls


def test_stage_bug_is_not_retried_and_publishes_nothing(fake_recipe, data_root, monkeypatch):
    from flows.build import build_flow

    def bug(calls):
        if calls[-1][0] == "verify":
            raise RuntimeError("a bug in a stage")
    calls = _stage_calls(monkeypatch, bug)
    state = build_flow(config=fake_recipe(n=4).model_dump(mode="json"), return_state=True)
    assert state.is_failed() and "a bug in a stage" in state.message
    assert [c[0] for c in calls] == ["generate", "generate", "verify"]  # not transient: no retry
    tasks = _task_runs(state.state_details.flow_run_id)
    assert tasks["generate"]["state"] == "Completed" and tasks["verify"]["state"] == "Failed"
    assert tasks["verify"]["attempts"] == 1 and "filter" not in tasks and "publish" not in tasks
    assert Catalog(str(data_root)).versions("fake") == []


def test_transient_failure_is_retried_without_duplicating_rows(fake_recipe, data_root, monkeypatch):
    import flows.build as fb

    def flaky(calls):
        gen = [c for c in calls if c[0] == "generate"]
        if calls[-1][0] == "generate" and len(gen) == 2:  # shard 0 is done, then the engine "drops" on shard 1
            raise TransientEngineError("HTTP 503 from the engine (test)")
    calls = _stage_calls(monkeypatch, flaky)
    monkeypatch.setattr(fb, "RETRY_DELAY_SECONDS", 0)
    state = fb.build_flow(config=fake_recipe(n=6, shard_size=2).model_dump(mode="json"), return_state=True)
    assert state.is_completed(), state.message
    # 3 shards; shard 0 finished generate before the failure and is not generated again: 1 + 1 (failed) + 2
    gen = [pid for stage, pid in calls if stage == "generate"]
    assert len(gen) == 4 and gen.count(gen[0]) == 1
    assert [c[0] for c in calls].count("verify") == 3 and [c[0] for c in calls].count("filter") == 3
    tasks = _task_runs(state.state_details.flow_run_id)
    assert tasks["generate"]["attempts"] == 2 and tasks["verify"]["attempts"] == 1
    store = Catalog(str(data_root))
    m = store.manifest("fake")
    ids = _attempt_ids(store, m)
    assert len(ids) == len(set(ids)) == 12 == m.tables["attempts"].rows
    assert m.tables["problems"].rows == 6
    assert m.stages["generate"]["in"] == 6 and m.stages["generate"]["out"] == 12


def test_rerun_after_a_failed_stage_reuses_the_stages_before_it(fake_recipe, data_root, monkeypatch):
    from flows.build import build_flow
    broken = {"on": True}

    def bug(calls):
        if broken["on"] and calls[-1][0] == "filter":
            raise ValueError("filter bug (test)")
    calls = _stage_calls(monkeypatch, bug)
    cfg = fake_recipe(n=4, shard_size=2).model_dump(mode="json")
    first = build_flow(config=cfg, return_state=True)
    assert first.is_failed() and "filter bug" in first.message
    assert [c[0] for c in calls] == ["generate"] * 2 + ["verify"] * 2 + ["filter"]
    broken["on"] = False
    second = build_flow(config=cfg, return_state=True)
    assert second.is_completed(), second.message
    assert [c[0] for c in calls[5:]] == ["filter", "filter"]  # generate and verify are not run again
    tasks = _task_runs(second.state_details.flow_run_id)
    assert tasks["generate"]["state"] == "Cached" and tasks["verify"]["state"] == "Cached"
    assert tasks["filter"]["state"] == "Completed"
    store = Catalog(str(data_root))
    m = store.manifest("fake")
    assert m.tables["attempts"].rows == len(set(_attempt_ids(store, m))) == 8
    assert m.stages["verify"]["in"] == 8 and m.stages["filter"]["in"] == 8


def test_rerun_after_a_failed_publish_reuses_the_cached_stages(fake_recipe, data_root, monkeypatch):
    import flows.build as fb
    real_publish = fb.publish_plan
    calls = _stage_calls(monkeypatch)
    monkeypatch.setattr(fb, "publish_plan", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full (test)")))
    cfg = fake_recipe(n=4, shard_size=2).model_dump(mode="json")
    first = fb.build_flow(config=cfg, return_state=True)
    assert first.is_failed() and "disk full" in first.message
    assert Catalog(str(data_root)).versions("fake") == []
    assert len(calls) == 6  # 3 per-shard stages x 2 shards (dedup is global)

    monkeypatch.setattr(fb, "publish_plan", real_publish)
    second = fb.build_flow(config=cfg, return_state=True)
    assert second.is_completed(), second.message
    assert len(calls) == 6  # nothing recomputed
    tasks = _task_runs(second.state_details.flow_run_id)
    assert [tasks[s]["state"] for s in ("generate", "verify", "filter")] == ["Cached"] * 3
    store = Catalog(str(data_root))
    m = store.manifest("fake")
    assert m.version == 1 and len(set(_attempt_ids(store, m))) == 8 == m.tables["attempts"].rows

    # an identical build after a publish is a new build (staging is gone), not a stale cache hit
    third = fb.build_flow(config=cfg, return_state=True)
    assert third.is_completed() and len(calls) == 12
    assert store.versions("fake") == [1, 2]


def test_the_flow_runs_the_one_build_entry_point_and_plans_once(fake_recipe, data_root, monkeypatch):
    """`errata build` (a flow run) runs pipelines.build.build, the function `errata build --no-prefect` calls; the
    recipe is planned (its staging opened) once, the early engine start included."""
    import flows.build as fb
    from pipelines.staging import Staging
    entered, opened = [], []
    real_build, real_open = fb.build, Staging.open

    def build(config, *a, **k):
        entered.append(config.dataset)
        return real_build(config, *a, **k)

    def open_staging(self, *a, **k):
        opened.append(self.dataset)
        return real_open(self, *a, **k)
    monkeypatch.setattr(fb, "build", build)
    monkeypatch.setattr(Staging, "open", open_staging)
    result = fb.build_flow_run(fake_recipe(n=2), progress=False)
    assert entered == ["fake"] and opened == ["fake"] and result.manifest.tables["problems"].rows == 2


def test_is_transient_sees_through_wrappers():
    from flows.build import is_transient
    try:
        try:
            raise TransientEngineError("429")
        except TransientEngineError as e:
            raise RuntimeError("wrapped by Ray") from e
    except RuntimeError as wrapped:
        assert is_transient(wrapped)
    assert is_transient(ConnectionResetError())
    assert not is_transient(ValueError("bug"))
    from schemas.errors import EngineUnavailable
    try:       # an outage already waited for the engine: its shard fails now, the rerun resumes
        raise EngineUnavailable("down for 600 s") from ConnectionRefusedError()
    except EngineUnavailable as outage:
        assert not is_transient(outage)


# --- export flow ----------------------------------------------------------------------------------------------
def test_export_flow_writes_one_directory_per_version_and_skips_repeats(fake_recipe, data_root, tmp_path):
    from flows.build import build_flow_run
    from flows.export import export_flow
    build_flow_run(fake_recipe(n=6), progress=False)
    out = tmp_path / "exports"
    r = export_flow(ref="fake", format="dpo", out=str(out))
    assert not r.skipped and r.source == "fake@1" and r.rows > 0
    t = pq.read_table(out / "fake-v0001-dpo" / "train-00000-of-00001.parquet")
    assert {"prompt", "chosen", "rejected"} <= set(t.column_names) and t.num_rows == r.rows
    again = export_flow(ref="fake", format="dpo", out=str(out))
    assert again.skipped and again.out_dir == r.out_dir
    state = export_flow(ref="nosuch", format="sft", out=str(out), return_state=True)
    assert state.is_failed() and "nosuch" in state.message


# --- schedules ------------------------------------------------------------------------------------------------
def test_parse_every_and_cron():
    from flows.schedules import check_cron, parse_every
    assert parse_every("90s") == 90 and parse_every("30m") == 1800 and parse_every("6h") == 21600
    assert parse_every("1h30m") == 5400 and parse_every("1d") == 86400 and parse_every("45") == 45
    for bad in ("6q", "", "h", "0s", "-5m"):
        with pytest.raises(ConfigError):
            parse_every(bad)
    check_cron("0 3 * * *")
    check_cron("*/5 * * * 1-5")
    for bad in ("61 * * * *", "0 3 * *", "every day", "0 25 * * *"):
        with pytest.raises(ConfigError):
            check_cron(bad)


def _deployments():
    from prefect.client.orchestration import get_client
    with get_client(sync_client=True) as client:
        return {d.name: d for d in client.read_deployments()}


@pytest.mark.parametrize("data, expect", [
    (dict(name="s1", recipe="demo", cron="0 3 * *"), "invalid cron"),
    (dict(name="s1", recipe="demo", cron="0 3 * * *", every="6h"), "exactly one"),
    (dict(name="s1", recipe="nosuch", every="6h"), "unknown recipe 'nosuch'"),
    (dict(name="s1", recipe="demo", set=["generate.bogus=3"], every="6h"), "unknown key 'generate.bogus'"),
    (dict(name="s1", recipe="demo", set=["generate.n=zero"], every="6h"), "generate.n"),
    (dict(name="s1", recipe="demo", every="soon"), "invalid interval"),
    (dict(name="s1", kind="export", ref="demo", format="dpo", every="1d"), "--out"),
    (dict(name="Bad Name", recipe="demo", every="6h"), "name"),
    (dict(name="s1", recipe="demo", cron="0 3 * * *", timezone="Mars/Olympus"), "time zone"),
])
def test_invalid_schedule_input_registers_nothing(data, expect, data_root):
    from flows.schedules import ScheduleBook, add_schedule
    book = ScheduleBook(str(data_root), repo_file=None)
    with pytest.raises(ConfigError, match=expect.replace("(", r"\(")):
        add_schedule(data, book)
    assert not book.local_file.exists()
    assert "s1" not in _deployments()


def test_schedules_register_pause_resume_remove_on_the_server(data_root, tmp_path):
    from flows.schedules import ScheduleBook, add_schedule, apply_to_server, server_deployment_states
    book = ScheduleBook(str(data_root), repo_file=None)
    spec, on_server = add_schedule(dict(name="nightly-t", recipe="demo", set=["limit=4"], cron="0 3 * * *"), book)
    assert on_server
    exp, _ = add_schedule(dict(name="weekly-t", kind="export", ref="demo", format="dpo", out=str(tmp_path),
                               cron="0 6 * * 1", timezone="Europe/Berlin"), book)
    d = _deployments()
    assert d["nightly-t"].parameters == {"recipe": "demo", "overrides": ["limit=4"]}
    assert not d["nightly-t"].paused and d["weekly-t"].schedules[0].schedule.cron == "0 6 * * 1"
    with pytest.raises(ConfigError, match="exists"):
        add_schedule(dict(name="nightly-t", recipe="demo", every="1h"), book)

    paused = book.set_paused("nightly-t", True)
    apply_to_server(paused, "nightly-t", "pause")
    assert _deployments()["nightly-t"].paused and book.get("nightly-t")[0].paused
    assert server_deployment_states()["nightly-t"]["paused"] is True
    apply_to_server(book.set_paused("nightly-t", False), "nightly-t", "resume")
    assert not _deployments()["nightly-t"].paused

    apply_to_server(book.remove("weekly-t"), "weekly-t", "remove")
    assert "weekly-t" not in _deployments() and [s.name for s, _ in book.all()] == ["nightly-t"]
    with pytest.raises(ConfigError, match="no schedule named"):
        book.remove("weekly-t")


def test_repo_schedules_file_is_valid_and_protected(data_root):
    from flows.schedules import REPO_SCHEDULES, ScheduleBook, load_file
    specs = load_file(REPO_SCHEDULES)
    assert {s.kind for s in specs} == {"build", "export"} and all(s.paused for s in specs)
    book = ScheduleBook(str(data_root))
    name = specs[0].name
    with pytest.raises(ConfigError, match="flows/schedules.yaml"):
        book.remove(name)
    book.set_paused(name, False)
    assert not book.get(name)[0].paused  # recorded locally; the repo file is untouched
    assert load_file(REPO_SCHEDULES)[0].paused


# --- CLI ----------------------------------------------------------------------------------------------------
def test_cli_runs_and_schedule_commands(fake_recipe, data_root, capsys):
    from flows.build import build_flow_run
    from flows.cli import main
    build_flow_run(fake_recipe(n=2), progress=False, recipe="cli-recipe")
    assert main(["runs", "--limit", "5"]) == 0
    out = capsys.readouterr().out
    assert "Completed" in out and "cli-recipe" in out and "fake@" in out
    run_id = out.splitlines()[2].split()[0]
    assert main(["runs", "show", run_id]) == 0
    assert "artifact build-fake" in capsys.readouterr().out
    assert main(["schedule", "add", "x1", "--recipe", "demo", "--set", "nope=1", "--every", "6h"]) == 2
    assert "unknown key 'nope'" in capsys.readouterr().err
    assert main(["schedule", "add", "x1", "--recipe", "demo", "--every", "6h"]) == 0
    assert main(["schedule", "list"]) == 0
    out = capsys.readouterr().out
    assert "x1" in out and "every 6h" in out and "nightly-demo" in out
    assert main(["schedule", "remove", "x1"]) == 0

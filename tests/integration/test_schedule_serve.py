"""`errata serve` for real: a local Prefect server it starts itself, an interval schedule from a YAML file, one
added while it runs, scheduled runs that publish a version and an export, then Ctrl-C and nothing left running."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from conftest import REPO, errata, write_gsm8k_style, write_slow_fake_recipe  # noqa: E402

pytestmark = pytest.mark.integration


def _wait(pred, timeout, what, proc=None, log=None):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"errata serve exited early ({proc.returncode}):\n{log.read_text()[-4000:]}")
        v = pred()
        if v:
            return v
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}:\n{log.read_text()[-4000:] if log else ''}")


def _env(data, home):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(ERRATA_DATA=str(data), PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="90", HF_HUB_OFFLINE="1")
    return env


def _serve(schedules, env, log):
    exe = Path(sys.executable).parent / "errata"
    return subprocess.Popen([str(exe), "serve", "--schedules", str(schedules)], env=env, cwd=REPO,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)


def _tree(pid):
    try:
        return {c.pid for c in psutil.Process(pid).children(recursive=True)}
    except psutil.Error:
        return set()


def _alive(pids):
    out = []
    for p in pids:
        try:
            if psutil.Process(p).status() != psutil.STATUS_ZOMBIE:
                out.append(" ".join(psutil.Process(p).cmdline()))
        except psutil.Error:
            pass
    return out


def test_serve_runs_scheduled_build_and_export_then_stops_cleanly(tmp_path):
    data, home = tmp_path / "data", tmp_path / "prefect"
    tasks = write_gsm8k_style(tmp_path / "tasks.jsonl", 4)
    recipe = tmp_path / "fake.yaml"
    recipe.write_text(f"dataset: sched\ntasks: {{kind: jsonl, path: {tasks}}}\n"
                      "engines: {student: {kind: fake, fake_script: mixed}}\ngenerate: {n: 2, max_tokens: 64}\n"
                      "execution: {runner: local, shard_size: 2}\n")
    schedules = tmp_path / "schedules.yaml"
    schedules.write_text(f"schedules:\n  - name: fast-build\n    recipe: {recipe}\n    every: 10s\n")
    env = _env(data, home)
    log = tmp_path / "serve.log"
    t0 = time.time()
    proc = _serve(schedules, env, log)
    seen: set[int] = set()

    def track():
        try:
            seen.update(c.pid for c in psutil.Process(proc.pid).children(recursive=True))
        except psutil.Error:
            pass

    try:
        info = _wait(lambda: (track(), (home / "errata-server.json").exists()
                              and json.loads((home / "errata-server.json").read_text()))[1],
                     120, "the local Prefect server", proc, log)
        server_up = time.time() - t0
        port = int(info["url"].rsplit(":", 1)[1].split("/")[0])

        def versions():
            track()
            d = data / "datasets" / "sched"
            return d.exists() and sorted(p.name for p in d.iterdir() if (p / "manifest.json").exists())
        _wait(versions, 120, "a scheduled build to publish a version", proc, log)
        first_version = time.time() - t0

        # added while serve runs: picked up without a restart; other commands find serve's server
        out = tmp_path / "exports"
        add = errata("schedule", "add", "fast-export", "--export", "sched", "--format", "sft", "--out", str(out),
                     "--every", "10s", env=env, timeout=120)
        assert "registered on the Prefect server" in add.stdout
        _wait(lambda: (track(), list(out.glob("sched-v*-sft/train-00000-of-00001.parquet")))[1], 90,
              "a scheduled export", proc, log)

        runs = errata("runs", "--limit", "50", env=env, timeout=120).stdout
        assert "build" in runs and "Completed" in runs and "sched@1" in runs and "export" in runs
        listing = errata("schedule", "list", env=env, timeout=120).stdout
        assert "fast-export" in listing and "yes" in listing
    finally:
        track()
        t_stop = time.time()
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            rc = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    stopped = time.time() - t0
    text = log.read_text()
    assert rc == 0, text[-3000:]
    assert time.time() - t_stop < 12, f"stopping took {time.time() - t_stop:.1f} s"
    assert "local Prefect server stopped" in text
    assert not (home / "errata-server.json").exists()
    time.sleep(1)
    assert not _alive(seen), _alive(seen)
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "the Prefect server still listens"
    assert len(seen) >= 2  # the server and at least one flow-run process were tracked
    print(f"\nserver healthy after {server_up:.1f} s, first scheduled version after {first_version:.1f} s, "
          f"stopped cleanly after {stopped:.1f} s")


def test_ctrl_c_with_a_build_in_flight_stops_within_seconds_and_the_build_resumes(tmp_path):
    """A slow scheduled build is running (engine calls take seconds); Ctrl-C ends serve, the run and the server
    within ~10 s, nothing is left running, and the same recipe built again resumes the finished shards."""
    data, home = tmp_path / "data", tmp_path / "prefect"
    recipe = write_slow_fake_recipe(tmp_path, delay_s=4)
    schedules = tmp_path / "schedules.yaml"
    schedules.write_text(f"schedules:\n  - name: slow-build\n    recipe: {recipe}\n    every: 5s\n")
    env, log = _env(data, home), tmp_path / "serve.log"
    proc = _serve(schedules, env, log)
    seen: set[int] = set()
    try:
        def in_flight():
            seen.update(_tree(proc.pid))
            return list(data.glob("staging/slow/*/shards/*/generate/_SUCCESS"))
        _wait(in_flight, 180, "a scheduled build to finish its first shard", proc, log)
    finally:
        seen.update(_tree(proc.pid))
        t0 = time.time()
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    took = time.time() - t0
    text = log.read_text()
    assert rc == 0 and took < 12, (took, text[-3000:])
    assert "stopping" in text and not (home / "errata-server.json").exists()
    time.sleep(1)
    assert not _alive(seen), _alive(seen)
    assert not list(data.glob("datasets/slow/v*/manifest.json")), "the interrupted run published nothing"
    done = len(list(data.glob("staging/slow/*/shards/*/generate/_SUCCESS")))
    r = errata("build", str(recipe), "--no-prefect", "--no-progress", env=env, timeout=600)
    assert "resuming" in r.stderr, r.stderr
    man = json.loads(next(data.glob("datasets/slow/v0001/manifest.json")).read_text())
    assert man["shards"]["resumed"] >= done >= 1 and man["tables"]["attempts"]["rows"] == 16
    print(f"\nstopped {took:.1f} s after Ctrl-C with a build in flight ({done} shard(s) finished before)")


def test_a_killed_serve_leaves_no_prefect_server_behind(tmp_path):
    schedules = tmp_path / "none.yaml"
    schedules.write_text("schedules: []\n")
    data, home = tmp_path / "data", tmp_path / "prefect"
    env, log = _env(data, home), tmp_path / "serve.log"
    proc = _serve(schedules, env, log)
    info = _wait(lambda: (home / "errata-server.json").exists() and json.loads((home / "errata-server.json")
                                                                               .read_text()), 120, "the server",
                 proc, log)
    server_pid = info["server_pid"]
    tree = _tree(proc.pid)
    proc.kill()                 # kill -9: no chance to clean up
    proc.wait(timeout=30)
    _wait(lambda: not _alive(tree | {server_pid}), 30, "the server to die with serve")
    port = int(info["url"].rsplit(":", 1)[1].split("/")[0])
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "the Prefect server still listens"


def test_next_serve_stops_a_stale_server(tmp_path):
    """A server whose serve is gone (recorded in errata-server.json) is stopped by the next serve."""
    from flows.serve import stop_stale_server
    home = tmp_path / "prefect"
    home.mkdir()
    stale = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", "prefect", "server", "start"],
                             start_new_session=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (home / "errata-server.json").write_text(json.dumps({"url": "http://127.0.0.1:1/api", "pid": dead.pid,
                                                        "server_pid": stale.pid}))
    msgs = []
    assert stop_stale_server(home, msgs.append) is True
    assert stale.wait(timeout=10) is not None and "left by an earlier errata serve" in msgs[0]
    assert not (home / "errata-server.json").exists()
    assert stop_stale_server(home, msgs.append) is False    # nothing recorded: nothing to do

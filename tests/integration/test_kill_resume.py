"""kill -9 a real build mid-run, rerun: no row lost, none duplicated, and no partial version ever visible."""
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from pipelines.catalog import Catalog
from tests.conftest import MODELS_DIR, REPO, write_slow_fake_recipe

pytestmark = pytest.mark.integration

N, SAMPLES, SHARD = 24, 2, 2
ARGS = ["build", "demo", "--limit", str(N), "--set", f"generate.n={SAMPLES}", "--set", "generate.max_tokens=96",
        "--set", f"execution.shard_size={SHARD}", "--no-progress"]


def _markers(root: Path) -> int:
    """Shards with finished work: through at least one stage (a stage's `_SUCCESS` checkpoint marker)."""
    return sum(1 for d in (root / "staging").glob("demo/*/shards/*")
               if any(p.parent.name != "input" for p in d.glob("*/_SUCCESS")))


def _kill_tree(pid: int) -> None:
    try:
        procs = psutil.Process(pid).children(recursive=True) + [psutil.Process(pid)]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=30)


@pytest.mark.parametrize("mode,runner", [("prefect", "ray"), ("no-prefect", "ray"), ("prefect", "local")])
def test_kill_9_then_rerun(tmp_path, mode, runner):
    """prefect: stage by stage (killed during generate, checkpoints reused); no-prefect: streaming (shards). On Ray
    and in process (what `runner: auto` picks on a 2-core box)."""
    args = ARGS + ["--runner", runner] + (["--no-prefect"] if mode == "no-prefect" else [])
    root = tmp_path / "data"
    env = dict(os.environ, ERRATA_DATA=str(root), ERRATA_MODELS=str(MODELS_DIR))
    exe = str(Path(sys.executable).parent / "errata")
    store = Catalog(str(root))
    seen_partial, stop = [], threading.Event()

    def watch():  # a reader polling all along: any version it can see must be complete and intact
        while not stop.is_set():
            for v in store.versions("demo"):
                m = store.manifest("demo", v)
                if store.verify_version(m) or m.tables["problems"].rows != N:
                    seen_partial.append(v)
            time.sleep(0.1)
    w = threading.Thread(target=watch, daemon=True)
    w.start()

    p = subprocess.Popen([exe, *args], env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    deadline = time.time() + 400
    while _markers(root) < 2 and time.time() < deadline and p.poll() is None:
        time.sleep(0.2)
    done_at_kill = _markers(root)
    _kill_tree(p.pid)
    os.killpg(p.pid, signal.SIGKILL) if p.poll() is None else None
    p.wait(timeout=60)
    assert 2 <= done_at_kill < N // SHARD, f"kill landed at {done_at_kill} finished shards"
    assert store.versions("demo") == [], "a killed build published nothing"

    r = subprocess.run([exe, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    stop.set()
    w.join()
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming" in r.stdout + r.stderr
    if mode == "prefect":  # the generate task skipped the shards it had finished before the kill
        skipped = re.search(r"generate: (\d+) shard\(s\) run, (\d+) already done", r.stdout + r.stderr)
        assert skipped and int(skipped.group(2)) >= done_at_kill, (r.stdout + r.stderr)[-3000:]
    assert seen_partial == []
    m = store.manifest("demo")
    assert m.version == 1 and m.shards["total"] == N // SHARD and m.shards["resumed"] >= done_at_kill
    problems = store.read_table(m, "problems").to_pylist()
    attempts = store.read_table(m, "attempts").to_pylist()
    errors = store.read_table(m, "errors").to_pylist()
    assert len(problems) == N and len({p["problem_id"] for p in problems}) == N
    assert len({a["attempt_id"] for a in attempts}) == len(attempts)
    for p_ in problems:  # every problem has exactly its n samples (as attempts or error rows), no more, no less
        pid = p_["problem_id"]
        a = sum(1 for x in attempts if x["problem_id"] == pid)
        e = [x for x in errors if x["problem_id"] == pid]
        assert (a == 0 and len(e) == 1 and e[0]["stage"] == "generate") or a + len(e) == SAMPLES, pid
    assert store.verify_version(m) == []


@pytest.mark.parametrize("runner", ["ray", "local"])
def test_sigterm_stops_a_prefect_build_like_ctrl_c_and_leaves_nothing_running(tmp_path, runner):
    """`kill <pid>` (SIGTERM) mid-build: exits as Ctrl-C does (rc 130, the resume hint), stops Prefect's temporary
    server, Ray and the engine (before: Ray's handler aborted the process and left the server and two Ray agents
    running), and the rerun resumes the finished shards."""
    root = tmp_path / "data"
    env = dict(os.environ, ERRATA_DATA=str(root), ERRATA_MODELS=str(MODELS_DIR))
    exe = str(Path(sys.executable).parent / "errata")
    args = [*ARGS, "--runner", runner]
    p = subprocess.Popen([exe, *args], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, start_new_session=True)
    deadline = time.time() + 400
    while _markers(root) < 2 and time.time() < deadline and p.poll() is None:
        time.sleep(0.2)
    kids = psutil.Process(p.pid).children(recursive=True)
    names = " ".join(" ".join(k.cmdline()) for k in kids if k.is_running())
    assert "prefect.server" in names and "VLLM" in names and ("raylet" in names) == (runner == "ray"), names[:2000]
    p.send_signal(signal.SIGTERM)
    t0 = time.time()
    try:
        out, _ = p.communicate(timeout=60)
    finally:
        _kill_tree(p.pid)
    assert time.time() - t0 < 30
    assert p.returncode == 130 and "run the same command again to resume" in out, out[-3000:]
    _, alive = psutil.wait_procs(kids, timeout=15)
    left = [k for k in alive if k.is_running() and k.status() != psutil.STATUS_ZOMBIE]
    assert left == [], [" ".join(k.cmdline())[:120] for k in left]
    r = subprocess.run([exe, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming" in r.stdout + r.stderr
    assert Catalog(str(root)).manifest("demo").shards["resumed"] >= 2


def _slow_fake_build(tmp_path: Path) -> tuple[list[str], dict, Path]:
    """A Prefect build on the scripted fake engine whose calls take seconds: real Prefect, real CLI, no model."""
    recipe = write_slow_fake_recipe(tmp_path, delay_s=3)
    root = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(ERRATA_DATA=str(root), PREFECT_HOME=str(tmp_path / "prefect"))
    exe = str(Path(sys.executable).parent / "errata")
    return [exe, "build", str(recipe), "--no-progress"], env, root


def _start_and_wait_for_a_shard(cmd: list[str], env: dict, root: Path) -> tuple[subprocess.Popen, list]:
    """Start the build in a process group of its own, as a shell runs a foreground command; return it and its
    children once a shard has finished generating (the flow is running, Prefect's server is up)."""
    p = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    deadline = time.time() + 120
    while not list(root.glob("staging/slow/*/shards/*/generate/_SUCCESS")) and time.time() < deadline:
        assert p.poll() is None, p.communicate()[0][-3000:]
        time.sleep(0.2)
    kids = psutil.Process(p.pid).children(recursive=True)
    assert any("uvicorn" in " ".join(k.cmdline()) for k in kids), "Prefect's temporary server is not running"
    return p, kids


def test_ctrl_c_in_a_terminal_stops_a_prefect_build_at_once(tmp_path):
    """A terminal's Ctrl-C goes to the whole foreground process group. Prefect's temporary server used to be in it:
    it died at once, and the build spent over a minute failing to report its crash to it (78 s on the real model,
    138 s here), then exited with rc 1 and Prefect's 'Error logging to API'. Now the server is apart: the build stops within seconds, says
    how to resume, leaves nothing running, and the rerun resumes."""
    cmd, env, root = _slow_fake_build(tmp_path)
    p, kids = _start_and_wait_for_a_shard(cmd, env, root)
    server = [k for k in kids if "uvicorn" in " ".join(k.cmdline())]
    # what decides it: the terminal's signal cannot reach the server
    assert [os.getpgid(k.pid) for k in server] != [os.getpgid(p.pid)], "the server is in the build's process group"
    t0 = time.time()
    os.killpg(p.pid, signal.SIGINT)
    try:
        out, _ = p.communicate(timeout=90)
    finally:
        _kill_tree(p.pid)
    took = time.time() - t0
    assert p.returncode == 130 and "run the same command again to resume" in out, out[-3000:]
    assert "Error logging to API" not in out and took < 20, (took, out[-3000:])
    _, alive = psutil.wait_procs(kids, timeout=15)
    assert [k for k in alive if k.is_running() and k.status() != psutil.STATUS_ZOMBIE] == []
    r = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "resuming" in r.stdout + r.stderr, r.stderr[-3000:]



def _generated(root: Path) -> int:
    return len(list(root.glob("staging/slow/*/shards/*/generate/_SUCCESS")))


def test_killed_prefect_builds_show_as_crashed_not_running(tmp_path):
    """Three Prefect builds killed with kill -9 (the build's process group, as a crash or a lost machine leaves
    them) are listed as Crashed, with the reason, not as Running forever; the rerun completes and resumes. Each
    next build marks the run killed before it (its flow checks at its start), `errata runs` the last one."""
    cmd, env, root = _slow_fake_build(tmp_path)
    cmd += ["--set", "execution.shards_in_flight=1", "--set", "engines.student.fake_delay_s=1"]   # a shard at a time
    killed = []
    for i in range(3):
        before = _generated(root)
        log = tmp_path / f"build-{i}.out"
        with open(log, "w") as out:
            p = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 120
        while _generated(root) <= before and time.time() < deadline:   # a new shard: the flow body is running
            assert p.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
        kids = psutil.Process(p.pid).children(recursive=True)
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
        killed.append(p.pid)
        psutil.wait_procs(kids, timeout=15)    # its temporary server follows it (PR_SET_PDEATHSIG)
    runs_cmd = [cmd[0], "runs", "--limit", "10"]
    r = subprocess.run(runs_cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    # the first two were marked by the builds after them, the third (which no later build saw) by `errata runs`
    assert r.stderr.count("marked Crashed") == 1 and f"build process {killed[2]} on" in r.stderr, r.stderr[-3000:]
    rows = [line.split() for line in r.stdout.splitlines()[2:] if line.strip()]
    assert [row[2] for row in rows] == ["Crashed"] * 3, r.stdout
    assert "Running" not in r.stdout and r.stdout.count("gone (killed or lost)") == 3, r.stdout
    shown = subprocess.run([cmd[0], "runs", "show", rows[0][0]], env=env, cwd=REPO, capture_output=True,
                           text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert "state     Crashed" in shown.stdout and f"build process {killed[2]} on" in shown.stdout, shown.stdout
    assert "last seen" in shown.stdout, shown.stdout
    assert not re.search(r"^  generate\S*\s+Running", shown.stdout, re.M), shown.stdout

    rerun = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0 and "resuming" in rerun.stdout + rerun.stderr, rerun.stderr[-3000:]
    r = subprocess.run(runs_cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    states = [line.split()[2] for line in r.stdout.splitlines()[2:] if line.strip()]
    assert states == ["Completed", "Crashed", "Crashed", "Crashed"], r.stdout

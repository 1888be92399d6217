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
from conftest import REPO, errata, write_gsm8k_style  # noqa: E402

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


def test_serve_runs_scheduled_build_and_export_then_stops_cleanly(tmp_path):
    data, home = tmp_path / "data", tmp_path / "prefect"
    tasks = write_gsm8k_style(tmp_path / "tasks.jsonl", 4)
    recipe = tmp_path / "fake.yaml"
    recipe.write_text(f"dataset: sched\ntasks: {{kind: jsonl, path: {tasks}}}\n"
                      "engine: {kind: fake, fake_script: mixed}\nsampling: {n: 2, max_tokens: 64}\n"
                      "execution: {runner: local, shard_size: 2}\n")
    schedules = tmp_path / "schedules.yaml"
    schedules.write_text(f"schedules:\n  - name: fast-build\n    recipe: {recipe}\n    every: 10s\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(ERRATA_DATA=str(data), PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="90", HF_HUB_OFFLINE="1")
    log = tmp_path / "serve.log"
    exe = Path(sys.executable).parent / "errata"
    t0 = time.time()
    proc = subprocess.Popen([str(exe), "serve", "--schedules", str(schedules)], env=env, cwd=REPO,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)
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
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            rc = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    stopped = time.time() - t0
    text = log.read_text()
    assert rc == 0, text[-3000:]
    assert "local Prefect server stopped" in text
    assert not (home / "errata-server.json").exists()
    time.sleep(1)
    alive = [p for p in seen if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not alive, [" ".join(psutil.Process(p).cmdline()) for p in alive]
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "the Prefect server still listens"
    assert len(seen) >= 2  # the server and at least one flow-run process were tracked
    print(f"\nserver healthy after {server_up:.1f} s, first scheduled version after {first_version:.1f} s, "
          f"stopped cleanly after {stopped:.1f} s")

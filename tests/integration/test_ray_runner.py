"""The Ray Data runner gives the same rows as the in-process runner (scripted fake engine, real local Ray)."""
import pytest

from pipelines.build import build
from pipelines.storage import Store

pytestmark = pytest.mark.integration

SAME = ("attempt_id", "problem_id", "sample_index", "completion", "final_answer", "is_correct", "drop_reason")


def test_ray_and_local_runners_agree(fake_recipe, data_root):
    local = build(fake_recipe(n=6, n_samples=3, shard_size=2, runner="local"), progress=False).manifest
    on_ray = build(fake_recipe(n=6, n_samples=3, shard_size=2, runner="ray"), progress=False).manifest
    store = Store(str(data_root))
    rows = {}
    for m in (local, on_ray):
        t = store.read_table(m, "attempts").to_pylist()
        rows[m.version] = sorted(tuple(r[c] for c in SAME) for r in t)
    assert len(rows[1]) == 18 and rows[1] == rows[2]
    strip = lambda s: {k: {c: v for c, v in d.items() if c != "seconds"} for k, d in s.items()}
    assert strip(local.stages) == strip(on_ray.stages)
    assert {t: e.rows for t, e in local.tables.items()} == {t: e.rows for t, e in on_ray.tables.items()}


def test_stage_by_stage_on_ray_matches_local(fake_recipe, data_root):
    """The Prefect flow's path (one Ray Data run per stage, checkpoints between) on real local Ray."""
    import ray

    import pipelines.build as pb
    local = build(fake_recipe(n=6, n_samples=3, shard_size=2, runner="local"), progress=False).manifest
    cfg = fake_recipe(n=6, n_samples=3, shard_size=2, runner="ray")
    plan = pb.plan_build(cfg, log=lambda s: None)
    out = [pb.run_stage(plan, name, progress=False, log=lambda s: None) for name in pb.stage_names(cfg)]
    assert not ray.is_initialized()  # each stage's run started its own local Ray and stopped it
    staged = pb.publish(plan, pb.write_shards(plan))
    assert [o["shards_run"] for o in out] == [3, 3, 3]
    store = Store(str(data_root))
    rows = [sorted(tuple(r[c] for c in SAME) for r in store.read_table(m, "attempts").to_pylist())
            for m in (local, staged)]
    assert len(rows[0]) == 18 and rows[0] == rows[1]
    strip = lambda s: {k: {c: v for c, v in d.items() if c != "seconds"} for k, d in s.items()}
    assert strip(local.stages) == strip(staged.stages)


def test_build_on_a_ray_cluster_by_address(fake_recipe, data_root):
    """`--ray-address`: a real head node (`ray start --head --block`), the build connects to it; then the head's
    process group alone is stopped (other Ray instances on the machine are left alone)."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import tempfile
    import time
    from pathlib import Path

    import ray as ray_mod

    from flows.cli import main
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    env = dict(os.environ, RAY_AUTH_MODE="token")
    head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
                             f"--port={port}", "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats",
                             f"--temp-dir={temp}"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    os.environ["RAY_AUTH_MODE"] = "token"
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        cfg = fake_recipe(n=4, n_samples=2, shard_size=2, runner="ray")
        code = main(["build", "demo", "--no-prefect", "--no-progress", "--ray-address", f"127.0.0.1:{port}",
                     "--set", "tasks.kind=jsonl", "--set", f"tasks.path={cfg.tasks.path}", "--set",
                     "engine.kind=fake", "--set", "sampling.n=2"])
        assert code == 0
        m = Store(str(data_root)).manifest("demo")
        assert m.tables["attempts"].rows == 8 and m.recipe["execution"]["ray_address"] == f"127.0.0.1:{port}"
    finally:
        os.environ.pop("RAY_AUTH_MODE", None)
        ray_mod.shutdown()
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)

"""Environment speed: env steps/s, resets/s and snapshot+restore/s per env, plus the asyncio episode runner's
own overhead (an instant scripted policy); and the rollout stage on the real embedded model: episodes/minute with
N episodes in flight against one engine vs one episode at a time on the same engine (--rollouts; needs the model).

Each env replays gold plans (planner / TWX gold path) over many tasks, so every step is a real, valid step; an
"invalid" figure times steps that fail (bad counts, unknown items). Writes bench/results/envs.json.

    .venv/bin/python bench/envs.py [--textcraft DIR] [--tasks 200] [--twx-tasks 30]
    .venv/bin/python bench/envs.py --rollouts [--rollout-tasks 16] [--concurrency 16]   # real model, minutes

--textcraft points at a directory of TextCraft-format recipe JSON files (e.g. ../shared/data/textcraft/recipes);
without it that row is skipped. TWX rows need java and textworld-express.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from stages.agents.episodes import run_episodes  # noqa: E402
from stages.envs import make_env  # noqa: E402


def machine() -> dict:
    cpu = ""
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    java = None
    if shutil.which("java"):
        out = subprocess.run(["java", "-version"], capture_output=True, text=True)
        java = (out.stderr or out.stdout).splitlines()[0] if (out.stderr or out.stdout) else None
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
            "cpu_count": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2), "java": java}


def bench_steps(env, tasks, invalid_actions=()) -> dict:
    """Gold plans replayed over `tasks`: step time only (plans and resets timed apart)."""
    plans = [[a for _, a in env.gold_plan(t)] for t in tasks]
    t0 = time.perf_counter()
    for t in tasks:
        env.reset(t)
    reset_s = time.perf_counter() - t0
    steps, step_s, solved = 0, 0.0, 0
    for t, plan in zip(tasks, plans):
        env.reset(t)
        t1 = time.perf_counter()
        for a in plan:
            _, r, done, info = env.step(a)
        step_s += time.perf_counter() - t1
        steps += len(plan)
        solved += bool(done and info.get("success"))
    row = {"tasks": len(tasks), "steps": steps, "solved": solved, "steps_per_s": round(steps / step_s, 1),
           "mean_step_ms": round(1000 * step_s / steps, 4), "resets_per_s": round(len(tasks) / reset_s, 1),
           "mean_plan_len": round(steps / len(tasks), 2)}
    if invalid_actions:
        env.reset(tasks[0])
        t1 = time.perf_counter()
        for a in invalid_actions:
            env.step(a)
        row["invalid_steps_per_s"] = round(len(invalid_actions) / (time.perf_counter() - t1), 1)
    if env.can_snapshot:
        env.reset(tasks[0])
        n = 20000
        t1 = time.perf_counter()
        for _ in range(n):
            env.restore(env.snapshot())
        row["snapshot_restore_per_s"] = round(n / (time.perf_counter() - t1), 1)
    return row


def bench_craft(config: dict, n_tasks: int) -> dict:
    env = make_env("craft", config)
    t0 = time.perf_counter()
    env.setup()
    setup_s = time.perf_counter() - t0
    tasks = env.tasks("train", n_tasks) + env.tasks("test", max(1, n_tasks // 4))
    bad = ["craft 9 nothing using 1 air", "get 1 " + next(iter(env.world.by_output)), "jump", "get 2 unobtainium"]
    row = bench_steps(env, tasks, bad * 500)
    row.update({"setup_s": round(setup_s, 3), "world_id": env.world.world_id, "recipes": len(env.world.recipes),
                "goals": len(env.world.goals(1))})
    return row


def bench_twx(game: str, params: str, n_tasks: int) -> dict:
    env = make_env("twx", {"game": game, "game_params": params})
    try:
        t0 = time.perf_counter()
        env.setup()
        setup_s = time.perf_counter() - t0
        tasks = env.tasks("train", n_tasks)
        env.reset(tasks[0])                                     # JIT warm-up out of the timing
        row = bench_steps(env, tasks, ["dance wildly"] * 200)
        row.update({"setup_s": round(setup_s, 3), "game_params": params})
        return row
    finally:
        env.close()


def bench_runner(config: dict, n_tasks: int, concurrency: int) -> dict:
    """Steps/s through run_episodes (reset/step in each env's thread, instant policy playing the gold plan):
    the runner's own cost per step, thread start-up of the pool included."""
    env = make_env("craft", config)
    tasks = env.tasks("train", n_tasks)
    plans = {env.reset(t)[0]: [a for _, a in env.gold_plan(t)] for t in tasks}   # keyed by first observation
    async def policy(messages):
        k = (len(messages) - 3) // 2                      # turns so far (no trimming here)
        return f"Thought: next\nAction: {plans[messages[2]['content']][k]}"

    t0 = time.perf_counter()
    trajs = asyncio.run(run_episodes(tasks, policy, env_factory=lambda: make_env("craft", config),
                                     concurrency=concurrency, max_steps=200))
    secs = time.perf_counter() - t0
    steps = sum(t["n_steps"] for t in trajs)
    return {"episodes": len(trajs), "steps": steps, "solved": sum(t["success"] for t in trajs),
            "concurrency": concurrency, "steps_per_s": round(steps / secs, 1),
            "episodes_per_s": round(len(trajs) / secs, 1)}


def start_embedded_policy():
    """The embedded model as role `policy` on in-process engines, started and warmed up: (engines, its
    EngineConfig, what the start described, start seconds). The caller stops the engines."""
    from pipelines.files import Root
    from stages.engines.base import GenerationRequest, SamplingParams
    from stages.engines.config import EngineConfig
    from stages.engines.host import LocalEngines

    models_dir = os.environ.get("ERRATA_MODELS") or Root(str(REPO / "data")).models_dir
    engine = EngineConfig(kind="vllm", model="embedded")
    engines = LocalEngines({"policy": engine}, models_dir)
    t0 = time.perf_counter()
    described = engines.start()
    start_s = time.perf_counter() - t0
    engines.client("policy").generate([GenerationRequest(messages=[{"role": "user", "content": "Say hi."}],
                                                         sampling=SamplingParams(max_tokens=8))])   # warm-up
    return engines, engine, described, start_s


def bench_rollouts(n_tasks: int, concurrency: int, max_steps: int, max_tokens: int, serial_tasks: int) -> dict:
    """The rollout stage on the embedded model (vLLM, one engine started once): `n_tasks` craft tasks with
    `concurrency` episodes in flight, then `serial_tasks` other tasks of the same world one episode at a time
    (episodes/minute is a rate, so the slow serial run may use fewer tasks). Disjoint task sets, so the second run
    gets no prefix-cache hits from the first; the engine is warmed up before either."""
    from pipelines.methods.agent_rollout.rollout_stages import RolloutConfig, RolloutStage
    from stages.base import StageContext
    from stages.envs.spec import EnvSpec
    from stages.tasks import env_problems

    spec = EnvSpec(kind="craft", config={"generate": {"seed": 0, "depth": 3}, "max_goal_depth": 2,
                                         "distractors": 4})
    problems = env_problems(spec, "train", n_tasks + serial_tasks)
    engines, engine, described, start_s = start_embedded_policy()
    rows = {}
    try:
        for label, conc, chunk in (("concurrent", concurrency, problems[:n_tasks]),
                                   ("one_at_a_time", 1, problems[n_tasks:n_tasks + serial_tasks])):
            cfg = RolloutConfig(max_steps=max_steps, max_tokens=max_tokens, concurrency=conc, temperature=0.7)
            st = RolloutStage(cfg, name=f"rollout_{label}", context=StageContext(engines={"policy": engine}))
            st.setup(engines)
            t1 = time.perf_counter()
            res = st.run({"problems": chunk})
            secs = time.perf_counter() - t1
            traj = res.tables["trajectories"]
            turns = sum(t["n_steps"] for t in traj)
            rows[label] = {"concurrency": conc, "episodes": len(traj), "errors": len(res.errors),
                           "turns": turns, "mean_turns_per_episode": round(turns / max(1, len(traj)), 2),
                           "solved": sum(t["success"] for t in traj), "seconds": round(secs, 1),
                           "episodes_per_minute": round(60 * len(traj) / secs, 2),
                           "turns_per_minute": round(60 * turns / secs, 1),
                           "completion_tokens": res.stats.completion_tokens,
                           "output_tokens_per_s": round(res.stats.completion_tokens / secs, 1),
                           "unparsed_turns": res.stats.counts.get("unparsed", 0)}
            print("rollouts", label, rows[label], flush=True)
    finally:
        engines.stop()
    (eng,) = described.values()
    return {"model": engine.label(), "engine": {k: eng.get(k) for k in ("kind", "dtype", "max_num_seqs")},
            "engine_start_s": round(start_s, 1), "env": spec.as_dict(), "tasks_concurrent_run": n_tasks,
            "tasks_serial_run": serial_tasks,
            "max_steps": max_steps, "max_tokens": max_tokens, **rows,
            "speedup_episodes_per_minute": round(rows["concurrent"]["episodes_per_minute"]
                                                 / rows["one_at_a_time"]["episodes_per_minute"], 2),
            "speedup_turns_per_minute": round(rows["concurrent"]["turns_per_minute"]
                                              / rows["one_at_a_time"]["turns_per_minute"], 2),
            "target": ">= 5x episodes/minute with N concurrent episodes vs one at a time, same engine"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--textcraft", help="directory of TextCraft-format recipe JSON files")
    ap.add_argument("--tasks", type=int, default=200, help="craft tasks per world")
    ap.add_argument("--twx-tasks", type=int, default=30, help="TWX games per game type")
    ap.add_argument("--rollouts", action="store_true", help="also time the rollout stage on the embedded model")
    ap.add_argument("--only-rollouts", action="store_true", help="only the rollout stage (merged into --out)")
    ap.add_argument("--rollout-tasks", type=int, default=64, help="craft tasks of the concurrent rollout run")
    ap.add_argument("--serial-tasks", type=int, default=8, help="craft tasks of the one-at-a-time rollout run")
    ap.add_argument("--concurrency", type=int, default=64,
                    help="episodes in flight in the concurrent run (the engine batches up to max_num_seqs=64)")
    ap.add_argument("--max-steps", type=int, default=6, help="turns per episode at most")
    ap.add_argument("--max-tokens", type=int, default=64, help="new tokens per turn at most")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "envs.json"))
    args = ap.parse_args()
    if args.only_rollouts:
        out = Path(args.out)
        results = json.loads(out.read_text()) if out.exists() else {}
        results["rollouts"] = {"when": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                               "machine": machine(), **bench_rollouts(args.rollout_tasks, args.concurrency,
                                                                      args.max_steps, args.max_tokens,
                                                                      args.serial_tasks)}
        _write(out, results)
        return

    results: dict = {"benchmark": "environment steps/s (gold plans replayed), no model",
                     "when": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                     "machine": machine(), "envs": {}}
    gen = {"generate": {"seed": 0, "depth": 4, "items_per_level": 10}}
    results["envs"]["craft_generated"] = {"config": gen, **bench_craft(gen, args.tasks)}
    print("craft generated", results["envs"]["craft_generated"], flush=True)
    if args.textcraft:
        tc = {"recipes_dir": str(Path(args.textcraft).resolve())}
        row = bench_craft(tc, args.tasks)
        results["envs"]["craft_textcraft"] = {"recipes_dir": args.textcraft, **row}
        print("craft textcraft", row, flush=True)
    try:
        import textworld_express  # noqa: F401
        have_twx = shutil.which("java") is not None
    except ImportError:
        have_twx = False
    if have_twx:
        from importlib import metadata
        results["textworld_express"] = metadata.version("textworld-express")
        for game, params in (("coin", "numLocations=5,includeDoors=1"),
                             ("cookingworld", "numLocations=3,numIngredients=2,numDistractorItems=2,includeDoors=1")):
            row = bench_twx(game, params, args.twx_tasks)
            results["envs"][f"twx_{game}"] = row
            print("twx", game, row, flush=True)
    else:
        results["envs"]["twx"] = "skipped: java or textworld-express missing"
    results["runner"] = {"craft_generated": bench_runner(gen, 256, 16)}
    print("runner", results["runner"], flush=True)
    if args.rollouts:
        results["rollouts"] = bench_rollouts(args.rollout_tasks, args.concurrency, args.max_steps, args.max_tokens,
                                             args.serial_tasks)
    _write(Path(args.out), results)


def _write(out: Path, results: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

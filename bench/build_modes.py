"""Whole builds, as a user runs them, in both execution modes, with the default runner (`execution.runner: auto`:
in process on a CPU-only box of 2 cores or fewer, Ray otherwise; each build's record says which ran):

- `prefect`: `errata build` (a Prefect flow, one task per stage, the engines kept for the whole run)
- `streaming`: `errata build --no-prefect` (every shard flows through the stages; on Ray, one Ray Data run per
  segment)
- `ray`, `prefect_ray` (the same on Ray whatever the box) and `local`, `prefect_local` (in process)

Two measurements (each build is the `errata` CLI in its own process with a fresh data root, so each pays its own
start-up: Prefect's temporary server, Ray, the engine):

1. `stages`: the `self_correct` recipe, three LLM stages on one model (generate -> self_check -> retry): the
   manifest's engine record must show one engine start per build in both modes, with the default runner and on Ray.
2. `e2e`: 1,024 sampled sequences (the demo recipe with 256 problems x 4 samples) against one raw vLLM process
   doing the same requests (`LLM.chat`, same prompts, sampling and dtype, engine start included). Target: build wall
   time <= 1.1 x raw (>= 0.9 x its throughput). The box's speed drifts (other tenants), so the raw process runs
   before the first build and again after each build: each build is compared with the mean of the raw runs just
   before and after it (`wall_over_raw`); the ratio to the mean of all raw runs and the drift are reported too.
   `--modes ray,prefect_ray` measures both modes on Ray, `--modes local,prefect_local` in process, whatever the
   box. Modes other than the default two are reported under `e2e_<modes>`.
   `--reserved-cpus 1` keeps one core out of the engine's compute threads, in the raw process and in the builds
   alike (vLLM's VLLM_CPU_NUM_OF_RESERVED_CPU; errata's default is 0): the engine then does not share its cores with
   Ray's and errata's processes, as on a GPU box. Reported under `e2e_reserved_cpus_N`.

Writes bench/results/build_modes.json.

    .venv/bin/python bench/build_modes.py                    # both measurements
    .venv/bin/python bench/build_modes.py --what stages
    .venv/bin/python bench/build_modes.py --what e2e --problems 64   # a smaller end-to-end run
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "build_modes.json"
MODES = {"prefect": [], "streaming": ["--no-prefect"],        # the defaults (execution.runner: auto)
         "ray": ["--no-prefect", "--set", "execution.runner=ray"],      # streaming on Ray, whatever the box
         "prefect_ray": ["--set", "execution.runner=ray"],              # a Prefect flow, stages on Ray
         "local": ["--no-prefect", "--set", "execution.runner=local"],   # in process, no Ray
         "prefect_local": ["--set", "execution.runner=local"]}           # a Prefect flow, stages in process
sys.path.insert(0, str(REPO / "bench"))
from generation import machine  # noqa: E402


def run_build(mode: str, recipe: str, sets: list[str]) -> dict:
    exe = str(Path(sys.executable).parent / "errata")
    with tempfile.TemporaryDirectory(prefix=f"errata-bench-{mode}-") as root:
        env = dict(os.environ, ERRATA_DATA=root,
                   ERRATA_MODELS=os.environ.get("ERRATA_MODELS", str(REPO / "data" / "models")))
        cmd = [exe, "build", recipe, "--no-progress", *MODES[mode]]
        for s in sets:
            cmd += ["--set", s]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            raise SystemExit(f"{mode} build failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
        dataset = next(Path(root, "datasets").iterdir())
        manifest = json.loads(sorted(dataset.glob("v*/manifest.json"))[-1].read_text())
    llm = [k for k, v in manifest["stages"].items() if v.get("completion_tokens")]
    return {"mode": mode, "recipe": recipe, "overrides": sets, "wall_seconds": round(wall, 1),
            "runner": manifest.get("execution", {}).get("runner"),
            "build_seconds": manifest["timings"]["build_seconds"],
            "stage_seconds": {k: v.get("wall_seconds", v.get("seconds")) for k, v in manifest["stages"].items()},
            "llm_stages": llm, "completion_tokens": manifest["tokens"].get("completion"),
            "engines": {k: {"roles": e.get("roles"), "starts": e.get("starts"), "dtype": e.get("dtype"),
                            "start_seconds": e.get("start_seconds"), "batch": e.get("batch")}
                        for k, e in manifest["engines"].items()},
            "engine_starts": sum(e.get("starts", 0) for e in manifest["engines"].values()),
            "rows": {t: e["rows"] for t, e in manifest["tables"].items()},
            "error_reasons": {k: v.get("error_reasons") for k, v in manifest["stages"].items() if v.get("errors")}}


RAW = r"""
import json, os, sys, time
t0 = time.perf_counter()
sys.path.insert(0, {repo!r})
os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0"); os.environ.setdefault("HF_HUB_OFFLINE", "1")
from stages.arithmetic import builtin_problems
from stages.engines.hardware import choose_dtype, default_memory_utilization, detect_device
from stages.engines.model_prep import ensure_embedded_model
from stages.prompts import load_template
from vllm import LLM, SamplingParams
dev = detect_device(); dtype = choose_dtype("auto", dev).dtype
tmpl = load_template("math_step_by_step")
msgs = [[{{"role": "user", "content": tmpl.render(question=p["question"])}}] for p in builtin_problems({problems}, 0)]
llm = LLM(model=str(ensure_embedded_model({models!r})), dtype=dtype, max_model_len=2048, max_num_seqs=64,
          gpu_memory_utilization=default_memory_utilization(dtype, dev), enforce_eager=True,
          enable_prefix_caching=True, seed=0)
t1 = time.perf_counter()
outs = llm.chat(msgs, SamplingParams(temperature=0.7, max_tokens=256, n={n}), use_tqdm=False)
t2 = time.perf_counter()
tokens = sum(len(o.token_ids) for r in outs for o in r.outputs)
print("RESULT " + json.dumps({{"engine_start_s": round(t1 - t0, 1), "generation_s": round(t2 - t1, 1),
                               "completion_tokens": tokens, "sequences": sum(len(r.outputs) for r in outs),
                               "dtype": dtype}}), flush=True)
"""


def run_raw(problems: int, n: int) -> dict:
    code = RAW.format(repo=str(REPO), problems=problems, n=n, models=str(REPO / "data" / "models"))
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    line = next((ln for ln in (p.stdout + p.stderr).splitlines() if ln.startswith("RESULT ")), None)
    if p.returncode != 0 or line is None:
        raise SystemExit(f"raw run failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return dict(json.loads(line[len("RESULT "):]), mode="raw", wall_seconds=round(wall, 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--what", choices=["stages", "e2e", "all"], default="all")
    ap.add_argument("--problems", type=int, default=256, help="e2e: problems (x 4 samples each)")
    ap.add_argument("--stages-problems", type=int, default=16, help="stages: problems of the self_correct build")
    ap.add_argument("--modes", default="streaming,prefect",
                    help="e2e: comma-separated build modes, of: " + ", ".join(MODES))
    ap.add_argument("--repeat", type=int, default=1, help="e2e: run the list of modes this many times (the "
                                                          "second run of a mode is reported as MODE#2)")
    ap.add_argument("--reserved-cpus", type=int, default=None,
                    help="e2e: cores vLLM keeps out of its compute threads, raw and builds alike (default: errata's, 0)")
    args = ap.parse_args()
    e2e_key = "e2e"
    if args.reserved_cpus is not None:   # inherited by the raw process and every build (errata only sets a default)
        os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(args.reserved_cpus)
        e2e_key = f"e2e_reserved_cpus_{args.reserved_cpus}"
    report: dict = {"what": "errata build: Prefect stage-by-stage vs --no-prefect streaming; three LLM stages on one "
                            "engine; end to end vs one raw vLLM process",
                    "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    if RESULTS.exists():    # keep the other measurement's last result
        old = json.loads(RESULTS.read_text())
        report.update({k: v for k, v in old.items() if k == "stages" or k.startswith("e2e")})
    if args.what in ("stages", "all"):
        runs = []
        for mode in ("prefect", "streaming", "prefect_ray", "ray"):   # the defaults, then on Ray whatever the box
            r = run_build(mode, "self_correct", [f"tasks.count={args.stages_problems}"])
            print(json.dumps(r), flush=True)
            runs.append(r)
        report["stages"] = {"recipe": "self_correct", "llm_stages": runs[0]["llm_stages"],
                            "engine_starts": {r["mode"]: r["engine_starts"] for r in runs},
                            "one_engine_start_per_build": all(r["engine_starts"] == 1 for r in runs), "runs": runs}
    if args.what in ("e2e", "all"):
        sets = [f"tasks.count={args.problems}", "generate.n=4", "execution.shard_size=16"]
        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        if modes != ["streaming", "prefect"]:
            e2e_key += "_" + "_".join(modes)
        if bad := [m for m in modes if m not in MODES]:
            raise SystemExit(f"unknown mode(s) {bad}; choose from {sorted(MODES)}")
        # raw, build, raw, build, ..., raw: the box's speed drifts (other tenants), so each build is compared
        # with the mean of the raw runs just before and after it
        raws = [dict(run_raw(args.problems, 4), mode="raw")]
        print(json.dumps(raws[-1]), flush=True)
        builds = []
        for mode in modes * max(1, args.repeat):
            r = run_build(mode, "demo", sets)
            print(json.dumps(r), flush=True)
            builds.append(r)
            raws.append(dict(run_raw(args.problems, 4), mode="raw"))
            print(json.dumps(raws[-1]), flush=True)
        runs = [raws[0]]
        for b, after in zip(builds, raws[1:]):
            runs += [b, after]
        raw_wall = sum(r["wall_seconds"] for r in raws) / len(raws)
        raw_tps = sum(r["completion_tokens"] for r in raws) / len(raws) / raw_wall
        e2e = {"sequences": args.problems * 4, "raw": raws[0], "raw_after": raws[-1],
               "raw_wall_seconds": [r["wall_seconds"] for r in raws],
               "raw_wall_seconds_mean": round(raw_wall, 1),
               "raw_drift": round(max(r["wall_seconds"] for r in raws) / min(r["wall_seconds"] for r in raws), 3),
               "builds": {}}
        for i, r in enumerate(builds):
            near = raws[i:i + 2]      # the raw runs just before and after this build
            near_wall = sum(x["wall_seconds"] for x in near) / 2
            near_tps = sum(x["completion_tokens"] for x in near) / 2 / near_wall
            tps = r["completion_tokens"] / r["wall_seconds"]
            k = 1 + sum(1 for b in builds[:i] if b["mode"] == r["mode"])
            e2e["builds"][r["mode"] if k == 1 else f"{r['mode']}#{k}"] = {
                "wall_seconds": r["wall_seconds"], "raw_wall_seconds_around": [x["wall_seconds"] for x in near],
                "wall_over_raw": round(r["wall_seconds"] / near_wall, 3),
                "end_to_end_tokens_per_s": round(tps, 1), "throughput_over_raw": round(tps / near_tps, 3),
                "wall_over_raw_mean": round(r["wall_seconds"] / raw_wall, 3),
                "generate_seconds": r["stage_seconds"].get("generate"),
                "generate_tokens_per_s": round(r["completion_tokens"] / r["stage_seconds"]["generate"], 1),
                "raw_generate_tokens_per_s_around": [round(x["completion_tokens"] / x["generation_s"], 1)
                                                     for x in near],
                "engine_starts": r["engine_starts"], "runner": r["runner"],
                "engine_batch": [e.get("batch") for e in r["engines"].values()]}
        e2e["raw_end_to_end_tokens_per_s"] = round(raw_tps, 1)
        e2e["target"] = "build wall <= 1.1 x raw (throughput >= 0.9 x raw)"
        e2e["reserved_cpus"] = int(os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU", "0"))
        e2e["date"] = report["date"]
        e2e["runs"] = runs
        report[e2e_key] = e2e
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    for k in ("stages", e2e_key):
        if k in report:
            print(k, json.dumps({kk: v for kk, v in report[k].items() if kk != "runs"}, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

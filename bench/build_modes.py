"""End-to-end build time of the two execution modes on the same recipe:

- `prefect`: `errata build` (a Prefect flow, one task and one Ray Data run per stage, checkpoints between stages)
- `streaming`: `errata build --no-prefect` (one Ray Data run; every shard flows through all stages)

Each build runs as the `errata` CLI in its own process with a fresh data root, so each pays its own start-up
(Prefect's temporary server, Ray, the vLLM engine) as a user would. Modes alternate which goes first across
repeats. Reports the wall time of the command, the build time the manifest records, and per-stage seconds.
Writes bench/results/build_modes.json.

    .venv/bin/python bench/build_modes.py                      # the demo recipe, 1 repeat
    .venv/bin/python bench/build_modes.py --repeats 2 --set limit=32
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "build_modes.json"
MODES = {"prefect": [], "streaming": ["--no-prefect"]}


def run_once(mode: str, recipe: str, sets: list[str]) -> dict:
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
            raise SystemExit(f"{mode} build failed ({p.returncode}):\n{p.stderr[-3000:]}")
        dataset = next(Path(root, "datasets").iterdir())
        manifest = json.loads(sorted(dataset.glob("v*/manifest.json"))[-1].read_text())
    return {"mode": mode, "wall_seconds": round(wall, 1),
            "build_seconds": manifest["timings"]["build_seconds"],
            "stage_seconds": {k: v.get("seconds") for k, v in manifest["stages"].items()},
            "completion_tokens": manifest["tokens"].get("completion"),
            "rows": {t: e["rows"] for t, e in manifest["tables"].items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="demo")
    ap.add_argument("--set", action="append", default=[], dest="sets", help="recipe override key=value")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    runs = []
    for r in range(args.repeats):
        order = ["prefect", "streaming"] if r % 2 == 0 else ["streaming", "prefect"]
        for mode in order:
            res = run_once(mode, args.recipe, args.sets)
            res["repeat"] = r
            runs.append(res)
            print(json.dumps(res), flush=True)
    summary = {}
    for mode in MODES:
        mine = [x for x in runs if x["mode"] == mode]
        summary[mode] = {"median_wall_seconds": statistics.median(x["wall_seconds"] for x in mine),
                         "median_build_seconds": statistics.median(x["build_seconds"] for x in mine),
                         "median_generate_seconds": statistics.median(x["stage_seconds"].get("generate", 0)
                                                                     for x in mine)}
    p, s = summary["prefect"], summary["streaming"]
    report = {
        "what": "errata build, Prefect stage-by-stage vs --no-prefect streaming, same recipe, fresh data roots",
        "recipe": args.recipe, "overrides": args.sets, "repeats": args.repeats,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "summary": summary,
        "prefect_minus_streaming": {
            "wall_seconds": round(p["median_wall_seconds"] - s["median_wall_seconds"], 1),
            "build_seconds": round(p["median_build_seconds"] - s["median_build_seconds"], 1),
            "generate_seconds": round(p["median_generate_seconds"] - s["median_generate_seconds"], 1)},
        "runs": runs,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["summary"], indent=2))
    print(json.dumps(report["prefect_minus_streaming"]))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

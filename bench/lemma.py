"""LEMMA on the embedded model (student = teacher = SmolLM2-135M-Instruct, one engine), as a user runs it:
`errata build lemma` in its own process with a fresh data root, engine start included.

Reports (bench/results/lemma.json):
- problems per minute (build wall time, engine start included) and the yield per stage
  (pipelines.methods.lemma.summary.lemma_yield);
- teacher tokens (completion tokens of judge, injections, judge_injections, revise) per kept revision, over all
  kept revisions and over the kept revisions a teacher wrote (the rules revisions cost no tokens);
- the judge's first-error accuracy on the rules-labelled injections (exact and within one step).

    .venv/bin/python bench/lemma.py --problems 8
    .venv/bin/python bench/lemma.py --problems 8
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
RESULTS = REPO / "bench" / "results" / "lemma.json"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from generation import machine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=int, default=8)
    ap.add_argument("--samples", type=int, default=2, help="student samples per problem")
    ap.add_argument("--max-steps", type=int, default=3, help="built-in problems of at most this many steps")
    ap.add_argument("--set", action="append", default=[], help="more recipe overrides")
    args = ap.parse_args()
    from pipelines.catalog import Catalog
    from pipelines.methods.lemma.summary import TEACHER_STAGES, judge_accuracy, lemma_yield

    sets = [f"tasks.count={args.problems}", f"tasks.max_steps={args.max_steps}", f"generate.n={args.samples}",
            "execution.shard_size=8", *args.set]
    exe = str(Path(sys.executable).parent / "errata")
    with tempfile.TemporaryDirectory(prefix="errata-bench-lemma-") as root:
        env = dict(os.environ, ERRATA_DATA=root, PYTHONPATH=str(REPO),
                   ERRATA_MODELS=os.environ.get("ERRATA_MODELS", str(REPO / "data" / "models")))
        cmd = [exe, "build", "lemma", "--no-progress", "--no-prefect"]
        for s in sets:
            cmd += ["--set", s]
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        p = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        load_after = os.getloadavg()
        if p.returncode != 0:
            raise SystemExit(f"build failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
        cat = Catalog(root)
        m = cat.resolve("lemma")
        revs = cat.read_table(m, "revisions").to_pylist()
    kept = [r for r in revs if r["drop_reason"] is None]
    kept_teacher = [r for r in kept if r["model"] != "rules:arithmetic"]
    teacher_tokens = sum(m.stages[s].get("completion_tokens", 0) for s in TEACHER_STAGES)
    drops: dict[str, int] = {}
    for r in revs:
        if r["drop_reason"]:
            drops[r["drop_reason"]] = drops.get(r["drop_reason"], 0) + 1
    out = {
        "machine": machine(), "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after], "overrides": sets,
        "wall_seconds": round(wall, 1), "build_seconds": m.timings.get("build_seconds"),
        "problems": args.problems, "problems_per_minute": round(args.problems / (wall / 60), 2),
        "engines": {k: {"roles": e.get("roles"), "starts": e.get("starts"), "dtype": e.get("dtype"),
                        "start_seconds": e.get("start_seconds")} for k, e in m.engines.items()},
        "stage_seconds": {k: v.get("wall_seconds", v.get("seconds")) for k, v in m.stages.items()},
        "yield": lemma_yield(m.stages), "revision_drops": dict(sorted(drops.items())),
        "kept_revisions": len(kept), "kept_teacher_revisions": len(kept_teacher),
        "teacher_completion_tokens": teacher_tokens,
        "teacher_tokens_per_kept_revision": round(teacher_tokens / len(kept), 1) if kept else None,
        "teacher_tokens_per_kept_teacher_revision": round(teacher_tokens / len(kept_teacher), 1)
        if kept_teacher else None,
        "judge_accuracy_on_rules_labels": judge_accuracy(m.stages["judge_injections"]),
        "judge_parse": m.stages["judge"].get("counts", {}),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

"""SQL inspection speed: typical queries through `errata sql`'s connection over a version of 1M attempt rows.

Builds a synthetic version (problems + attempts, the real schemas, written through the real storage layer and
published with a manifest) in a temporary root, then times each query (median of --repeats runs, after one warm-up).
Target: a typical inspection query over 1M rows < 1 s. Writes bench/results/sql.json.

    .venv/bin/python bench/sql.py [--rows 1000000] [--shards 16] [--repeats 5]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipelines.sql import connect, query  # noqa: E402
from bench.envs import machine  # noqa: E402
from pipelines.catalog import Catalog  # noqa: E402
from pipelines.files import Root  # noqa: E402
from pipelines.publish import publish  # noqa: E402
from pipelines.staging import Staging  # noqa: E402
from schemas.rows import Attempt, make_id, to_table  # noqa: E402

QUERIES = {
    "accuracy": "SELECT count(*) AS n, avg(is_correct::INT) AS acc FROM bench.attempts WHERE drop_reason IS NULL",
    "per_problem": ("SELECT problem_id, count(*) FILTER (WHERE is_correct) AS ok, count(*) AS n "
                    "FROM bench.attempts GROUP BY problem_id ORDER BY ok DESC LIMIT 10"),
    "join_problems": ("SELECT p.source, avg(a.is_correct::INT) AS acc, avg(a.completion_tokens) AS toks "
                      "FROM bench.attempts a JOIN bench.problems p USING (problem_id) GROUP BY p.source"),
    "lookup_by_id": "SELECT * FROM bench.attempts WHERE attempt_id = '{aid}'",
    "text_search": "SELECT count(*) FROM bench.attempts WHERE completion ILIKE '%answer is: 42%'",
    "drop_reasons": "SELECT drop_reason, count(*) FROM bench.attempts GROUP BY drop_reason",
}


def make_version(root: str, rows: int, shards: int, samples: int = 4) -> tuple[Catalog, str]:
    """Publish dataset `bench` of `rows` attempts in `shards` shards through staging, as a build does."""
    staging = Staging(Root(root), "bench", "k")
    staging.open({})
    rng = random.Random(0)
    now = dt.datetime.now(dt.timezone.utc)
    n_problems = rows // samples
    per_shard = n_problems // shards
    some_id = ""
    for sid in range(shards):
        probs, atts = [], []
        for i in range(sid * per_shard, (sid + 1) * per_shard):
            pid = make_id("bench", i, prefix="p-")
            probs.append({"problem_id": pid, "source": rng.choice(["builtin:arithmetic", "gsm8k", "math"]),
                          "split": "train", "source_index": i, "question": f"Problem {i}: what is {i} + 1?",
                          "reference_answer": str(i + 1), "run_id": "bench", "method": "bench", "created_at": now,
                          "parent_ids": []})
            for k in range(samples):
                ans = str(i + 1) if rng.random() < 0.3 else str(rng.randint(0, 99))
                aid = make_id(pid, k, prefix="a-")
                some_id = some_id or aid
                atts.append({"attempt_id": aid, "problem_id": pid, "sample_index": k, "model": "bench",
                             "engine": "fake", "sampling_json": "{}", "prompt_template": "t@1",
                             "prompt": f"Problem {i}", "completion": f"Step 1: add.\nThe answer is: {ans}",
                             "finish_reason": "stop", "prompt_tokens": 40, "completion_tokens": rng.randint(20, 200),
                             "steps": [{"idx": 1, "text": "Step 1: add."}], "final_answer": ans,
                             "answer_parse_ok": True, "is_correct": ans == str(i + 1), "reward": None,
                             "verifier": "math_verify", "drop_reason": rng.choice([None] * 9 + ["truncated"]),
                             "run_id": "bench", "method": "bench", "created_at": now, "parent_ids": [pid]})
        staging.write_inputs(sid, {"problems": probs})
        staging.write_stage(sid, "generate", {"attempts": to_table(atts, Attempt)}, None, {"in": len(probs)})
    catalog = Catalog(Root(root))
    publish(staging, catalog, list(range(shards)), ["generate"], ["problems", "attempts"],
            dict(run_id="bench", method="bench", recipe={}, recipe_hash="-", code_version="bench"))
    return catalog, some_id


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--shards", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "sql.json"))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as root:
        t0 = time.perf_counter()
        catalog, aid = make_version(root, a.rows, a.shards)
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        con = connect(catalog)
        connect_s = time.perf_counter() - t0
        n = query(con, "SELECT count(*) FROM bench.attempts").fetchall()[0][0]
        timings = {}
        for name, q in QUERIES.items():
            q = q.format(aid=aid)
            query(con, q).fetchall()  # warm-up (file metadata, OS cache)
            runs = []
            for _ in range(a.repeats):
                t = time.perf_counter()
                query(con, q).fetchall()
                runs.append(time.perf_counter() - t)
            timings[name] = {"median_s": round(statistics.median(runs), 4), "max_s": round(max(runs), 4)}
            print(f"{name:<14} median {timings[name]['median_s']:.3f} s  max {timings[name]['max_s']:.3f} s")
    worst = max(v["median_s"] for v in timings.values())
    report = {"benchmark": "SQL inspection over one version through errata's DuckDB connection",
              "when": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "attempt_rows": n, "files_per_table": a.shards, "write_version_s": round(build_s, 2),
              "connect_s": round(connect_s, 4), "queries": {k: {"sql": QUERIES[k], **v} for k, v in timings.items()},
              "worst_median_s": worst, "target_s": 1.0, "meets_target": worst < 1.0,
              "machine": machine()}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"{n} rows; worst median {worst:.3f} s (target < 1 s) -> {a.out}")


if __name__ == "__main__":
    main()

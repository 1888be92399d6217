"""Near-duplicate removal and decontamination speed, memory and accuracy over synthetic rows with planted duplicates.

Each measurement runs the real global stage (stages/near_dup.py, stages/decontaminate.py) the way the runner does,
one shard at a time through `scan`, then `decide` and `summarize`, in a fresh process so its peak memory (max RSS)
is its own. Rows are generated per shard (Zipf-distributed words, 40-100 per row), never all at once.

- near_dup: 5% of the rows are exact copies (case and spacing changed) and 10% one-word edits of rows from a pool
  of earlier rows (across shards), 5% are heavier edits (4-8 words) that usually fall below the threshold. The
  truth is the exact Jaccard similarity of each planted copy's shingles to its source: a copy at or above the
  threshold should be dropped, anything else kept. Precision and recall of the drops against that truth.
- decontaminate: an evaluation set of 1,319 synthetic items (GSM8K test's size); 0.5% of the rows embed an item
  verbatim inside other text, 0.5% hold an item with 2 words changed, 0.5% a heavy paraphrase (every 6th word
  changed: shares no 13-gram, low similarity: reported, expected mostly missed). Positives: the first two kinds.

rows/s counts the stage's own time (scan + decide + summarize), not the generation of the rows.

    .venv/bin/python bench/dedup.py [--sizes 100000 1000000] [--backends rensa datasketch]   (default: 100000)
                                    [--datasketch-max 100000] [--out bench/results/dedup.json]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SHARD_ROWS = 10_000
POOL = 20_000            # earlier rows kept by the generator as sources of planted copies
VOCAB = 30_000


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Words:
    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        ranks = np.arange(1, VOCAB + 1)
        self.p = (1.0 / ranks ** 1.05) / (1.0 / ranks ** 1.05).sum()

    def texts(self, n: int) -> list[list[str]]:
        lens = self.rng.integers(40, 101, n)
        flat = self.rng.choice(VOCAB, size=int(lens.sum()), p=self.p)
        out, i = [], 0
        for L in lens:
            out.append([f"w{k}" for k in flat[i:i + L]])
            i += L
        return out

    def edit(self, words: list[str], k: int) -> list[str]:
        w = list(words)
        for pos in self.rng.choice(len(w), size=min(k, len(w)), replace=False):
            w[pos] = f"x{self.rng.integers(1 << 30)}"
        return w


def _jaccard(a: str, b: str, size: int) -> float:
    from stages.minhash import shingles
    A, B = set(shingles(a, size)), set(shingles(b, size))
    return len(A & B) / len(A | B) if A | B else 1.0


def run_near_dup(rows: int, backend: str, threshold: float = 0.8, shingle: int = 5, num_perm: int = 128) -> dict:
    from stages.base import StageStats
    from stages.near_dup import NearDupConfig, NearDuplicates
    st = NearDuplicates(NearDupConfig(table="attempts", column="completion", threshold=threshold,
                                      shingle_size=shingle, num_perm=num_perm, backend=backend))
    gen = Words(1)
    pool: list[str] = []
    truth: dict[str, bool] = {}          # planted row id -> should be dropped
    kinds = {"exact": 0, "near": 0, "heavy": 0}
    rss0, stage_s, made = _rss_mib(), 0.0, 0
    while made < rows:
        n = min(SHARD_ROWS, rows - made)
        base = gen.texts(n)
        shard = []
        for i in range(n):
            rid = f"a{made + i}"
            r = gen.rng.random() if pool else 1.0
            if r < 0.05:
                src = pool[gen.rng.integers(len(pool))]
                text = "  ".join(src.upper().split(" "))
                truth[rid] = True
                kinds["exact"] += 1
            elif r < 0.20:
                src = pool[gen.rng.integers(len(pool))]
                heavy = r >= 0.15
                text = " ".join(gen.edit(src.split(" "), int(gen.rng.integers(4, 9)) if heavy else 1))
                truth[rid] = _jaccard(text, src, shingle) >= threshold
                kinds["heavy" if heavy else "near"] += 1
            else:
                text = " ".join(base[i])
                if len(pool) < POOL:
                    pool.append(text)
            shard.append({"attempt_id": rid, "completion": text, "problem_id": None, "drop_reason": None})
        t0 = time.perf_counter()
        st.scan({"attempts": shard})
        stage_s += time.perf_counter() - t0
        made += n
    t0 = time.perf_counter()
    drops = st.decide({})
    stats = StageStats()
    found = st.summarize({}, stats)["near_duplicates"]
    stage_s += time.perf_counter() - t0
    positives = {k for k, v in truth.items() if v}
    tp = len(positives & set(drops))
    return {"task": "near_dup", "backend": backend, "rows": rows, "threshold": threshold, "shingle_size": shingle,
            "num_perm": num_perm, "stage_seconds": round(stage_s, 2), "rows_per_s": round(rows / stage_s),
            "planted": kinds, "positives": len(positives), "dropped": len(drops), "true_positives": tp,
            "precision": round(tp / len(drops), 4) if drops else None,
            "recall": round(tp / len(positives), 4) if positives else None,
            "clusters": stats.counts.get("clusters"), "near_duplicates_rows": len(found),
            "signature_mib": round(stats.counts.get("signature_kib", 0) / 1024, 1),
            "peak_rss_mib": round(_rss_mib(), 1), "rss_before_mib": round(rss0, 1)}


def run_decontaminate(rows: int, backend: str) -> dict:
    from stages.base import StageStats
    from stages.decontaminate import Decontaminate, DecontaminateConfig
    gen = Words(2)
    items = [" ".join(w[:60]) for w in gen.texts(1319)]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "eval.jsonl"
        path.write_text("".join(json.dumps({"question": q, "answer": "#### 1"}) + "\n" for q in items))
        cfg = DecontaminateConfig(sets=[{"name": "synthetic_eval", "path": str(path)}], backend=backend)
        st = Decontaminate(cfg)
        truth: dict[str, str] = {}
        rss0, stage_s, made = _rss_mib(), 0.0, 0
        while made < rows:
            n = min(SHARD_ROWS, rows - made)
            base = gen.texts(n)
            shard = []
            for i in range(n):
                rid = f"p{made + i}"
                r = gen.rng.random()
                w = base[i]
                if r < 0.015:
                    item = items[gen.rng.integers(len(items))].split(" ")
                    if r < 0.005:
                        w = w[:10] + item + w[10:20]
                        truth[rid] = "verbatim"
                    elif r < 0.01:
                        w = gen.edit(item, 2)
                        truth[rid] = "two_words_changed"
                    else:
                        w = [x if j % 6 else f"y{gen.rng.integers(1 << 30)}" for j, x in enumerate(item)]
                        truth[rid] = "heavy_paraphrase"
                shard.append({"problem_id": rid, "question": " ".join(w), "drop_reason": None})
            t0 = time.perf_counter()
            st.scan({"problems": shard})
            stage_s += time.perf_counter() - t0
            made += n
        t0 = time.perf_counter()
        drops = st.decide({})
        stats = StageStats()
        st.summarize({}, stats)
        stage_s += time.perf_counter() - t0
    positives = {k for k, v in truth.items() if v != "heavy_paraphrase"}
    tp = len(positives & set(drops))
    by_kind = {k: {"planted": sum(1 for v in truth.values() if v == k),
                   "found": sum(1 for r, v in truth.items() if v == k and r in drops)}
               for k in ("verbatim", "two_words_changed", "heavy_paraphrase")}
    return {"task": "decontaminate", "backend": backend, "rows": rows, "eval_items": len(items),
            "ngram": cfg.ngram, "threshold": cfg.threshold, "stage_seconds": round(stage_s, 2),
            "rows_per_s": round(rows / stage_s), "planted": by_kind, "positives": len(positives),
            "dropped": len(drops), "true_positives": tp, "precision": round(tp / len(drops), 4) if drops else None,
            "recall": round(tp / len(positives), 4) if positives else None,
            "matches": {k: v for k, v in stats.counts.items() if k.startswith("match_")},
            "peak_rss_mib": round(_rss_mib(), 1), "rss_before_mib": round(rss0, 1)}


def _child(q, fn, args):
    try:
        q.put(fn(*args))
    except Exception as e:      # reported, not hidden
        q.put({"error": f"{type(e).__name__}: {e}"})


def in_fresh_process(fn, *args) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q, fn, args))
    p.start()
    res = q.get()
    p.join()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000],
                    help="rows per run; the report in bench/results/ also has 1,000,000 (--sizes 100000 1000000, "
                         "about 10 minutes on a loaded 2-core box)")
    ap.add_argument("--backends", nargs="+", default=["rensa", "datasketch"])
    ap.add_argument("--datasketch-max", type=int, default=100_000,
                    help="largest size datasketch runs at (it is the slower one)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "dedup.json"))
    a = ap.parse_args()
    from bench.envs import machine
    results = []
    for size in a.sizes:
        for backend in a.backends:
            if backend == "datasketch" and size > a.datasketch_max:
                continue
            for fn in (run_near_dup, run_decontaminate):
                r = in_fresh_process(fn, size, backend)
                print(json.dumps(r), flush=True)
                results.append(r)
    report = {"benchmark": "dedup", "machine": machine(), "shard_rows": SHARD_ROWS,
              "note": "stage time only (scan + decide + summarize), rows generated per shard; peak_rss_mib is the "
                      "measuring process's max RSS (Python, the libraries, the generator's pool of 20k source "
                      "texts included); rss_before_mib: after imports, before the first row",
              "results": results}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()

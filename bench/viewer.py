"""Viewer speed on a 1M-row version: time to the first page of a table, with and without filters, a page deep in
the keyset order, the whole HTTP response of the table page, and what the process's memory did meanwhile.

Publishes the same synthetic version as bench/sql.py (problems + 1M attempts, real schemas, through staging and
`publish`, so the dataset card is made too and its time is reported), then times `ViewerData.page` (median of
--repeats after the first, cold, call) and a GET of /d/bench/1/t/attempts through FastAPI's test client.
Writes bench/results/viewer.json.

    .venv/bin/python bench/viewer.py [--rows 1000000] [--shards 16] [--repeats 5]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.envs import machine  # noqa: E402
from bench.sql import make_version  # noqa: E402
from pipelines.card import build_card  # noqa: E402
from pipelines.viewer.data import ViewerData  # noqa: E402


def rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def timed(fn, repeats: int) -> dict:
    t = time.perf_counter()
    first = fn()
    cold = time.perf_counter() - t
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return {"cold_s": round(cold, 4), "median_s": round(statistics.median(runs), 4), "max_s": round(max(runs), 4),
            "rows_on_page": len(first.rows) if hasattr(first, "rows") else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--shards", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "viewer.json"))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as root:
        t0 = time.perf_counter()
        catalog, aid = make_version(root, a.rows, a.shards)     # publish() writes the card too
        publish_s = time.perf_counter() - t0
        m = catalog.resolve("bench@1")
        t0 = time.perf_counter()
        build_card(catalog.root, catalog.version_dir("bench", 1), m)
        card_s = time.perf_counter() - t0
        rss_before = rss_mb()
        data = ViewerData(catalog)
        t0 = time.perf_counter()
        data.cursor().close()
        connect_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        first = data.page(m, "attempts")      # the very first page after connecting: nothing cached yet
        first_page_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        data.page(m, "attempts", order="file")
        first_file_page_s = time.perf_counter() - t0
        mid = data.page(m, "attempts", after=first.rows[-1]["attempt_id"], limit=1, count=False)
        deep_after = data.run("SELECT attempt_id FROM bench_v1.attempts ORDER BY attempt_id LIMIT 1 OFFSET "
                              f"{a.rows // 2}")[1][0][0]
        cases = {
            "first_page": lambda: data.page(m, "attempts"),
            "first_page_no_count": lambda: data.page(m, "attempts", count=False),
            "filter_drop_reason": lambda: data.page(m, "attempts", {"drop_reason": "truncated"}),
            "filter_correct": lambda: data.page(m, "attempts", {"correct": "true"}),
            "free_text": lambda: data.page(m, "attempts", {"q": "answer is: 42"}),
            "sql_where": lambda: data.page(m, "attempts", {"where": "completion_tokens > 150"}),
            "page_at_the_middle": lambda: data.page(m, "attempts", after=deep_after),
            "file_order_first_page": lambda: data.page(m, "attempts", order="file"),
            "file_order_first_page_no_count": lambda: data.page(m, "attempts", order="file", count=False),
            "file_order_filter_drop_reason": lambda: data.page(m, "attempts", {"drop_reason": "truncated"},
                                                               order="file"),
            "file_order_page_at_the_middle": lambda: data.page(m, "attempts", order="file", offset=a.rows // 2),
            "row_by_id": lambda: data.row(m, "attempts", aid),
        }
        timings = {}
        for name, fn in cases.items():
            timings[name] = timed(fn, a.repeats)
            print(f"{name:<22} cold {timings[name]['cold_s']:.3f} s  median {timings[name]['median_s']:.3f} s")
        from fastapi.testclient import TestClient

        from pipelines.viewer.app import create_app
        client = TestClient(create_app(root), base_url="http://127.0.0.1", client=("127.0.0.1", 1))
        for order in ("id", "file"):
            http = []
            for _ in range(a.repeats + 1):
                t = time.perf_counter()
                r = client.get(f"/d/bench/1/t/attempts?order={order}")
                http.append(time.perf_counter() - t)
                assert r.status_code == 200, r.text[:500]
            name = f"http_table_page_{order}_order"
            timings[name] = {"cold_s": round(http[0], 4), "median_s": round(statistics.median(http[1:]), 4),
                             "max_s": round(max(http[1:]), 4), "rows_on_page": len(first.rows)}
            print(f"{name:<22} cold {http[0]:.3f} s  median {statistics.median(http[1:]):.3f} s")
        rows = m.tables["attempts"].rows
    report = {"benchmark": "errata view over one version: time to a page of rows (keyset paging in DuckDB)",
              "when": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "attempt_rows": rows, "files_per_table": a.shards, "page_size": len(first.rows),
              "publish_with_card_s": round(publish_s, 2), "card_s": round(card_s, 2),
              "connect_s": round(connect_s, 4), "time_to_first_page_s": round(first_page_s, 4),
              "what": "time_to_first_page_s: the first page (50 rows ordered by id, with the total count) right after "
                      "connecting; the file-order figure is the next call (offset paging)",
              "time_to_first_page_with_connect_s": round(connect_s + first_page_s, 4),
              "time_to_first_page_file_order_s": round(first_file_page_s, 4),
              "pages": timings, "keyset_check": mid.rows[0]["attempt_id"] > first.rows[-1]["attempt_id"],
              "max_rss_mb_before_viewer": rss_before, "max_rss_mb_after_viewer": rss_mb(),
              "note": "max RSS is the process's peak, publishing the 1M rows included; timings on a shared 2-core "
                      "box are under load from other processes",
              "machine": machine()}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"{rows} rows; time to first page {report['time_to_first_page_s']:.3f} s (cold) -> {a.out}")


if __name__ == "__main__":
    main()

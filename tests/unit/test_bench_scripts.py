"""The benchmark scripts that need no model still run against today's code (a small size, a report written)."""
import json
import subprocess
import sys

from tests.conftest import REPO


def test_sql_bench_runs_and_writes_its_report(tmp_path):
    out = tmp_path / "sql.json"
    p = subprocess.run([sys.executable, str(REPO / "bench" / "sql.py"), "--rows", "2000", "--shards", "2",
                        "--repeats", "1", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["attempt_rows"] == 2000 and set(report["queries"]) >= {"accuracy", "lookup_by_id"}
    assert report["machine"]["cpu_count"] >= 1


def test_viewer_bench_runs_and_writes_its_report(tmp_path):
    out = tmp_path / "viewer.json"
    p = subprocess.run([sys.executable, str(REPO / "bench" / "viewer.py"), "--rows", "2000", "--shards", "2",
                        "--repeats", "1", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["attempt_rows"] == 2000 and report["page_size"] == 50 and report["keyset_check"] is True
    assert report["time_to_first_page_s"] > 0 and "http_table_page_id_order" in report["pages"]


def test_dedup_bench_runs_and_finds_what_it_planted(tmp_path):
    out = tmp_path / "dedup.json"
    p = subprocess.run([sys.executable, str(REPO / "bench" / "dedup.py"), "--sizes", "3000", "--backends", "rensa",
                        "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert p.returncode == 0, p.stderr[-3000:]
    runs = {r["task"]: r for r in json.loads(out.read_text())["results"]}
    assert set(runs) == {"near_dup", "decontaminate"} and all("error" not in r for r in runs.values())
    assert runs["near_dup"]["positives"] > 100 and runs["near_dup"]["recall"] > 0.8
    assert runs["decontaminate"]["true_positives"] > 0 and runs["decontaminate"]["precision"] > 0.8
    assert runs["near_dup"]["peak_rss_mib"] > 0 and runs["near_dup"]["rows_per_s"] > 0

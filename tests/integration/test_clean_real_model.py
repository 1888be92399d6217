"""Clean data on the embedded model, as a user runs it (`errata build` with Prefect, in process): a task file with a
repeated problem and one that is in an evaluation set, near-duplicate samples removed per problem; the manifest
counts every drop, and the findings join the rows they dropped."""
import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, cli_env, published_manifest, published_rows

pytestmark = pytest.mark.integration


def test_clean_section_on_the_real_model(tmp_path):
    from stages.arithmetic import builtin_problems
    probs = builtin_problems(5, 0, "train", 1)
    lines = [json.dumps({"question": p["question"], "answer": f"#### {p['reference_answer']}"}) for p in probs]
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("\n".join(lines + [lines[0]]) + "\n")                       # line 6 repeats line 1
    ev = tmp_path / "eval.jsonl"
    ev.write_text(json.dumps({"question": probs[1]["question"]}) + "\n")          # line 2 is in the eval set
    root = tmp_path / "data"
    p = subprocess.run(
        [sys.executable, "-m", "flows.cli", "build", "demo", "--no-progress", "--set", f"tasks.path={tasks}",
         "--set", "generate.n=4", "--set", "generate.max_tokens=96", "--set", "execution.shard_size=2",
         "--set", "clean.near_dup.within=problem_id", "--set", "clean.near_dup.threshold=0.7",
         "--set", f"clean.decontaminate.sets=[{{name: ev, path: {ev}}}]"],
        env=cli_env(root), cwd=REPO, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "dropped: problems: contaminated:ev=1 duplicate_problem=1" in p.stdout
    m = published_manifest(root, "demo")
    assert m["inputs"]["duplicate_problems"] == 1
    assert m["stages"]["generate"]["in"] == 4                                     # 6 lines, 2 dropped first
    nd = m["stages"]["near_dup"]
    assert nd["in"] == nd["out"] + nd.get("dropped_near_duplicate", 0)
    assert m["stages"]["filter"]["out"] == nd["in"]
    assert m["models"]["decontaminate"]["eval_sets"][0]["rows"] == 1
    attempts = {a["attempt_id"]: a for a in published_rows(root, "attempts", "demo")}
    found = published_rows(root, "near_duplicates", "demo")
    dropped = {a for a, r in attempts.items() if r["drop_reason"] == "near_duplicate"}
    assert {f["row_id"] for f in found if not f["kept"]} == dropped
    for f in found:         # a cluster's kept row is live, of the same problem
        kept = attempts[f["kept_row_id"]]
        assert kept["drop_reason"] is None and kept["problem_id"] == attempts[f["row_id"]]["problem_id"]
    (c,) = published_rows(root, "contamination", "demo")
    assert c["eval_set"] == "ev" and c["eval_id"] == "1" and c["match"] == "ngram"

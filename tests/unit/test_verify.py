"""stages.verify.VerifyStage with the real math-verify, in its worker process; timeouts per check."""
import os
import pickle
import time

import pytest

from stages.verify import VerifyConfig, VerifyStage, math_verify_check

OUT = ("final_answer", "answer_parse_ok", "is_correct", "reward", "verifier")


# Injected checks: module level so the spawned worker can import them by name.
def slow_check(answer: str, reference: str) -> bool:
    if answer == "999":
        time.sleep(60)
    return math_verify_check(answer, reference)


def raising_check(answer: str, reference: str) -> bool:
    if answer == "13":
        raise ValueError("unlucky")
    return answer == reference


def crashing_check(answer: str, reference: str) -> bool:
    if answer == "666":
        os._exit(3)
    return answer == reference


def trivial_check(answer: str, reference: str) -> bool:
    return answer == reference


@pytest.fixture(scope="module")
def stage():
    s = VerifyStage(VerifyConfig(timeout_s=10))
    s.setup()
    yield s
    s.teardown()


def _tables(pairs):
    return {"attempts": [{"attempt_id": f"a{i}", "problem_id": f"p{i}", "completion": c}
                         for i, (c, _) in enumerate(pairs)],
            "problems": [{"problem_id": f"p{i}", "reference_answer": r} for i, (_, r) in enumerate(pairs)]}


def check(stage, pairs_or_tables):
    """Run the stage; one result per attempt in input order: the verified row, or its error record shaped like
    {error_reason, error_message, error_raw} (failed rows leave the table for `errors`)."""
    tables = _tables(pairs_or_tables) if isinstance(pairs_or_tables, list) else pairs_or_tables
    res = stage.run(tables)
    rows = {r["attempt_id"]: r for r in res.tables["attempts"]}
    errs = {e["row_id"]: e for e in res.errors}
    assert not set(rows) & set(errs)
    out = []
    for a in tables["attempts"]:
        if a["attempt_id"] in errs:
            e = errs[a["attempt_id"]]
            assert e["stage"] == "verify" and e["table"] == "attempts"
            out.append({"error_reason": e["reason"], "error_message": e["message"], "error_raw": e["raw_input"]})
        else:
            out.append(rows[a["attempt_id"]])
    return out, res.stats


@pytest.mark.parametrize("completion, reference", [
    ("The answer is 1,000.", "1000"),
    ("#### 1,000", "1,000"),
    ("The answer is 0.5", "\\frac{1}{2}"),
    ("so \\boxed{1/2}", "0.5"),
    ("The answer is 72.0", "72"),
    ("The answer is $18.", "18"),
    ("The answer is \\boxed{\\frac{14}{3}}", "\\frac{14}{3}"),
    ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("The answer is $(3, \\frac{\\pi}{2})$", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("The answer is Evelyn.", "\\text{Evelyn}"),
    ("The answer is \\sqrt{8}", "2\\sqrt{2}"),
    ("The answer is -3", "-3"),
    ("\\boxed{10\\%}", "10"),
])
def test_equivalent_answers_are_correct(stage, completion, reference):
    out, stats = check(stage, ([(completion, reference)]))
    r = out[0]
    assert r["answer_parse_ok"] is True and r["is_correct"] is True, r
    assert r["reward"] == 1.0 and r["verifier"] == "math_verify"
    assert stats.as_dict()["errors"] == 0


@pytest.mark.parametrize("completion, reference", [
    ("The answer is 1,001", "1000"),
    ("The answer is 0.51", "\\frac{1}{2}"),
    ("The answer is 72", "-72"),
    ("\\boxed{\\frac{14}{5}}", "\\frac{14}{3}"),
    ("The answer is Eve.", "\\text{Evelyn}"),
])
def test_wrong_answers_are_wrong(stage, completion, reference):
    out, _ = check(stage, ([(completion, reference)]))
    r = out[0]
    assert r["answer_parse_ok"] is True and r["is_correct"] is False and r["reward"] == 0.0, r
    assert r["verifier"] == "math_verify"


def test_unparseable_is_unknown_not_wrong(stage):
    out, stats = check(stage, ([("I cannot solve this.", "5"), ("", "5")]))
    for r in out:
        assert r["final_answer"] is None and r["answer_parse_ok"] is False
        assert r["is_correct"] is None and r["reward"] is None  # not False / 0.0
        assert "error_reason" not in r
    assert stats.as_dict()["out"] == 2 and stats.as_dict()["errors"] == 0


def test_output_columns_and_dropped_rows_pass_through(stage):
    tables = _tables([("The answer is 4", "4")])
    dropped = {"attempt_id": "x", "problem_id": "p0", "completion": "The answer is 4", "drop_reason": "truncated"}
    tables["attempts"].append(dropped)
    res = stage.run(tables)
    out = res.tables["attempts"]
    assert set(OUT) <= set(out[0]) and out[0]["attempt_id"] == "a0"
    assert out[1] is dropped  # dropped upstream: untouched, still in the table
    assert res.stats.as_dict()["in"] == 1


def test_missing_reference_is_an_error_row(stage):
    out, stats = check(stage, ([("The answer is 4", ""), ("The answer is 4", "4")]))
    assert out[0]["error_reason"] == "no_reference"
    assert out[1]["is_correct"] is True
    assert stats.as_dict()["error_reasons"] == {"no_reference": 1}


def test_timeout_is_per_check_and_worker_is_rebuilt():
    stage = VerifyStage(VerifyConfig(timeout_s=1.5), check_fn=slow_check)
    stage.setup()
    try:
        pid0 = stage.worker.pid
        rows = [("The answer is 1", "1"), ("The answer is 999", "999"), ("The answer is 0.5", "1/2"),
                ("The answer is 4", "5")]
        t0 = time.perf_counter()
        out, stats = check(stage, rows)
        elapsed = time.perf_counter() - t0
        assert elapsed < 10  # not the 60 s the slow check would take
        assert out[0]["is_correct"] is True
        assert out[1]["error_reason"] == "checker_timeout"
        assert "1.5 s" in out[1]["error_message"] and "999" in out[1]["error_raw"]
        assert out[2]["is_correct"] is True and out[3]["is_correct"] is False  # the rest still verified
        d = stats.as_dict()
        assert d["errors"] == 1 and d["error_reasons"] == {"checker_timeout": 1} and d["out"] == 3
        # the runaway worker was killed and a fresh one took over
        assert stage.worker.pid != pid0 and stage.worker.starts == 2
        with pytest.raises(ProcessLookupError):
            os.kill(pid0, 0)
        out, stats = check(stage, ([("The answer is 7", "7")]))
        assert out[0]["is_correct"] is True and stats.errors == 0
    finally:
        stage.teardown()


def test_two_timeouts_in_one_batch():
    stage = VerifyStage(VerifyConfig(timeout_s=1.0), check_fn=slow_check)
    try:
        out, stats = check(stage, ([("#### 999", "1"), ("#### 2", "2"), ("#### 999", "3")]))  # lazy setup
        assert [r.get("error_reason") for r in out] == ["checker_timeout", None, "checker_timeout"]
        assert out[1]["is_correct"] is True
        assert stage.worker.starts == 3
    finally:
        stage.teardown()


def test_check_error_and_crash_become_error_rows():
    stage = VerifyStage(VerifyConfig(timeout_s=5), check_fn=raising_check)
    try:
        out, stats = check(stage, ([("#### 13", "13"), ("#### 14", "14")]))
        assert out[0]["error_reason"] == "checker_error" and "unlucky" in out[0]["error_message"]
        assert out[1]["is_correct"] is True
    finally:
        stage.teardown()
    stage = VerifyStage(VerifyConfig(timeout_s=5), check_fn=crashing_check)
    try:
        out, stats = check(stage, ([("#### 1", "1"), ("#### 666", "1"), ("#### 2", "3")]))
        assert [r.get("error_reason") for r in out] == [None, "checker_crashed", None]
        assert out[0]["is_correct"] is True and out[2]["is_correct"] is False
        assert stats.error_reasons == {"checker_crashed": 1}
    finally:
        stage.teardown()


def test_stage_pickles_before_and_after_setup():
    stage = VerifyStage(VerifyConfig(timeout_s=3))
    clone = pickle.loads(pickle.dumps(stage))
    assert clone.worker is None and clone.config.timeout_s == 3
    stage.setup()
    try:
        clone = pickle.loads(pickle.dumps(stage))
        assert clone.worker is None
    finally:
        stage.teardown()
    d = stage.describe()
    assert d["verifier"] == "math_verify" and d["timeout_s"] == 3 and d["math_verify_version"]


def test_no_ray_or_prefect_imported():
    import subprocess
    import sys
    code = ("import sys, stages.verify, stages.filter, stages.tasks, stages.answers; "
            "bad = [m for m in ('ray', 'prefect') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(
        os.path.dirname(os.path.abspath(__file__)))))


def test_per_check_overhead_is_small():
    """Batch of trivial checks through the worker: the IPC overhead per check stays far below a sympy check."""
    stage = VerifyStage(VerifyConfig(timeout_s=5), check_fn=trivial_check)
    stage.setup()
    try:
        rows = [(f"#### {i}", str(i)) for i in range(2000)]
        t0 = time.perf_counter()
        out, stats = check(stage, rows)
        rate = len(rows) / (time.perf_counter() - t0)
        assert all(r["is_correct"] for r in out)
        assert rate > 1000, f"{rate:.0f} checks/s"
    finally:
        stage.teardown()

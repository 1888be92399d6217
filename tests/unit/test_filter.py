"""stages.filter.FilterStage: every drop has a reason, counted; kept rows have drop_reason None."""
from pipelines.config import FilterConfig
from stages.base import is_live
from stages.filter import FilterStage, normalize_completion


def _row(pid, text, finish="stop", parsed=True, **kw):
    return {"problem_id": pid, "completion": text, "finish_reason": finish, "answer_parse_ok": parsed, **kw}


def _run(rows, **cfg):
    stage = FilterStage(FilterConfig(**cfg))
    stage.setup()
    return stage.process(rows)


def test_reasons_and_counts():
    rows = [
        _row("p1", "The answer is 4."),                    # kept
        _row("p1", "the  answer is 4.\n"),                 # duplicate of the first (whitespace/case)
        _row("p1", "The answer is 5.", finish="length"),   # truncated
        _row("p1", "no idea", parsed=False),               # no_answer
        _row("p2", "The answer is 4."),                    # same text, other problem: kept
        _row("p2", "The answer is 6."),                    # kept
    ]
    out, stats = _run(rows)
    assert [r["drop_reason"] for r in out] == [None, "duplicate", "truncated", "no_answer", None, None]
    d = stats.as_dict()
    assert d["in"] == 6 and d["out"] == 3 and d["errors"] == 0
    assert d["dropped_duplicate"] == 1 and d["dropped_truncated"] == 1 and d["dropped_no_answer"] == 1
    assert d["in"] == d["out"] + sum(v for k, v in d.items() if k.startswith("dropped_"))
    assert all(r["completion"] == s["completion"] for r, s in zip(out, rows))  # nothing else changed


def test_order_truncated_first_then_no_answer():
    rows = [_row("p1", "cut off", finish="length", parsed=False),
            _row("p1", "cut off", finish="stop", parsed=False)]
    out, stats = _run(rows)
    assert [r["drop_reason"] for r in out] == ["truncated", "no_answer"]
    assert stats.dropped == {"truncated": 1, "no_answer": 1}


def test_dropped_rows_do_not_count_as_seen_for_duplicates():
    rows = [_row("p1", "same text", finish="length"), _row("p1", "same text")]
    out, _ = _run(rows)
    assert [r["drop_reason"] for r in out] == ["truncated", None]


def test_switches_off():
    rows = [_row("p1", "a", finish="length"), _row("p1", "b", parsed=False), _row("p1", "b", parsed=False)]
    out, stats = _run(rows, drop_truncated=False, drop_no_answer=False, drop_duplicates=False)
    assert [r["drop_reason"] for r in out] == [None, None, None]
    assert stats.as_dict()["out"] == 3 and not stats.dropped


def test_failed_and_already_dropped_rows_pass_through():
    failed = _row("p1", "x", error_stage="verify", error_reason="checker_timeout")
    dropped = _row("p1", "y", drop_reason="truncated")
    rows = [failed, dropped, _row("p1", "x")]
    out, stats = _run(rows)
    assert out[0] is failed and out[1] is dropped
    assert out[2]["drop_reason"] is None and is_live(out[2])
    assert stats.as_dict()["in"] == 1 and stats.as_dict()["out"] == 1


def test_missing_input_column_is_a_clear_error():
    import pytest
    with pytest.raises(KeyError, match="answer_parse_ok"):
        _run([{"problem_id": "p", "completion": "x", "finish_reason": "stop"}])


def test_normalize_completion():
    assert normalize_completion("  A\n\tb  ") == "a b"
    assert normalize_completion(None) == ""

"""stages.filter: every drop has a reason, counted; kept rows have drop_reason None; the global dedup."""

from stages.base import is_live
from stages.filter import AttemptFilter, DuplicateProblems, FilterConfig, normalize_text


def _row(pid, text, finish="stop", parsed=True, **kw):
    return {"attempt_id": f"a-{pid}-{text}-{finish}-{parsed}", "problem_id": pid, "completion": text,
            "finish_reason": finish, "answer_parse_ok": parsed, "drop_reason": None, **kw}


def _run(rows, **cfg):
    res = AttemptFilter(FilterConfig(**cfg)).run({"attempts": rows})
    assert res.errors == []
    return res.tables["attempts"], res.stats


def test_reasons_and_counts():
    rows = [
        _row("p1", "The answer is 4."),                    # kept
        _row("p1", "the  answer is 4.\n"),                # duplicate of the first (whitespace/case)
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


def test_already_dropped_rows_pass_through_untouched():
    dropped = _row("p1", "y", drop_reason="duplicate_problem")
    rows = [dropped, _row("p1", "x")]
    out, stats = _run(rows)
    assert out[0] is dropped
    assert out[1]["drop_reason"] is None and is_live(out[1])
    assert stats.as_dict()["in"] == 1 and stats.as_dict()["out"] == 1


def test_normalize_text():
    assert normalize_text("  A\n\tb  ") == "a b"
    assert normalize_text(None) == ""


def test_global_dedup_drops_the_attempts_of_repeated_questions_across_shards():
    st = DuplicateProblems()
    problems = [{"problem_id": "p1", "question": "What is 2+2?", "source_index": 1, "__shard": 0},
                {"problem_id": "p2", "question": "what is  2+2?", "source_index": 7, "__shard": 3},
                {"problem_id": "p3", "question": "Other", "source_index": 2, "__shard": 3}]
    attempts = [{"attempt_id": f"a{i}-{p}", "problem_id": p, "drop_reason": None, "__shard": 0}
                for p in ("p1", "p2", "p3") for i in range(2)]
    attempts[5]["drop_reason"] = "truncated"      # already dropped: not decided again
    drops = st.decide({"problems": problems, "attempts": attempts})
    assert drops == {"a0-p2": "duplicate_problem", "a1-p2": "duplicate_problem"}
    res = st.apply([dict(a) for a in attempts if a["problem_id"] != "p1"], drops)
    assert [r["drop_reason"] for r in res.tables["attempts"]] == ["duplicate_problem", "duplicate_problem", None,
                                                                   "truncated"]
    assert res.stats.dropped == {"duplicate_problem": 2} and res.stats.rows_in == 3 and res.stats.rows_out == 1
    assert st.reads["attempts"] == ("attempt_id", "drop_reason", "problem_id")

"""stages.tasks: the built-in generator and the file/dataset loaders, with InputError on bad input."""
import ast
import json
import operator
import re
from fractions import Fraction
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.config import TaskSourceConfig
from schemas.errors import InputError
from schemas.rows import Problem, columns, make_id
from tests.helpers import validate_row
from stages.tasks import builtin_problems, load_problems

# ../shared/data beside the checkout (CI clones with shared/ beside it)
DATA = next((d for d in (Path(__file__).resolve().parents[3] / "shared" / "data", Path("/work/shared/data"))
             if d.exists()), Path("/work/shared/data"))
GSM8K = DATA / "gsm8k_test.jsonl"
MATH500 = DATA / "math500_test.jsonl"
needs_data = pytest.mark.skipif(not GSM8K.exists() or not MATH500.exists(), reason="shared data not present")


# --------------------------------------------------------------------------------------------- builtin

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _eval(expr: str) -> Fraction:
    def ev(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return Fraction(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        raise ValueError(f"unexpected expression {ast.dump(node)}")
    return ev(ast.parse(expr, mode="eval").body)


_EQ = re.compile(r"(\d+(?:\s*[-+*/]\s*\d+)+)\s*=\s*(\d+)")


def test_builtin_gold_answers_follow_from_their_steps():
    for p in builtin_problems(300, seed=7):
        lines = p["reference_solution"].split("\n")
        assert lines[-1] == f"#### {p['reference_answer']}"
        steps = lines[:-1]
        assert 1 <= len(steps) <= 5, p
        values = {}
        last = None
        for line in steps:
            eqs = _EQ.findall(line)
            assert len(eqs) == 1, line  # one calculation per step, written out
            expr, result = eqs[0]
            value = _eval(expr)
            assert value == int(result), f"{line!r}: {expr} is {value}, not {result}"
            assert value.denominator == 1 and value >= 0
            # every operand of a later step is a number from the question or an earlier result
            for num in re.findall(r"\d+", expr):
                assert num in p["question"] or int(num) in values or num in ("2", "3", "100"), (num, p)
            values[int(result)] = line
            last = int(result)
        assert str(last) == p["reference_answer"]
        assert int(p["reference_answer"]) >= 0


def test_builtin_deterministic_distinct_and_complete():
    a = builtin_problems(200, seed=3)
    assert a == builtin_problems(200, seed=3)
    assert builtin_problems(50, seed=3) == a[:50]  # a larger count extends a smaller one
    assert len({p["question"] for p in a}) == 200
    assert len({p["problem_id"] for p in a}) == 200
    b = builtin_problems(200, seed=4)
    assert {p["question"] for p in a} != {p["question"] for p in b}
    p = a[5]
    assert p["problem_id"] == make_id("builtin", 3, 5, prefix="p-")
    assert p["source"] == "builtin:arithmetic" and p["split"] == "train" and p["source_index"] == 5
    assert p["env"] is None and p["env_config_json"] is None and p["parent_ids"] == []
    for p in a:
        assert set(columns(Problem)) - set(p) <= {"run_id", "method", "created_at", "drop_reason"}
        validate_row(p, Problem)
    # every template is in use, with 1 to 5 steps
    qs = " ".join(p["question"] for p in a)
    for kw in ("buys", "shares", "every hour", "Each week", "times as many", "miles per hour", "batch",
               "years old", "% off", "more. How many"):
        assert kw in qs, kw
    assert {len(p["reference_solution"].split("\n")) - 1 for p in a} == {1, 2, 3, 4, 5}
    assert builtin_problems(3, seed=3, split="test")[0]["split"] == "test"


def test_load_builtin_with_limit():
    rows = load_problems(TaskSourceConfig(kind="builtin", count=10, seed=1), limit=4)
    assert rows == builtin_problems(4, 1)


# --------------------------------------------------------------------------------------------- files

def _copy_lines(src: Path, dst: Path, n: int) -> Path:
    with src.open() as f:
        lines = [next(f) for _ in range(n)]
    dst.write_text("".join(lines))
    return dst


@needs_data
def test_load_gsm8k_jsonl(tmp_path):
    path = _copy_lines(GSM8K, tmp_path / "gsm8k_test.jsonl", 20)
    rows = load_problems(TaskSourceConfig(kind="jsonl", path=str(path), split="test"))
    src = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 20
    for i, (r, s) in enumerate(zip(rows, src), start=1):
        assert r["question"] == s["question"] and r["reference_solution"] == s["answer"]
        assert r["reference_answer"] == s["answer"].split("#### ")[-1].replace(",", "").strip()
        assert r["source_index"] == i and r["split"] == "test" and r["source"] == "gsm8k_test.jsonl"
        assert r["problem_id"] == make_id("gsm8k_test.jsonl", "test", i, prefix="p-")
        validate_row(r, Problem)
    assert rows[0]["reference_answer"] == "18"
    assert len(load_problems(TaskSourceConfig(kind="jsonl", path=str(path)), limit=5)) == 5


@needs_data
def test_load_gsm8k_thousands_separator(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"question": "q?", "answer": "a = 1000\n#### 1,000"}) + "\n")
    assert load_problems(TaskSourceConfig(kind="jsonl", path=str(path)))[0]["reference_answer"] == "1000"


@needs_data
def test_load_math500_jsonl_all():
    rows = load_problems(TaskSourceConfig(kind="jsonl", path=str(MATH500), split="test", id_field="unique_id"))
    src = [json.loads(line) for line in MATH500.read_text().splitlines()]
    assert len(rows) == 500
    for r, s in zip(rows, src):
        assert r["question"] == s["problem"] and r["reference_solution"] == s["solution"]
        assert r["reference_answer"] == s["answer"]
    assert rows[0]["reference_answer"] == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert rows[0]["problem_id"] == make_id("math500_test.jsonl", "test", src[0]["unique_id"], prefix="p-")
    assert len({r["problem_id"] for r in rows}) == 500


@needs_data
def test_math_without_answer_field_uses_last_boxed(tmp_path):
    src = [json.loads(line) for line in MATH500.read_text().splitlines()[:30]]
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps({"problem": s["problem"], "solution": s["solution"]}) + "\n" for s in src))
    rows = load_problems(TaskSourceConfig(kind="jsonl", path=str(path)))
    # the official answers were extracted from the same boxed; whitespace may differ
    for r, s in zip(rows, src):
        assert r["reference_answer"].replace(" ", "") == s["answer"].replace(" ", "")


def test_configured_fields(tmp_path):
    path = tmp_path / "custom.jsonl"
    path.write_text(json.dumps({"id": "x1", "prompt": "2+2?", "gold": 4}) + "\n\n" +
                    json.dumps({"id": "x2", "prompt": "3+3?", "gold": "6"}) + "\n")
    cfg = TaskSourceConfig(kind="jsonl", path=str(path), question_field="prompt", answer_field="gold",
                           id_field="id")
    rows = load_problems(cfg)
    assert [r["reference_answer"] for r in rows] == ["4", "6"]
    assert rows[1]["source_index"] == 3  # the blank line is skipped, line numbers stay true
    assert rows[0]["problem_id"] == make_id("custom.jsonl", "train", "x1", prefix="p-")


@needs_data
def test_load_parquet(tmp_path):
    src = [json.loads(line) for line in GSM8K.read_text().splitlines()[:20]]
    path = tmp_path / "g.parquet"
    pq.write_table(pa.Table.from_pylist(src), path)
    rows = load_problems(TaskSourceConfig(kind="parquet", path=str(path), split="test"))
    assert [r["question"] for r in rows] == [s["question"] for s in src]
    assert rows[0]["reference_answer"] == "18" and rows[0]["source_index"] == 1
    m = [json.loads(line) for line in MATH500.read_text().splitlines()[:10]]
    path = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pylist(m), path)
    rows = load_problems(TaskSourceConfig(kind="parquet", path=str(path)))
    assert [r["reference_answer"] for r in rows] == [s["answer"] for s in m]


@needs_data
def test_load_hf_saved_dataset_and_parquet_dir(tmp_path):
    import datasets
    src = [json.loads(line) for line in GSM8K.read_text().splitlines()[:20]]
    saved = tmp_path / "saved"
    datasets.Dataset.from_list(src).save_to_disk(str(saved))
    rows = load_problems(TaskSourceConfig(kind="hf", path=str(saved), split="test"))
    assert len(rows) == 20 and rows[0]["reference_answer"] == "18" and rows[0]["source"] == "saved"
    dd = tmp_path / "saved_dict"
    datasets.DatasetDict({"test": datasets.Dataset.from_list(src[:5])}).save_to_disk(str(dd))
    assert len(load_problems(TaskSourceConfig(kind="hf", path=str(dd), split="test"))) == 5
    with pytest.raises(InputError, match="split 'train'"):
        load_problems(TaskSourceConfig(kind="hf", path=str(dd), split="train"))
    pdir = tmp_path / "pq"
    pdir.mkdir()
    pq.write_table(pa.Table.from_pylist(src), pdir / "train-00000.parquet")
    rows = load_problems(TaskSourceConfig(kind="hf", path=str(pdir), split="train"), limit=7)
    assert len(rows) == 7 and rows[0]["question"] == src[0]["question"]
    jf = _copy_lines(GSM8K, tmp_path / "g.jsonl", 3)
    assert len(load_problems(TaskSourceConfig(kind="hf", path=str(jf), split="test"))) == 3


def test_hf_hub_id_offline_is_a_clear_error(monkeypatch):
    import datasets

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach the Hugging Face Hub")
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(InputError) as e:
        load_problems(TaskSourceConfig(kind="hf", path="openai/gsm8k", split="test"))
    msg = str(e.value)
    assert "openai/gsm8k" in msg and "network" in msg and "local" in msg


# --------------------------------------------------------------------------------------------- bad input

def _write(tmp_path, lines, name="bad.jsonl"):
    p = tmp_path / name
    p.write_text("".join((json.dumps(x) if not isinstance(x, str) else x) + "\n" for x in lines))
    return p


def _load_error(path, **kw):
    with pytest.raises(InputError) as e:
        load_problems(TaskSourceConfig(kind=kw.pop("kind", "jsonl"), path=str(path), **kw))
    return e.value


GOOD = {"question": "What is 2 + 2?", "answer": "2 + 2 = 4\n#### 4"}


def test_missing_file(tmp_path):
    err = _load_error(tmp_path / "nope.jsonl")
    assert "nope.jsonl" in str(err) and "not found" in str(err) and err.path.endswith("nope.jsonl")
    err = _load_error(tmp_path / "nope.parquet", kind="parquet")
    assert "not found" in str(err)


def test_malformed_json_line(tmp_path):
    p = _write(tmp_path, [GOOD, GOOD, '{"question": "x", "answer": ', GOOD])
    err = _load_error(p)
    assert err.line == 3 and err.path == str(p)
    assert f"{p}:3" in str(err) and "malformed JSON" in str(err)


def test_non_object_json_line(tmp_path):
    err = _load_error(_write(tmp_path, [GOOD, [1, 2]]))
    assert err.line == 2 and "expected a JSON object" in str(err) and "list" in str(err)


def test_missing_field(tmp_path):
    err = _load_error(_write(tmp_path, [GOOD, {"question": "q?"}]))
    assert err.line == 2 and err.field == "answer" and "'answer'" in str(err) and "missing" in str(err)
    err = _load_error(_write(tmp_path, [GOOD, {"answer": "#### 3"}]))
    assert err.line == 2 and err.field == "question" and "'question'" in str(err)
    err = _load_error(_write(tmp_path, [{"text": "q?", "label": 3}]))
    assert err.field == "question" and "question_field" in str(err)


def test_wrong_type(tmp_path):
    err = _load_error(_write(tmp_path, [GOOD, GOOD, {"question": 12, "answer": "#### 3"}]))
    assert err.line == 3 and err.field == "question" and "expected string, got int" in str(err)
    err = _load_error(_write(tmp_path, [{"question": ["a", "b"], "answer": "#### 3"}]))
    assert "expected string, got list" in str(err) and err.line == 1
    err = _load_error(_write(tmp_path, [{"question": "q", "answer": {"x": 1}}]))
    assert err.field == "answer" and "got dict" in str(err)


def test_no_extractable_answer(tmp_path):
    err = _load_error(_write(tmp_path, [GOOD, {"question": "q?", "answer": "He has 3 apples.\nSo 3 apples."}]))
    assert err.line == 2 and err.field == "answer" and "no extractable final answer" in str(err)
    err = _load_error(_write(tmp_path, [{"problem": "p?", "solution": "no box here"}]))
    assert err.field == "solution" and "boxed" in str(err)


def test_empty_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert "empty" in str(_load_error(empty))
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n\n  \n")
    assert "empty" in str(_load_error(blank))
    pq.write_table(pa.table({"question": pa.array([], pa.string()), "answer": pa.array([], pa.string())}),
                   tmp_path / "e.parquet")
    assert "empty" in str(_load_error(tmp_path / "e.parquet", kind="parquet"))


def test_bad_parquet_rows_named_by_row(tmp_path):
    p = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist([GOOD, GOOD, {"question": "q", "answer": None}]), p)
    err = _load_error(p, kind="parquet")
    assert err.line == 3 and err.field == "answer" and f"{p}:3" in str(err)
    notpq = tmp_path / "x.parquet"
    notpq.write_text("hello")
    assert "Parquet" in str(_load_error(notpq, kind="parquet"))


def test_first_bad_row_fails_the_whole_load(tmp_path):
    p = _write(tmp_path, [GOOD] * 50 + [{"question": 1, "answer": "#### 1"}] + [GOOD] * 5)
    err = _load_error(p)
    assert err.line == 51
    assert len(load_problems(TaskSourceConfig(kind="jsonl", path=str(p)), limit=10)) == 10  # only what is used


def test_path_required(tmp_path):
    with pytest.raises(InputError, match="tasks.path"):
        load_problems(TaskSourceConfig(kind="jsonl"))


def test_builtin_max_steps_keeps_only_short_problems():
    easy = builtin_problems(40, seed=1, max_steps=2)
    assert len(easy) == 40 and len({p["question"] for p in easy}) == 40
    assert all(len(p["reference_solution"].splitlines()) - 1 <= 2 for p in easy)
    warmups = builtin_problems(30, seed=1, max_steps=1)
    assert all(len(p["reference_solution"].splitlines()) == 2 for p in warmups)
    assert not {p["problem_id"] for p in easy} & {p["problem_id"] for p in builtin_problems(40, seed=1)}

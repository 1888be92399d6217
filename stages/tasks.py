"""Task sources: where problems come from.

- `builtin_problems(count, seed)` (stages/arithmetic.py): seeded arithmetic word problems with gold solutions.
- `load_problems(config)`: dispatch on `TaskSourceConfig.kind`: builtin, jsonl, parquet, hf (`datasets`), env.
- `env_problems(spec, split, count, seed)`: the tasks of an agent environment (the recipe's `env:` section) as
  problems rows: `question` is the task instruction, `env` the env kind, `env_config_json` the env spec and the
  task (stages/envs/spec.py); the reference fields are empty (an env checks success itself).
  (`version`, a published dataset version as input, is read by pipelines/inputs.py: it needs the catalog.)

Files are GSM8K-style (`question`, `answer` ending in `#### N`) or MATH-style (`problem`, `solution` ending in a
`\\boxed{}`, optional `answer`); fields are auto-detected or named in the config. Input is validated in full
before anything runs: the first bad row raises `InputError` naming the file, the 1-based line (JSONL) or row
(Parquet, datasets) and the field.

Every kind's problems then go through `flag_duplicate_problems` (pipelines/inputs.py): a problem whose question
repeats an earlier one's (normalized text; for env tasks, the same env and task config too) gets
`drop_reason = duplicate_problem` on every copy but the first (in source order), unless `keep_duplicates`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Optional

from pydantic import Field, model_validator

from schemas.errors import InputError
from schemas.rows import make_id
from stages.answers import reference_answer_from_solution
from stages.arithmetic import BUILTIN_SOURCE, builtin_problems
from stages.options import Options

__all__ = ["builtin_problems", "load_problems", "problems_from_records", "BUILTIN_SOURCE", "TaskSourceConfig",
           "flag_duplicate_problems", "problem_key", "DUPLICATE_PROBLEM"]

DUPLICATE_PROBLEM = "duplicate_problem"


class TaskSourceConfig(Options):
    kind: Literal["builtin", "jsonl", "parquet", "hf", "version", "env"] = Field(
        "builtin", description="builtin: seeded arithmetic word problems; jsonl/parquet: GSM8K/MATH-style file; "
                               "hf: a `datasets` dataset (local path, or hub id when online); version: rows of a "
                               "published errata version (with their problems); env: the tasks of the recipe's "
                               "agent environment (`env:` section)")
    path: Optional[str] = Field(None, description="file path (jsonl/parquet) or dataset path/hub id (hf)")
    split: str = Field("train", description="split name recorded on problems (and loaded, for hf and env)")
    count: int = Field(64, ge=1, description="builtin/env: how many problems (tasks) to make")
    seed: int = Field(0, description="builtin/env: generator seed (same seed, same problems; env: 0 = the "
                                     "split's first tasks, else tasks drawn by it)")
    max_steps: Optional[int] = Field(None, ge=1, description="builtin: only problems whose gold solution has at "
                                                             "most this many steps (1 = one-operation warm-ups)")
    question_field: Optional[str] = Field(None, description="field holding the question; auto: question|problem")
    answer_field: Optional[str] = Field(
        None, description="field holding the final answer or a solution ending in '#### N' / \\boxed{}; "
                          "auto: answer")
    solution_field: Optional[str] = Field(None, description="field holding the worked solution; auto: "
                                                            "solution, else the answer field")
    id_field: Optional[str] = Field(None, description="field holding a source id; default: line/row number")
    ref: Optional[str] = Field(None, description="version: DATASET (latest) or DATASET@N to read from")
    table: str = Field("problems", description="version: the table whose rows feed the recipe (their problems "
                                               "come along)")
    where: Optional[str] = Field(None, description="version: a read-only SQL condition on that table's rows, "
                                                   "e.g. \"is_correct = false\"")
    keep_duplicates: bool = Field(False, description="keep problems whose question repeats an earlier problem's "
                                                     "(same text once whitespace and case are normalized; env "
                                                     "tasks: and the same task config). Default: every copy but "
                                                     "the first is flagged drop_reason=duplicate_problem, counted, "
                                                     "and no stage works on it")

    @model_validator(mode="before")
    @classmethod
    def _kind_from_path(cls, data: Any) -> Any:
        """A `path` given over the default (or a recipe's) builtin source means a file: its kind follows the
        suffix (.jsonl/.json -> jsonl, .parquet -> parquet), so `--set tasks.path=gsm8k_train.jsonl` reads that
        file; another suffix is an error rather than a path silently ignored."""
        if isinstance(data, dict) and data.get("path") and data.get("kind", "builtin") == "builtin":
            suffix = str(data["path"]).lower().rsplit(".", 1)[-1]
            kind = {"jsonl": "jsonl", "json": "jsonl", "parquet": "parquet"}.get(suffix)
            if kind is None:
                raise ValueError(f"path {data['path']!r} is set but kind is builtin (which reads no file): set kind "
                                 f"to jsonl, parquet or hf")
            data = {**data, "kind": kind}
        return data

# ---------------------------------------------------------------------------------------------------------------
# File and dataset sources
# ---------------------------------------------------------------------------------------------------------------

_QUESTION_FIELDS = ("question", "problem")
_ANSWER_FIELDS = ("answer",)
_SOLUTION_FIELDS = ("solution",)


def _type_name(v: Any) -> str:
    return type(v).__name__


def _detect(first: dict, configured: Optional[str], candidates: tuple[str, ...]) -> Optional[str]:
    if configured:
        return configured
    return next((c for c in candidates if c in first), None)


class _RowParser:
    """Turns one source record into a Problem row; raises InputError naming path/line/field."""

    def __init__(self, config, source: str, path: str, first: dict, where: str, questions_only: bool = False):
        self.config, self.source, self.path, self.where = config, source, path, where
        self.questions_only = questions_only     # an evaluation set: the question (and id) is all that is read
        self.q_field = _detect(first, config.question_field, _QUESTION_FIELDS)
        self.a_field = _detect(first, config.answer_field, _ANSWER_FIELDS)
        self.s_field = _detect(first, config.solution_field, _SOLUTION_FIELDS)
        if self.q_field is None:
            raise InputError(f"no question field: the first {where} has fields {sorted(first)}; expected one of "
                             f"{list(_QUESTION_FIELDS)} (or set tasks.question_field)", path=path, line=1,
                             field="question")
        if self.a_field is None and self.s_field is None and not questions_only:
            raise InputError(f"no answer field: the first {where} has fields {sorted(first)}; expected "
                             f"'answer' (GSM8K '#### N' or a final answer) or 'solution' with a \\boxed{{}} "
                             f"(or set tasks.answer_field / tasks.solution_field)", path=path, line=1,
                             field="answer")

    def _get(self, rec: dict, field: str, line: int, *, required: bool, kinds: tuple[type, ...] = (str,)):
        if field not in rec or rec[field] is None:
            if required:
                raise InputError(f"missing field '{field}' (the {self.where} has {sorted(rec)})", path=self.path,
                                 line=line, field=field)
            return None
        v = rec[field]
        if isinstance(v, bool) or not isinstance(v, kinds):
            want = " or ".join(k.__name__ for k in kinds)
            raise InputError(f"expected {'string' if kinds == (str,) else want}, got {_type_name(v)} "
                             f"({str(v)[:60]!r})", path=self.path, line=line, field=field)
        return v

    def parse(self, rec: Any, line: int, index: int) -> dict:
        if not isinstance(rec, dict):
            raise InputError(f"expected a JSON object per {self.where}, got {_type_name(rec)}", path=self.path,
                             line=line)
        question = self._get(rec, self.q_field, line, required=True)
        if not question.strip():
            raise InputError("question is empty", path=self.path, line=line, field=self.q_field)
        if self.questions_only:
            return self._row(rec, line, index, question, None, "")
        solution = None
        if self.s_field:
            solution = self._get(rec, self.s_field, line, required=self.a_field is None)
        answer_raw = None
        if self.a_field:
            answer_raw = self._get(rec, self.a_field, line, required=solution is None, kinds=(str, int, float))
        if answer_raw is not None and not isinstance(answer_raw, str):
            answer_raw = str(answer_raw)
        reference: Optional[str]
        if answer_raw is not None and answer_raw.strip():
            if "####" in answer_raw or "\\boxed" in answer_raw or "\n" in answer_raw.strip():
                # a worked solution in the answer field (GSM8K: steps, then '#### N')
                reference = reference_answer_from_solution(answer_raw)
                if not reference:
                    raise InputError(f"no extractable final answer: expected a '#### N' line or a \\boxed{{...}} "
                                     f"(got ...{answer_raw[-80:]!r})", path=self.path, line=line,
                                     field=self.a_field)
                if solution is None:
                    solution = answer_raw
            else:  # a final answer (MATH: 'answer' next to 'solution')
                reference = answer_raw.strip()
        else:  # no answer given: take it from the solution's last \boxed{}
            reference = reference_answer_from_solution(solution) if solution else None
            if not reference:
                field = self.s_field if solution is not None else self.a_field
                text = solution if solution is not None else (answer_raw or "")
                raise InputError(f"no extractable final answer: expected a '#### N' line or a \\boxed{{...}} "
                                 f"(got ...{text[-80:]!r})", path=self.path, line=line, field=field)
        return self._row(rec, line, index, question, solution, reference)

    def _row(self, rec: dict, line: int, index: int, question: str, solution: Optional[str],
             reference: Optional[str]) -> dict:
        ident: Any = index
        if self.config.id_field:
            ident = self._get(rec, self.config.id_field, line, required=True, kinds=(str, int))
        return {
            **({"source_id": str(ident)} if self.questions_only else {}),   # an evaluation item's id as given
            "problem_id": make_id(self.source, self.config.split, ident, prefix="p-"),
            "source": self.source,
            "split": self.config.split,
            "source_index": index,
            "question": question,
            "reference_solution": solution,
            "reference_answer": reference,
            "env": None,
            "env_config_json": None,
            "parent_ids": [],
        }


def problems_from_records(records: Iterable[tuple[int, Any]], config, *, source: str, path: str,
                          where: str = "row", limit: Optional[int] = None, questions_only: bool = False
                          ) -> list[dict]:
    """Validate and convert (1-based position, record) pairs. Fails on the first bad record. `questions_only`: read
    the question (and id) alone, no answer needed (an evaluation set)."""
    out: list[dict] = []
    if limit is not None and limit <= 0:
        return out
    parser: Optional[_RowParser] = None
    for pos, rec in records:
        if limit is not None and len(out) >= limit:
            break
        if parser is None:
            if not isinstance(rec, dict):
                raise InputError(f"expected a JSON object per {where}, got {_type_name(rec)}", path=path,
                                 line=pos)
            parser = _RowParser(config, source, path, rec, where, questions_only)
        out.append(parser.parse(rec, pos, pos))
    if not out:
        raise InputError(f"no problems: the input is empty (no {where}s with data)", path=path)
    return out


def _check_file(path: Optional[str], kind: str) -> Path:
    if not path:
        raise InputError(f"tasks.kind={kind} needs tasks.path", field="tasks.path")
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError("file not found", path=str(path))
    if p.is_dir():
        raise InputError(f"is a directory, expected a {kind} file (use tasks.kind=hf for a dataset directory)",
                         path=str(path))
    return p


def _jsonl_records(p: Path) -> Iterator[tuple[int, Any]]:
    with p.open("r", encoding="utf-8") as f:
        lineno = 0
        while True:
            try:
                line = f.readline()
            except UnicodeDecodeError as e:
                raise InputError(f"not UTF-8 text: {e.reason}", path=str(p), line=lineno + 1) from None
            if not line:
                return
            lineno += 1
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"malformed JSON: {e.msg} at column {e.colno}", path=str(p),
                                 line=lineno) from None
            yield lineno, rec


def _parquet_records(p: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq
    try:
        pf = pq.ParquetFile(p)
    except Exception as e:  # pyarrow raises ArrowInvalid on a non-Parquet file
        raise InputError(f"not a readable Parquet file: {e}", path=str(p)) from None
    n = 0
    for batch in pf.iter_batches(batch_size=4096):
        for rec in batch.to_pylist():
            n += 1
            yield n, rec


def _load_hf(config, limit: Optional[int], questions_only: bool = False) -> list[dict]:
    path = config.path
    if not path:
        raise InputError("tasks.kind=hf needs tasks.path (a local dataset path or a hub id)", field="tasks.path")
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - datasets is a dependency
        raise InputError(f"the 'datasets' package is needed for tasks.kind=hf: {e}") from None
    p = Path(path).expanduser()
    split = config.split
    try:
        if p.is_dir() and ((p / "state.json").exists() or (p / "dataset_dict.json").exists()):
            ds = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise InputError(f"split '{split}' not in the saved dataset (splits: {sorted(ds)})",
                                     path=path, field="split")
                ds = ds[split]
        elif p.is_file():
            builder = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}.get(p.suffix)
            if builder is None:
                raise InputError(f"unknown file type '{p.suffix}' for tasks.kind=hf (use .jsonl/.json/.parquet/.csv, "
                                 f"or tasks.kind=jsonl/parquet)", path=path)
            ds = datasets.load_dataset(builder, data_files={split: str(p)}, split=split)
        elif p.exists():
            ds = datasets.load_dataset(str(p), split=split)
        else:
            ds = datasets.load_dataset(path, split=split)
    except InputError:
        raise
    except ValueError as e:
        if "split" in str(e).lower():
            raise InputError(f"split '{split}' not found: {e}", path=path, field="split") from None
        raise InputError(f"could not load dataset: {e}", path=path) from None
    except Exception as e:
        where = "local path" if p.exists() else "hub id (not a local path; loading from the hub needs network " \
                                                "access, so offline use a local copy)"
        raise InputError(f"could not load dataset as a {where}: {type(e).__name__}: {e}", path=path) from None
    source = p.name if p.exists() else path
    records = ((i + 1, rec) for i, rec in enumerate(ds))
    return problems_from_records(records, config, source=source, path=path, where="row", limit=limit,
                                 questions_only=questions_only)


def env_problems(spec, split: str, count: int, seed: int = 0) -> list[dict]:
    """`count` tasks of `split` of the env `spec` (an EnvSpec) as problems rows. ConfigError on a bad env spec."""
    from stages.envs.spec import task_record
    d = spec.as_dict()
    source = f"env:{spec.kind}" + (f":{spec.class_path}" if spec.class_path else "")
    out = []
    for i, task in enumerate(spec.tasks(split, count, seed)):
        record = task_record(d, task)
        out.append({"problem_id": make_id(record, prefix="p-"), "source": source, "split": task.split,
                    "source_index": i, "question": task.instruction, "reference_solution": None,
                    "reference_answer": "", "env": spec.kind, "env_config_json": record, "parent_ids": []})
    return out


def load_problems(config, limit: Optional[int] = None, env=None, questions_only: bool = False) -> list[dict]:
    """Problems of a task source (`TaskSourceConfig`), at most `limit`; `env` (an EnvSpec) for kind env.
    `questions_only` (files and datasets): no answer needed, none read. Raises InputError on bad input."""
    kind = config.kind
    if kind == "env":
        if env is None:
            raise InputError("tasks.kind=env needs the recipe's `env:` section", field="env")
        n = config.count if limit is None else min(config.count, limit)
        return env_problems(env, config.split, n, config.seed)
    if kind == "builtin":
        n = config.count if limit is None else min(config.count, limit)
        return builtin_problems(n, config.seed, config.split, config.max_steps)
    if kind == "jsonl":
        p = _check_file(config.path, kind)
        return problems_from_records(_jsonl_records(p), config, source=p.name, path=str(config.path),
                                     where="line", limit=limit, questions_only=questions_only)
    if kind == "parquet":
        p = _check_file(config.path, kind)
        return problems_from_records(_parquet_records(p), config, source=p.name, path=str(config.path),
                                     where="row", limit=limit, questions_only=questions_only)
    if kind == "hf":
        return _load_hf(config, limit, questions_only)
    raise InputError(f"unknown task source kind '{kind}'", field="tasks.kind")


def problem_key(problem: dict) -> str:
    """What two problems are compared on: the question, whitespace collapsed and case folded; for an env task also
    its env, task config and seed, what `reset` starts the episode from (the same instruction in another world, or
    another seed of the same game, is another task)."""
    from stages.filter import normalize_text
    key = normalize_text(problem.get("question"))
    record = problem.get("env_config_json")
    if problem.get("env") and record:
        try:
            d = json.loads(record)
            task = d.get("task") or {}
            cfg = {k: v for k, v in d.items() if k != "task"}
            key += "\x1f" + json.dumps([cfg, task.get("config"), task.get("seed")], sort_keys=True, default=str)
        except (ValueError, AttributeError):
            key += "\x1f" + record
    return key


def flag_duplicate_problems(problems: list[dict]) -> int:
    """Set drop_reason = duplicate_problem on every live problem whose key (`problem_key`) an earlier live problem
    has (list order is source order). Returns how many were flagged. Rows already dropped are left as they are."""
    seen: set[str] = set()
    flagged = 0
    for p in problems:
        if p.get("drop_reason"):
            continue
        key = problem_key(p)
        if key in seen:
            p["drop_reason"] = DUPLICATE_PROBLEM
            flagged += 1
        else:
            seen.add(key)
    return flagged

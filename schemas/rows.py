"""Row types: one per arrow of the data walk, each with the Arrow schema derived from it.

Rows are plain dicts at run time (that is what Ray, Arrow and DuckDB move around); these dataclasses are the
contract: field names, types and meaning. `arrow_schema(Problem)` gives the Parquet schema of the table.
Every row carries lineage: run_id, method, created_at and the ids of its parents.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

import pyarrow as pa


def make_id(*parts: Any, prefix: str = "") -> str:
    """A stable id from its inputs: the same problem/sample always gets the same id (resume never duplicates)."""
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:16]
    return f"{prefix}{h}"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass
class Lineage:
    run_id: str = field(default="", metadata={"doc": "build run that wrote the row"})
    method: str = field(default="", metadata={"doc": "recipe method, e.g. sample_verify, lemma"})
    created_at: Optional[dt.datetime] = field(default=None, metadata={"doc": "UTC time the row was made"})
    parent_ids: list[str] = field(default_factory=list, metadata={"doc": "ids of the rows this one was made from"})


@dataclass
class Step:
    """One step of a math solution, as `stages.steps.split_solution` splits it (see `stages.steps.step_rows`). Every
    column that names a step (`first_error_step` of judgements, injections and revisions) names its `idx`."""
    idx: int = field(metadata={"doc": "1-based step number, as a judge is shown it (\"Step idx: ...\"); in DuckDB "
                                      "`steps[idx]` is this step"})
    text: str = field(metadata={"doc": "the step as written: its exact text in the solution, a leading step marker "
                                       "kept"})
    action: Optional[str] = field(default=None, metadata={"doc": "environment action (agent methods)"})
    observation: Optional[str] = field(default=None, metadata={"doc": "environment reply (agent methods)"})


@dataclass
class Problem(Lineage):
    problem_id: str = field(default="", metadata={"doc": "stable id of the problem"})
    source: str = field(default="", metadata={"doc": "where it came from: builtin:arithmetic, a file, a hub id"})
    split: str = field(default="train", metadata={"doc": "split of the source"})
    source_index: int = field(default=0, metadata={"doc": "row/line index in the source (1-based for files)"})
    question: str = field(default="", metadata={"doc": "the problem text"})
    reference_solution: Optional[str] = field(default=None, metadata={"doc": "gold worked solution"})
    reference_answer: str = field(default="", metadata={"doc": "gold final answer, extracted"})
    env: Optional[str] = field(default=None, metadata={"doc": "agent environment name (agent methods)"})
    env_config_json: Optional[str] = field(default=None, metadata={"doc": "agent environment config, JSON"})
    gold_steps_json: Optional[str] = field(default=None, metadata={
        "doc": "built-in problems: the gold solution's steps as operations over question values and earlier "
               "results, JSON (what the programmatic error injector mutates; each step's `index` is 1-based)"})
    drop_reason: Optional[str] = field(default=None, metadata={
        "doc": "why no stage works on it; null = kept. duplicate_problem: its question repeats an earlier problem's "
               "(task loading); contaminated:<set>, near_duplicate: the cleaning stages"})


@dataclass
class Attempt(Lineage):
    attempt_id: str = field(default="", metadata={"doc": "stable id of the attempt"})
    problem_id: str = field(default="", metadata={"doc": "the problem attempted"})
    sample_index: int = field(default=0, metadata={"doc": "which of the n samples"})
    model: str = field(default="", metadata={"doc": "model that wrote it"})
    engine: str = field(default="", metadata={"doc": "engine kind: vllm, openai, transformers, fake"})
    sampling_json: str = field(default="", metadata={"doc": "sampling parameters, JSON"})
    prompt_template: str = field(default="", metadata={"doc": "prompt template name@version"})
    prompt: str = field(default="", metadata={"doc": "the user message sent"})
    completion: str = field(default="", metadata={"doc": "raw model text"})
    finish_reason: Optional[str] = field(default=None, metadata={"doc": "stop, length, ..."})
    prompt_tokens: int = field(default=0, metadata={"doc": "prompt tokens"})
    completion_tokens: int = field(default=0, metadata={"doc": "completion tokens"})
    steps: list[Step] = field(default_factory=list, metadata={
        "doc": "the completion split into steps by stages.steps.split_solution (the split a judge is shown), idx "
               "from 1"})
    final_answer: Optional[str] = field(default=None, metadata={"doc": "answer parsed from the completion"})
    answer_parse_ok: bool = field(default=False, metadata={"doc": "an answer could be parsed"})
    is_correct: Optional[bool] = field(default=None, metadata={"doc": "verified against the reference; null if not checked"})
    reward: Optional[float] = field(default=None, metadata={"doc": "1.0 correct, 0.0 wrong, null unchecked"})
    verifier: Optional[str] = field(default=None, metadata={"doc": "rule (math-verify), env or llm"})
    drop_reason: Optional[str] = field(default=None, metadata={"doc": "why the filter dropped it; null = kept"})


@dataclass
class Judgement(Lineage):
    judgement_id: str = field(default="", metadata={"doc": "stable id of the judgement"})
    target_table: str = field(default="attempts", metadata={"doc": "table of the judged row (attempts, injections, "
                                                                            "nodes)"})
    target_id: str = field(default="", metadata={"doc": "id of the judged row"})
    problem_id: str = field(default="", metadata={"doc": "problem of the judged row"})
    judge_model: str = field(default="", metadata={"doc": "model that judged"})
    judge_role: str = field(default="", metadata={"doc": "self (the model judges its own text), teacher, critic"})
    prompt_template: str = field(default="", metadata={"doc": "prompt template name@version"})
    verdict: Optional[str] = field(default=None, metadata={
        "doc": "what the judge said, parsed: correct / incorrect (whole-solution checks), located / says_correct "
               "(first-error judges), good / bad / uncertain (one agent step, target_table nodes), unparsed"})
    steps: list[Step] = field(default_factory=list, metadata={
        "doc": "the numbered steps the judge was shown (idx from 1, text as in the judged solution; the prompt shows "
               "it as \"Step idx: ...\" without its own marker): the judged row's text split by "
               "stages.steps.split_solution. Empty when the judge saw no numbered steps (self-check reviews the "
               "whole solution; agent step judgements judge one tree node)"})
    first_error_step: Optional[int] = field(default=None, metadata={
        "doc": "1-based step the judge names as the first wrong one: an idx of `steps`, so the same step as the "
               "judged attempt's `steps` idx (or the judged injection's `first_error_step`). Agent step judgements "
               "(target_table nodes): the judged node's depth when the verdict is bad, its action being the "
               "depth-th of its path from the root (1-based too)"})
    error_type: Optional[str] = field(default=None, metadata={"doc": "error-type label the judge chose"})
    type_parse_ok: Optional[bool] = field(default=None, metadata={"doc": "the error type could be parsed"})
    raw_text: str = field(default="", metadata={"doc": "the judge's text as written"})
    parse_ok: bool = field(default=False, metadata={"doc": "the verdict could be parsed (unparsed is never bad)"})
    parse_error: Optional[str] = field(default=None, metadata={"doc": "why parsing failed"})
    drop_reason: Optional[str] = field(default=None, metadata={"doc": "why it was dropped; null = kept"})


@dataclass
class ErrorRecord(Lineage):
    error_id: str = field(default="", metadata={"doc": "id of this record"})
    row_id: str = field(default="", metadata={"doc": "id of the failed row (in `table`)"})
    table: str = field(default="", metadata={"doc": "table of the failed row (the stage's input)"})
    problem_id: Optional[str] = field(default=None, metadata={"doc": "problem the row belongs to"})
    stage: str = field(default="", metadata={"doc": "stage where it failed"})
    reason: str = field(default="", metadata={"doc": "short tag: prompt_too_long, checker_timeout, ..."})
    message: str = field(default="", metadata={"doc": "human-readable detail"})
    raw_input: Optional[str] = field(default=None, metadata={"doc": "what the stage got (JSON/text)"})
    raw_output: Optional[str] = field(default=None, metadata={"doc": "what it produced, if anything"})


def _arrow_type(tp: Any) -> pa.DataType:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _arrow_type(args[0])
    if origin is list:
        return pa.list_(_arrow_type(typing.get_args(tp)[0]))
    if dataclasses.is_dataclass(tp):
        return pa.struct([pa.field(f.name, _arrow_type(h)) for f, h in _fields(tp)])
    return {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_(),
            dt.datetime: pa.timestamp("us", tz="UTC")}[tp]


def _fields(cls: type):
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls)]


def arrow_schema(cls: type) -> pa.Schema:
    """The Arrow (Parquet) schema of a row type, field docs kept as field metadata."""
    return pa.schema([pa.field(f.name, _arrow_type(h), metadata={"doc": f.metadata.get("doc", "")})
                      for f, h in _fields(cls)])


def columns(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def ipc_bytes(table: pa.Table) -> bytes:
    """A table as Arrow IPC stream bytes (how stages hand tables to each other through Ray)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def from_ipc_bytes(blob: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(blob)).read_all()


def to_table(rows: list[dict], cls: type) -> pa.Table:
    """Rows (dicts) to an Arrow table of the row type's schema; unknown keys are ignored, missing ones null."""
    schema = arrow_schema(cls)
    names = schema.names
    return pa.Table.from_pylist([{k: r.get(k) for k in names} for r in rows], schema=schema)


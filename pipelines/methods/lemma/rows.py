"""Row types of LEMMA: injected errors, revisions, and the
build-scope error-type weights the LLM injector samples from.

- `injections`: an erroneous solution made on purpose, by a teacher model (source ``llm``) or by the programmatic
  injector of built-in arithmetic problems (source ``rules``), with its raw text, parsed fields and parse_ok; its
  answer is verified like an attempt's and it is kept only when verified **wrong**. Rules injections carry the
  exact first wrong step (`first_error_step`, `first_error_source` = ``rules``).
- `revisions`: `strategy` (fix_continue, fresh_restart), `segments` ({text, author, loss}, joined they give `text`),
  the teacher call that wrote it, the final answer and verification, and ids back to the judgement, attempt or
  injection it revises. A revision that could not be made or failed a check stays in the table with its
  `drop_reason`.
- `error_type_weights` (build scope): per error type, the weight the LLM injector gives it, and how it was chosen.

SQL join from a revision to its problem::

    SELECT r.revision_id, r.strategy, j.first_error_step, j.error_type, a.completion, p.question
    FROM revisions r
    LEFT JOIN judgements j ON j.judgement_id = r.judgement_id
    LEFT JOIN attempts a ON a.attempt_id = r.attempt_id
    JOIN problems p ON p.problem_id = r.problem_id
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from schemas.revision_rows import RevisionColumns
from schemas.rows import Lineage
from schemas.registry import TableSpec, register_table


@dataclass
class Injection(Lineage):
    injection_id: str = field(default="", metadata={"doc": "stable id of the injected solution"})
    problem_id: str = field(default="", metadata={"doc": "the problem"})
    source: str = field(default="", metadata={"doc": "llm (a teacher wrote it) or rules (programmatic)"})
    error_type: str = field(default="", metadata={"doc": "the error type asked for (taxonomy label)"})
    sample_index: int = field(default=0, metadata={"doc": "which sample of this (problem, type)"})
    model: str = field(default="", metadata={"doc": "model that wrote it; rules rows: rules:arithmetic"})
    prompt_template: Optional[str] = field(default=None, metadata={"doc": "prompt template name@version (llm)"})
    prompt: Optional[str] = field(default=None, metadata={"doc": "the user message sent (llm)"})
    raw_text: str = field(default="", metadata={"doc": "the teacher's text as written (rules: the solution)"})
    solution: str = field(default="", metadata={"doc": "the erroneous solution, parsed out of raw_text"})
    explanation: Optional[str] = field(default=None, metadata={"doc": "the teacher's (or the rules') explanation"})
    parse_ok: bool = field(default=False, metadata={"doc": "a solution with a final answer and an explanation "
                                                           "could be parsed"})
    parse_error: Optional[str] = field(default=None, metadata={"doc": "why parsing failed"})
    finish_reason: Optional[str] = field(default=None, metadata={"doc": "stop, length, ... (llm)"})
    prompt_tokens: int = field(default=0, metadata={"doc": "prompt tokens (llm)"})
    completion_tokens: int = field(default=0, metadata={"doc": "completion tokens (llm)"})
    first_error_step: Optional[int] = field(default=None, metadata={
        "doc": "rules rows: the exact 1-based first wrong step of `solution` (as stages.steps splits it)"})
    first_error_source: Optional[str] = field(default=None, metadata={"doc": "rules (exact) or null"})
    injected_at: Optional[int] = field(default=None, metadata={
        "doc": "rules rows: the 1-based gold step mutated (an index of problems.gold_steps_json; the same as "
               "first_error_step except for missing_step errors)"})
    reference_revision_json: Optional[str] = field(default=None, metadata={
        "doc": "rules rows: the fix & continue revision written from the gold steps (segments JSON)"})
    final_answer: Optional[str] = field(default=None, metadata={"doc": "answer parsed from the solution"})
    answer_parse_ok: bool = field(default=False, metadata={"doc": "an answer could be parsed"})
    is_correct: Optional[bool] = field(default=None, metadata={"doc": "verified against the reference (an "
                                                                      "injection is kept only when False)"})
    reward: Optional[float] = field(default=None, metadata={"doc": "1.0 correct, 0.0 wrong, null unchecked"})
    verifier: Optional[str] = field(default=None, metadata={"doc": "math_verify"})
    drop_reason: Optional[str] = field(default=None, metadata={"doc": "why it was dropped; null = kept"})


@dataclass
class ErrorTypeWeight(Lineage):
    weight_id: str = field(default="", metadata={"doc": "id: the mode and the error type"})
    error_type: str = field(default="", metadata={"doc": "an injection type (taxonomy label)"})
    mode: str = field(default="", metadata={"doc": "measured, uniform or explicit"})
    count: int = field(default=0, metadata={"doc": "located judgements of student attempts of this type (the "
                                                   "measured distribution; mapped to the injection types)"})
    weight: float = field(default=0.0, metadata={"doc": "share of injection requests (sums to 1)"})


@dataclass
class Revision(RevisionColumns):
    """A LEMMA revision: the erroneous prefix, a transition, the teacher's (or the rules') fix and continuation
    or fresh restart, as segments with loss flags; verified like an attempt."""
    text: Optional[str] = field(default=None, metadata={"doc": "text methods: the revision text (segments "
                                                               "joined); null for conversation methods"})
    final_answer: Optional[str] = field(default=None, metadata={"doc": "final answer (math); null for agents"})
    answer_parse_ok: bool = field(default=False, metadata={"doc": "math: an answer could be parsed"})
    is_correct: Optional[bool] = field(default=None, metadata={"doc": "the revised trajectory is right (math: "
                                                                      "verified against the reference; agents: "
                                                                      "the good leaf's env success)"})
    reward: Optional[float] = field(default=None, metadata={"doc": "math: 1.0 correct, 0.0 wrong, null unchecked"})
    verifier: Optional[str] = field(default=None, metadata={"doc": "math: the verifier that checked it"})
    drop_reason: Optional[str] = field(default=None, metadata={"doc": "why a stage dropped it; null = kept"})
    model: Optional[str] = field(default=None, metadata={"doc": "who wrote the continuation: a teacher model or "
                                                                "rules:arithmetic"})
    prompt_template: Optional[str] = field(default=None, metadata={"doc": "prompt template name@version"})
    prompt: Optional[str] = field(default=None, metadata={"doc": "the user message sent to the teacher"})
    raw_text: Optional[str] = field(default=None, metadata={"doc": "the teacher's text as written"})
    check_reason: Optional[str] = field(default=None, metadata={
        "doc": "why the teacher's text failed the revision checks (prefix_changed, no_transition, "
               "mentions_forbidden, ...); null = it passed"})
    finish_reason: Optional[str] = field(default=None, metadata={"doc": "stop, length, ..."})
    prompt_tokens: int = field(default=0, metadata={"doc": "prompt tokens"})
    completion_tokens: int = field(default=0, metadata={"doc": "completion tokens"})
    error_source: Optional[str] = field(default=None, metadata={"doc": "LEMMA: self (a student's wrong attempt) or "
                                                                       "injected"})
    attempt_id: Optional[str] = field(default=None, metadata={"doc": "the wrong attempt revised (error_source self)"})
    injection_id: Optional[str] = field(default=None, metadata={"doc": "the injection revised (error_source "
                                                                       "injected)"})
    judgement_id: Optional[str] = field(default=None, metadata={"doc": "the judgement that located the error "
                                                                       "(null: the rules' exact step)"})
    first_error_step: Optional[int] = field(default=None, metadata={
        "doc": "1-based first wrong step revised from (stages.steps.split_solution's numbering: the judgement's "
               "`first_error_step`, or the rules injection's exact one)"})
    error_type: Optional[str] = field(default=None, metadata={"doc": "error type (judge's or injected)"})
    erroneous_prefix: Optional[str] = field(default=None, metadata={"doc": "the erroneous text through the first "
                                                                           "wrong step, verbatim"})
    transition: Optional[str] = field(default=None, metadata={"doc": "the transition phrase asked for"})
    restart_reference: Optional[str] = field(default=None, metadata={
        "doc": "fresh_restart: student_sample (one of the student's own correct samples) or reference_solution"})
    restart_attempt_id: Optional[str] = field(default=None, metadata={"doc": "fresh_restart: the correct sample"})
    smoothed_from: Optional[str] = field(default=None, metadata={
        "doc": "a smoothed variant: the kept revision it rewrites (its prefix is then no longer verbatim); null for "
               "an original revision"})


INJECTIONS = register_table(TableSpec(
    "injections", Injection, "injection_id", ("problem_id",),
    description="erroneous solutions made on purpose (teacher or rules), verified, kept only when wrong"))
ERROR_TYPE_WEIGHTS = register_table(TableSpec(
    "error_type_weights", ErrorTypeWeight, "weight_id", scope="build",
    description="how the LLM injector weights error types over the whole build (measured, uniform, explicit)"))
REVISIONS = register_table(TableSpec(
    "revisions", Revision, "revision_id", ("problem_id", "attempt_id", "injection_id", "judgement_id"),
    description="LEMMA's revisions (segments with per-part loss flags): fix & continue and fresh & restart, verified"))

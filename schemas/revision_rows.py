"""The shared `revisions` table: one revised trajectory per row, as segments with a per-segment loss flag.

Every method that revises writes here (LEMMA's fix & continue / fresh & restart and their smoothed variants,
Agent-R's splices and good trajectories, ...). Columns come in three groups:

- general, filled by every method: revision_id, strategy, kind, problem_id, segments [{text, author, loss}],
  final_answer, is_correct, drop_reason and the lineage columns (run_id, method, created_at, parent_ids).
  Text methods fill `text` (the segments joined); conversation methods fill `messages` [{role, content, loss}]
  (the same text with roles) and leave `text` null.
- LEMMA (math), null elsewhere: error_source, attempt_id, injection_id, judgement_id, first_error_step,
  error_type, erroneous_prefix, transition, restart_*, smoothed_from, the teacher call (model, prompt, raw_text,
  check_reason, tokens) and the verifier's columns.
- Agent-R (agents), null elsewhere: env, task_id, iteration, tree_id, pair_id, the leaves, depths, the judge's
  status and the revision signal.

The loss flag of every segment and message is kept end to end: no converter may drop it
(tests/unit/test_agent_r*.py and tests/unit/test_lemma_build.py fail if one does).

SQL join from a LEMMA revision to its problem::

    SELECT r.revision_id, r.strategy, j.first_error_step, j.error_type, a.completion, p.question
    FROM revisions r
    LEFT JOIN judgements j ON j.judgement_id = r.judgement_id
    LEFT JOIN attempts a ON a.attempt_id = r.attempt_id
    JOIN problems p ON p.problem_id = r.problem_id
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from schemas.agent_rows import Message
from schemas.rows import Lineage
from schemas.registry import TableSpec, register_table


@dataclass
class Segment:
    text: str = field(metadata={"doc": "the segment's text (a text revision's segments joined with '' give `text`)"})
    author: str = field(metadata={"doc": "who wrote it: model (the erroneous part, as the model wrote it), "
                                         "template (a transition phrase / revision signal), teacher (an LLM's fix), "
                                         "rules (programmatic), env (an observation)"})
    loss: bool = field(default=False, metadata={"doc": "a model should learn this segment"})


@dataclass
class Revision(Lineage):
    # general
    revision_id: str = field(default="", metadata={"doc": "stable id of the revision"})
    strategy: str = field(default="", metadata={"doc": "fix_continue, fresh_restart (LEMMA), splice (Agent-R); "
                                                       "Agent-R's good trajectories: none"})
    kind: str = field(default="revision", metadata={"doc": "revision (a revised trajectory) or good (a "
                                                           "trajectory kept as it is, full loss)"})
    problem_id: str = field(default="", metadata={"doc": "the problem / env task"})
    segments: list[Segment] = field(default_factory=list, metadata={"doc": "the text in order, each with its "
                                                                           "author and loss flag"})
    text: Optional[str] = field(default=None, metadata={"doc": "text methods: the revision text (segments "
                                                               "joined); null for conversation methods"})
    messages: list[Message] = field(default_factory=list, metadata={"doc": "conversation methods: the same text "
                                                                           "as messages with roles and loss"})
    final_answer: Optional[str] = field(default=None, metadata={"doc": "final answer (math); null for agents"})
    answer_parse_ok: bool = field(default=False, metadata={"doc": "math: an answer could be parsed"})
    is_correct: Optional[bool] = field(default=None, metadata={"doc": "the revised trajectory is right (math: "
                                                                      "verified against the reference; agents: "
                                                                      "the good leaf's env success)"})
    reward: Optional[float] = field(default=None, metadata={"doc": "math: 1.0 correct, 0.0 wrong, null unchecked"})
    verifier: Optional[str] = field(default=None, metadata={"doc": "math: the verifier that checked it"})
    drop_reason: Optional[str] = field(default=None, metadata={"doc": "why a stage dropped it; null = kept"})
    # the teacher call that wrote it (LEMMA)
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
    # LEMMA
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
    # Agent-R
    final_reward: Optional[float] = field(default=None, metadata={"doc": "agents: the good leaf's value"})
    revision_signal: Optional[str] = field(default=None, metadata={"doc": "the reflection text that turns the "
                                                                          "trajectory around (Agent-R)"})
    revision_signal_index: Optional[int] = field(default=None, metadata={"doc": "which of the configured "
                                                                                "signals was drawn"})
    env: Optional[str] = field(default=None, metadata={"doc": "agents: env name"})
    task_id: Optional[str] = field(default=None, metadata={"doc": "agents: the env's task id"})
    iteration: Optional[int] = field(default=None, metadata={"doc": "self-training round of the policy"})
    tree_id: Optional[str] = field(default=None, metadata={"doc": "Agent-R: the search tree (trees/nodes)"})
    pair_id: Optional[str] = field(default=None, metadata={"doc": "Agent-R: the (good, bad) pair (pairs)"})
    good_leaf_id: Optional[str] = field(default=None, metadata={"doc": "Agent-R: node id of the good leaf"})
    bad_leaf_id: Optional[str] = field(default=None, metadata={"doc": "Agent-R: node id of the bad leaf"})
    good_leaf_value: Optional[float] = field(default=None, metadata={"doc": "value/visits of the good leaf"})
    bad_leaf_value: Optional[float] = field(default=None, metadata={"doc": "value/visits of the bad leaf"})
    divergence_depth: Optional[int] = field(default=None, metadata={"doc": "depth of the divergence parent"})
    first_error_depth: Optional[int] = field(default=None, metadata={"doc": "depth (nodes.depth, actions numbered "
                                                                            "from 1) judged the first error; null "
                                                                            "when none was (end-of-trajectory "
                                                                            "revision)"})
    bad_end_depth: Optional[int] = field(default=None, metadata={"doc": "depth of the last bad step kept"})
    judge_status: Optional[str] = field(default=None, metadata={"doc": "first_error, no_error, unparsed_as_bad"})
    wait_reply: Optional[str] = field(default=None, metadata={"doc": "the env's answer to the revision turn's "
                                                                     "`Action: wait`"})
    prefix_len: Optional[int] = field(default=None, metadata={"doc": "messages of the opening + shared prefix"})
    revision_turn_index: Optional[int] = field(default=None, metadata={"doc": "0-based index in messages of the "
                                                                              "revision turn (DuckDB: "
                                                                              "messages[revision_turn_index + 1])"})


REVISIONS = register_table(TableSpec(
    "revisions", Revision, "revision_id",
    ("problem_id", "attempt_id", "injection_id", "judgement_id", "tree_id", "pair_id"),
    description="revised trajectories (segments / messages with per-part loss flags): LEMMA's fixes and restarts, "
                "Agent-R's splices and good trajectories"))

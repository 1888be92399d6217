"""Row types of the critique method (AutoMathCritique, arXiv 2411.16579): paths, critiques, refinements, and the
build-scope critic scores of an evaluation.

- `paths`: a solution to critique, from one of three sources: ``actor`` (the actor's own sample, verified right or
  wrong), ``injected`` (an error at a known step: the rules injector on built-in problems, or a LEMMA version's
  injections fed in with `tasks: {kind: version, table: injections}`), ``reference`` (the problem's reference
  solution); ``processbench`` rows are an evaluation file's labelled solutions. `first_error_step` is the true
  first wrong step where it is known (`first_error_known`; a correct reference has none).
- `critiques`: the critic's per-step verdicts (Correct / Wrong) with explanations and a final-answer verdict, parsed
  from its raw text (`parse_ok`; unparsed is never a verdict), compared with the verified correctness (`agrees`)
  and, where known, with the true first wrong step (`first_error_exact`, `first_error_within_1`). The closed-loop
  filter sets `drop_reason` (unparsed, verdict_disagrees, inconsistent, refinement_wrong, shortcut, ...).
- `refinements`: the actor's rewrite of a wrong path given a critique, verified, with the shortcut barrier
  (`numerals` >= `barrier`); at most `reserved_per_critique` kept per critique.
- `critic_scores` (build scope, evaluations): the ProcessBench figures of one critic on one labelled set.

SQL from a kept critique back to its path and problem::

    SELECT c.critique_id, c.first_wrong_step, p.source, p.first_error_step, p.text, pr.question
    FROM critiques c JOIN paths p USING (path_id) JOIN problems pr ON pr.problem_id = c.problem_id
    WHERE c.drop_reason IS NULL
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from schemas.registry import TableSpec, register_table
from schemas.rows import Lineage, Step


@dataclass
class StepLabel:
    idx: int = field(metadata={"doc": "1-based step number (the path's steps idx)"})
    step_text: str = field(metadata={"doc": "the step as the critic was shown it"})
    verdict: str = field(metadata={"doc": "correct or wrong"})
    explanation: str = field(default="", metadata={"doc": "the critic's explanation of this step"})


@dataclass
class Path(Lineage):
    path_id: str = field(default="", metadata={"doc": "stable id of the path"})
    problem_id: str = field(default="", metadata={"doc": "the problem"})
    source: str = field(default="", metadata={"doc": "actor, injected, reference (builds); processbench (eval)"})
    origin: str = field(default="", metadata={"doc": "how it was made: actor model, rules:arithmetic, the LEMMA "
                                                     "version's injection model, reference_solution, a file"})
    attempt_id: Optional[str] = field(default=None, metadata={"doc": "actor paths: the attempt"})
    injection_id: Optional[str] = field(default=None, metadata={"doc": "injected paths: the injection"})
    error_type: Optional[str] = field(default=None, metadata={"doc": "injected paths: the error type"})
    text: str = field(default="", metadata={"doc": "the solution text"})
    steps: list[Step] = field(default_factory=list, metadata={
        "doc": "the steps the critic is shown, idx from 1 (stages.steps.split_solution of `text`; an eval "
               "file's own steps)"})
    first_error_step: Optional[int] = field(default=None, metadata={
        "doc": "the true 1-based first wrong step where known; null for a correct path or when unknown"})
    first_error_known: bool = field(default=False, metadata={
        "doc": "the true first wrong step is known (injected with a step, a reference, a labelled eval row): "
               "first_error_step null then means no wrong step"})
    finish_reason: Optional[str] = field(default=None, metadata={"doc": "actor paths: stop, length, ..."})
    final_answer: Optional[str] = field(default=None, metadata={"doc": "answer parsed from the text"})
    answer_parse_ok: bool = field(default=False, metadata={"doc": "an answer could be parsed"})
    is_correct: Optional[bool] = field(default=None, metadata={"doc": "verified against the reference (eval "
                                                                      "rows: the file's final_answer_correct)"})
    reward: Optional[float] = field(default=None, metadata={"doc": "1.0 correct, 0.0 wrong, null unchecked"})
    verifier: Optional[str] = field(default=None, metadata={"doc": "math_verify, or the eval file"})
    drop_reason: Optional[str] = field(default=None, metadata={"doc": "why it was dropped; null = kept"})


@dataclass
class Critique(Lineage):
    critique_id: str = field(default="", metadata={"doc": "stable id of the critique"})
    path_id: str = field(default="", metadata={"doc": "the path critiqued"})
    problem_id: str = field(default="", metadata={"doc": "its problem"})
    path_source: str = field(default="", metadata={"doc": "the path's source (actor, injected, reference, ...)"})
    sample_index: int = field(default=0, metadata={"doc": "which of the critic's samples for this path"})
    critic_model: str = field(default="", metadata={"doc": "model that wrote it"})
    prompt_template: str = field(default="", metadata={"doc": "prompt template name@version"})
    prompt: str = field(default="", metadata={"doc": "the user message sent (with the reference answer when "
                                                     "show_reference)"})
    train_prompt: str = field(default="", metadata={"doc": "the same instruction without the reference answer: "
                                                           "the critic-sft prompt"})
    raw_text: str = field(default="", metadata={"doc": "the critic's text as written"})
    parse_ok: bool = field(default=False, metadata={"doc": "a verdict for every step and the final answer could "
                                                           "be parsed (unparsed is never a verdict)"})
    parse_error: Optional[str] = field(default=None, metadata={"doc": "why parsing failed"})
    step_labels: list[StepLabel] = field(default_factory=list, metadata={"doc": "per step: verdict, explanation"})
    first_wrong_step: Optional[int] = field(default=None, metadata={
        "doc": "the critique's first Wrong step (1-based); null when it calls every step correct or is unparsed"})
    final_verdict: Optional[bool] = field(default=None, metadata={"doc": "the critique says the final answer is "
                                                                         "correct (null: unparsed)"})
    consistent: Optional[bool] = field(default=None, metadata={
        "doc": "the final verdict is Wrong exactly when some step is Wrong"})
    path_is_correct: Optional[bool] = field(default=None, metadata={"doc": "the path's verified correctness"})
    agrees: Optional[bool] = field(default=None, metadata={"doc": "final_verdict == path_is_correct (null: "
                                                                  "unparsed)"})
    true_first_error_step: Optional[int] = field(default=None, metadata={"doc": "the path's first_error_step"})
    first_error_known: bool = field(default=False, metadata={"doc": "the path's first_error_known"})
    first_error_exact: Optional[bool] = field(default=None, metadata={
        "doc": "labelled paths: first_wrong_step == true_first_error_step (both null counts: no wrong step); "
               "false when unparsed"})
    first_error_within_1: Optional[bool] = field(default=None, metadata={
        "doc": "labelled paths: the first Wrong step is within one step of the true one (a correct path: exact)"})
    finish_reason: Optional[str] = field(default=None, metadata={"doc": "stop, length, ..."})
    prompt_tokens: int = field(default=0, metadata={"doc": "prompt tokens"})
    completion_tokens: int = field(default=0, metadata={"doc": "completion tokens"})
    refinements_tried: int = field(default=0, metadata={"doc": "refinements the actor wrote from it"})
    refinements_correct: int = field(default=0, metadata={"doc": "of those, verified correct"})
    refinements_kept: int = field(default=0, metadata={"doc": "of those, kept (correct, past the barrier, within "
                                                              "reserved_per_critique)"})
    drop_reason: Optional[str] = field(default=None, metadata={"doc": "why the closed-loop filter dropped it; "
                                                                      "null = kept as training data"})


@dataclass
class Refinement(Lineage):
    refinement_id: str = field(default="", metadata={"doc": "stable id of the refinement"})
    critique_id: str = field(default="", metadata={"doc": "the critique it follows"})
    path_id: str = field(default="", metadata={"doc": "the wrong path it rewrites"})
    problem_id: str = field(default="", metadata={"doc": "its problem"})
    sample_index: int = field(default=0, metadata={"doc": "which of the actor's samples for this critique"})
    model: str = field(default="", metadata={"doc": "the actor model"})
    prompt_template: str = field(default="", metadata={"doc": "prompt template name@version"})
    prompt: str = field(default="", metadata={"doc": "the user message sent (question, solution, critique)"})
    text: str = field(default="", metadata={"doc": "the rewritten solution"})
    finish_reason: Optional[str] = field(default=None, metadata={"doc": "stop, length, ..."})
    prompt_tokens: int = field(default=0, metadata={"doc": "prompt tokens"})
    completion_tokens: int = field(default=0, metadata={"doc": "completion tokens"})
    final_answer: Optional[str] = field(default=None, metadata={"doc": "answer parsed from the text"})
    answer_parse_ok: bool = field(default=False, metadata={"doc": "an answer could be parsed"})
    is_correct: Optional[bool] = field(default=None, metadata={"doc": "verified against the reference"})
    reward: Optional[float] = field(default=None, metadata={"doc": "1.0 correct, 0.0 wrong, null unchecked"})
    verifier: Optional[str] = field(default=None, metadata={"doc": "math_verify"})
    numerals: Optional[int] = field(default=None, metadata={"doc": "numbers written in the text"})
    barrier: Optional[int] = field(default=None, metadata={
        "doc": "the shortcut barrier: min(numerals of the reference solution, of the original) - 2"})
    passes_barrier: Optional[bool] = field(default=None, metadata={"doc": "numerals >= barrier"})
    drop_reason: Optional[str] = field(default=None, metadata={
        "doc": "truncated, no_answer, refinement_wrong, shortcut, over_reserved; null = kept"})


@dataclass
class CriticScore(Lineage):
    score_id: str = field(default="", metadata={"doc": "id: the critic model and the subset"})
    critic_model: str = field(default="", metadata={"doc": "the critic"})
    subset: str = field(default="", metadata={"doc": "all, or one path source"})
    erroneous: int = field(default=0, metadata={"doc": "labelled samples with a wrong step"})
    correct: int = field(default=0, metadata={"doc": "labelled samples with no wrong step"})
    acc_erroneous: Optional[float] = field(default=None, metadata={"doc": "erroneous samples whose first Wrong "
                                                                          "step is exactly the label"})
    acc_correct: Optional[float] = field(default=None, metadata={"doc": "correct samples the critic calls all "
                                                                        "Correct"})
    f1: Optional[float] = field(default=None, metadata={"doc": "harmonic mean of the two (ProcessBench's F1)"})
    within_1_erroneous: Optional[float] = field(default=None, metadata={"doc": "erroneous samples within one "
                                                                               "step"})
    parse_rate: Optional[float] = field(default=None, metadata={"doc": "critiques parsed / critiques"})
    random_acc_erroneous: Optional[float] = field(default=None, metadata={
        "doc": "expected acc_erroneous of a critic naming one of (no error, step 1..n) uniformly at random"})
    random_acc_correct: Optional[float] = field(default=None, metadata={"doc": "the same baseline on correct "
                                                                               "samples"})
    random_f1: Optional[float] = field(default=None, metadata={"doc": "harmonic mean of the two baselines"})


register_table(TableSpec("paths", Path, "path_id", ("problem_id", "attempt_id", "injection_id"),
                         description="solutions to critique: the actor's samples, injected errors at a known step, "
                                     "references; verified"))
register_table(TableSpec("critiques", Critique, "critique_id", ("path_id", "problem_id"),
                         description="step-level critiques (Correct/Wrong per step, final verdict), parsed beside "
                                     "raw text; closed-loop filtered"))
register_table(TableSpec("refinements", Refinement, "refinement_id", ("critique_id", "path_id", "problem_id"),
                         description="the actor's rewrites of wrong paths given a critique; verified, shortcut "
                                     "barrier"))
register_table(TableSpec("critic_scores", CriticScore, "score_id", (), scope="build",
                         description="a critic's ProcessBench figures on a labelled set (eval versions)"))

"""LEMMA (Learning from Errors for MatheMatical Advancement, arXiv 2503.17439).

The method turns wrong solutions into revision trajectories: locate the first wrong step of a student's
solution and classify its error type (a teacher judge), make more errors of those types (a teacher playing a
careless student, or the programmatic injector here for built-in arithmetic problems), then write a revision
that keeps the erroneous prefix through the first wrong step verbatim, adds one transition phrase and either
fixes the step and continues ("fix & continue") or switches to another approach ("fresh & restart").

Helper modules (pure Python, no engine; the stages wrap them):
- `taxonomy`       -- the 12 error labels, the 6 injection types, label aliases, transition phrases and finding them.
- `judge_reply`    -- parse the teacher judge's answer (first wrong step, error type) with raw text and parse_ok.
- `injection_reply` -- parse a teacher-injected solution (solution text, final answer, <explanation>).
- `rules_injector` -- programmatic errors in built-in arithmetic problems, with exact first-error steps and the
                      matching fix & continue revision.
- `revision_checks` -- build revision segments and check a teacher's revision (prefix kept, one transition, no
                      mention of a previous attempt or a reference), returning a drop reason.

Stage modules (`*_stages.py`), on the contract of stages/base.py; the method itself is registered below. Per shard, after
the spine's generate / verify / filter of the student's attempts:
- `judge_stages` -- `JudgeAttemptsStage` (attempts -> judgements, role `teacher`): each verified-wrong attempt is shown to
                  the teacher as numbered steps with the reference solution; the answer is parsed by `judge_reply` into a
                  verdict (`located` with a 1-based first wrong step, `says_correct`, `unparsed`), the error type,
                  raw text and parse_ok; the row keeps the numbered steps shown (`steps`: stages/steps.py's split,
                  the same as the attempt's `steps`, so `first_error_step` N is the step of idx N). `says_correct` and `unparsed` are recorded as such and never used as a
                  located error. `JudgeInjectionsStage` (injections -> judgements): locates the error of LLM
                  injections (their revisions start there); rules injections are judged too (`judge_rules`), and
                  the judge's first-error accuracy on them (exact and within one step) is counted in the stage
                  stats, hence in the manifest.
- `type_weights_stages` -- `TypeWeightsStage` (global; writes the build-scope table `error_type_weights`): the weights of
                  the injection types for the LLM injector: `measured` (the student's judged error types over the
                  whole build, add-`prior` smoothed; LEMMA's choice), `uniform`, or `explicit`.
- `injection_stages` -- `InjectStage` (problems -> injections, emitting revisions): `source` llm, rules or both. llm: the
                  teacher writes `samples_per_problem` erroneous solutions per problem, each of a type drawn
                  (seeded) from the weights, one request per (problem, type, sample). rules: built-in arithmetic
                  problems get programmatic errors with the exact first wrong step (`rules_injector`) and, for
                  each, the fix & continue revision written from the gold steps (a `revisions` row, author
                  `rules`). `VerifyInjections` / `InjectionFilter`: the spine's verifier on the injections; kept
                  only when verified wrong.
- `revision_stages` -- `ReviseStage` (judgements -> revisions, role `teacher`): for each located judgement of a wrong
                  attempt or a kept LLM injection, one revision per strategy: fix_continue (prefix through the
                  first wrong step verbatim, one transition phrase, the fix, the rest) and fresh_restart (same
                  prefix and transition, then another approach anchored on one of the student's own correct
                  samples of that problem, else the reference solution). The teacher's text is checked (prefix
                  kept, exactly one transition right after it, no forbidden phrases, a final answer); the check's
                  verdict is `check_reason`. Unparsed and says-correct judgements give a dropped row
                  (`judge_unparsed`, `judge_says_correct`), so the yield is visible in the table.
                  `VerifyRevisions` / `RevisionFilter`: the verifier on revisions; drops truncated, the check's
                  reason, no_answer, answer_wrong. Only verified-correct revisions survive (and are exported).
- `smoothing_stages` -- `SmoothStage` (optional): the teacher rewrites each kept revision as one line of thought;
                  `VerifySmoothed` verifies the variants.
- `summary`    -- the yield per stage, the judge's accuracy on the rules labels and the error-type histograms,
                  from a build's manifest (`lemma_summary`, printed by `errata build`).

Prompt templates: prompts/lemma_*.txt here; the recipe: recipes/lemma.yaml; exports: exports.py; rows: rows.py.
Step splitting is the shared stages/steps.py.
"""

from pathlib import Path

from pipelines.methods.lemma import exports  # noqa: F401  (registers the revision exports)
from pipelines.methods.lemma.injection_stages import InjectionFilter, InjectStage, VerifyInjections
from pipelines.methods.lemma.judge_stages import JudgeAttemptsStage, JudgeInjectionsStage
from pipelines.methods.lemma.revision_stages import RevisionFilter, ReviseStage, VerifyRevisions
from pipelines.methods.lemma.smoothing_stages import SmoothStage, VerifySmoothed
from pipelines.methods.lemma.summary import lemma_summary
from pipelines.methods.lemma.type_weights_stages import TypeWeightsStage
from schemas.registry import Method, StageSpec, register_method
from stages.filter import AttemptFilter
from stages.generate import GenerateStage
from stages.verify import VerifyStage

METHOD = register_method(Method(
    "lemma", "LEMMA (arXiv 2503.17439): the student samples; a teacher locates and types the first error of "
             "each wrong attempt, writes errors of those types (or the rules injector makes labelled ones), "
             "and revises them (fix & continue, fresh & restart); every revision verified",
    (StageSpec("generate", GenerateStage), StageSpec("verify", VerifyStage), StageSpec("filter", AttemptFilter),
     StageSpec("judge", JudgeAttemptsStage), StageSpec("type_weights", TypeWeightsStage),
     StageSpec("injections", InjectStage), StageSpec("verify_injections", VerifyInjections),
     StageSpec("filter_injections", InjectionFilter), StageSpec("judge_injections", JudgeInjectionsStage),
     StageSpec("revise", ReviseStage), StageSpec("verify_revisions", VerifyRevisions),
     StageSpec("filter_revisions", RevisionFilter), StageSpec("smooth", SmoothStage),
     StageSpec("verify_smoothed", VerifySmoothed), StageSpec("filter_smoothed", RevisionFilter)),
    roles=("student", "teacher"), exports={"sft": "sft_revisions", "sft-tokenized": "sft_tokenized_revisions",
                                            "dpo": "dpo_revisions"},
    summary=lemma_summary, home=Path(__file__).parent))

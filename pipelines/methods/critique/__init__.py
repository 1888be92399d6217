"""AutoMathCritique / MathCritique-76k (arXiv 2411.16579): step-level critiques, filtered in closed loop.

Per shard: the actor samples and the shared verify / filter check them (generate, verify, filter); `paths` gathers
the solutions to critique from three sources (the actor's verified attempts, injected errors at a known step:
LEMMA's rules injector on built-in problems or a LEMMA version's injections, and reference solutions), each keeping
its source and, where known, its true first wrong step; `verify_paths` / `filter_paths` verify them; `critique`
(role `critic`) labels every step Correct / Wrong with an explanation and then the final answer, in
MathCritique's format (critique_format.py: one declaration gives the engine's constraint and the parser; raw
text beside the parsed labels and parse_ok); `refine` (role `actor`) rewrites each wrong path given a critique
that calls it wrong; `verify_refinements` / `filter_refinements` keep a refinement when it verifies correct and
passes the shortcut barrier (numerals >= min(reference, original) - 2), at most `reserved_per_critique` per
critique; `filter_critiques` keeps a critique only when its final verdict agrees with the verified correctness
and, for a wrong path, a refinement it led to was kept. Every drop keeps its reason.

Modules: rows.py (paths, critiques, refinements, critic_scores), critique_format.py, path_stages.py,
critique_stages.py, refine_stages.py, exports.py (critic-sft, critic-dpo, actor-sft, stepwise, sft-tokenized),
summary.py (yield per stage, first-error accuracy), evaluation.py (`errata eval critique`: the `critique_eval`
method, ProcessBench scoring). Prompts: prompts/critique_*.txt; recipe: recipes/critique.yaml.
"""

from pathlib import Path

from pipelines.methods.critique import exports  # noqa: F401  (registers the exports)
from pipelines.methods.critique.critique_stages import CritiqueStage
from pipelines.methods.critique.evaluation import ScoresStage, run_eval
from pipelines.methods.critique.path_stages import PathFilter, PathsStage, VerifyPaths
from pipelines.methods.critique.refine_stages import (CritiqueFilter, RefinementFilter, RefineStage,
                                                      VerifyRefinements)
from pipelines.methods.critique.summary import critique_summary, eval_summary
from schemas.registry import Evaluation, Method, StageSpec, register_evaluation, register_method
from stages.filter import AttemptFilter
from stages.generate import GenerateStage
from stages.verify import VerifyStage

METHOD = register_method(Method(
    "critique", "AutoMathCritique (arXiv 2411.16579): paths (the actor's samples, injected errors at a known step, "
                "references), step-level critiques (Correct/Wrong + explanation, final verdict), the actor's "
                "refinements; closed-loop filtered (verdict agrees, refinement verified, shortcut barrier)",
    (StageSpec("generate", GenerateStage), StageSpec("verify", VerifyStage), StageSpec("filter", AttemptFilter),
     StageSpec("paths", PathsStage), StageSpec("verify_paths", VerifyPaths), StageSpec("filter_paths", PathFilter),
     StageSpec("critique", CritiqueStage), StageSpec("refine", RefineStage),
     StageSpec("verify_refinements", VerifyRefinements), StageSpec("filter_refinements", RefinementFilter),
     StageSpec("filter_critiques", CritiqueFilter)),
    roles=("actor", "critic"),
    exports={"critic-sft": "critic_sft", "sft": "critic_sft", "sft-tokenized": "critic_sft_tokenized",
             "critic-dpo": "critic_dpo", "dpo": "critic_dpo", "actor-sft": "actor_sft",
             "stepwise": "stepwise_critiques"},
    summary=critique_summary, home=Path(__file__).parent))

EVAL_METHOD = register_method(Method(
    "critique_eval", "a critic scored on first-error labels (errata eval critique): ProcessBench's accuracy on "
                     "erroneous and correct samples, F1, parse rate, beside a random-step critic",
    (StageSpec("critique", CritiqueStage), StageSpec("scores", ScoresStage)),
    roles=("critic",), inputs=("problems", "paths"), exports={"critic-sft": "critic_sft"},
    summary=eval_summary, home=Path(__file__).parent))

register_evaluation(Evaluation(
    "critique", "score a critic on first-error labels (a ProcessBench-format file, or a critique version's "
                "labelled paths): accuracy on erroneous and correct samples, F1, parse rate, a random-step baseline",
    run_eval))

"""self_correct: sample, verify, let the model review its own attempts, retry the wrong ones with that review,
verify again, filter. Its attempts export like sample_verify's."""
from pathlib import Path

from pipelines.methods.sample_verify import exports  # noqa: F401  (sft_attempts, dpo_attempts)
from pipelines.methods.self_correct.self_check_stages import RetryStage, SelfCheckStage
from schemas.registry import Method, StageSpec, register_method
from stages.filter import AttemptFilter, DuplicateProblems
from stages.generate import GenerateStage
from stages.verify import VerifyStage

METHOD = register_method(Method(
    "self_correct", "sample, verify, let the model review its own attempts, retry the wrong ones with that "
                    "review, verify again, filter",
    (StageSpec("generate", GenerateStage), StageSpec("verify", VerifyStage),
     StageSpec("self_check", SelfCheckStage), StageSpec("retry", RetryStage),
     StageSpec("verify_retry", VerifyStage), StageSpec("filter", AttemptFilter),
     StageSpec("dedup", DuplicateProblems)),
    roles=("student",), exports={"sft": "sft_attempts", "dpo": "dpo_attempts"}, home=Path(__file__).parent))

"""sample_verify: sample n answers per problem, verify them against the reference, filter (the demo)."""
from pathlib import Path

from pipelines.methods.sample_verify import exports  # noqa: F401  (registers sft_attempts, dpo_attempts)
from schemas.registry import Method, StageSpec, register_method
from stages.filter import AttemptFilter, DuplicateProblems
from stages.generate import GenerateStage
from stages.verify import VerifyStage

METHOD = register_method(Method(
    "sample_verify", "sample n answers per problem, verify them against the reference, filter",
    (StageSpec("generate", GenerateStage), StageSpec("verify", VerifyStage), StageSpec("filter", AttemptFilter),
     StageSpec("dedup", DuplicateProblems)),
    roles=("student",), exports={"sft": "sft_attempts", "dpo": "dpo_attempts"}, home=Path(__file__).parent))

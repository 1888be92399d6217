"""agent_rollout: a policy model acts in an environment's tasks in ReAct turns (Agent-R's conversation), n episodes
per task, plus the env's gold path on request (recipe `agent_demo`)."""
from pathlib import Path

from pipelines.methods.agent_rollout import exports  # noqa: F401  (registers the trajectory exports)
from pipelines.methods.agent_rollout.rollout_stages import RolloutStage
from schemas.registry import Method, StageSpec, register_method

METHOD = register_method(Method(
    "agent_rollout", "a policy model acts in an environment's tasks in ReAct turns (Agent-R's conversation), "
                     "n episodes per task, plus the env's gold path on request",
    (StageSpec("rollout", RolloutStage),),
    roles=("policy",), exports={"sft": "sft_trajectories", "sft-tokenized": "sft_tokenized_trajectories"},
    home=Path(__file__).parent))

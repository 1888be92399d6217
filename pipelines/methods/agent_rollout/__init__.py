"""agent_rollout: a policy model acts in an environment's tasks in ReAct turns (Agent-R's conversation), n episodes
per task, plus the env's gold path on request (recipe `agent_demo`)."""
from pathlib import Path
from typing import Any

from pipelines.methods.agent_rollout import exports  # noqa: F401  (registers the trajectory exports)
from pipelines.methods.agent_rollout.rollout_stages import RolloutStage
from schemas.registry import Method, StageSpec, register_method

def rollout_summary(stages: dict[str, dict]) -> dict[str, Any]:
    """What `errata build` prints after a rollout build: episodes, successes, turns and how many parsed."""
    st = stages.get("rollout", {})
    c = st.get("counts", {})
    rate = st.get("parse_rate")
    return {"episodes": f"{c.get('episodes', 0)} policy episodes, {c.get('success', 0)} succeeded; "
                        f"{c.get('gold_episodes', 0)} gold paths, {c.get('gold_success', 0)} succeeded",
            "policy turns": f"{c.get('turns', 0)}, parse rate {'n/a' if rate is None else f'{rate:.2f}'}, "
                            f"{c.get('invalid_actions', 0)} refused by the env"}


METHOD = register_method(Method(
    "agent_rollout", "a policy model acts in an environment's tasks in ReAct turns (Agent-R's conversation), "
                     "n episodes per task, plus the env's gold path on request",
    (StageSpec("rollout", RolloutStage),),
    roles=("policy",), exports={"sft": "sft_trajectories", "sft-tokenized": "sft_tokenized_trajectories"},
    summary=rollout_summary, home=Path(__file__).parent))

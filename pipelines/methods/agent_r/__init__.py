"""agent_r: Agent-R. MCTS per env task with the policy (`trees`, `nodes`), (good, bad) leaf pairs (`pairs`), the
policy judges the bad path's first error (`judgements`), spliced revision trajectories and good trajectories
(`revision_trajectories`). The search is search_stages.py (with mcts.py, tree.py, pairs.py), the revision revision_stages.py
(with step_judge.py, splice.py)."""
from pathlib import Path
from typing import Any

from pipelines.methods.agent_r import exports  # noqa: F401  (registers the Agent-R exports)
from pipelines.methods.agent_r.revision_stages import JudgeBadPathsStage, SpliceStage
from pipelines.methods.agent_r.search_stages import MCTSStage, PairsStage
from schemas.registry import Method, StageSpec, register_method

def agent_r_summary(stages: dict[str, dict]) -> dict[str, Any]:
    """What `errata build` prints after an Agent-R build: the yield per stage and the parse rates."""
    c = lambda s, k: stages.get(s, {}).get("counts", {}).get(k, 0)        # noqa: E731
    rate = lambda s: stages.get(s, {}).get("parse_rate")                   # noqa: E731
    fmt = lambda x: "n/a" if x is None else f"{x:.2f}"                     # noqa: E731
    return {"yield": f"trees {stages.get('mcts', {}).get('out', 0)} (reached the goal: "
                     f"{stages.get('pairs', {}).get('in', 0) - c('pairs', 'skipped_root_value_zero')}) -> pairs "
                     f"{stages.get('pairs', {}).get('out', 0)} -> judged {stages.get('judge', {}).get('out', 0)} -> "
                     f"revision trajectories {stages.get('splice', {}).get('out', 0)}",
            "parse rate": f"policy turns {fmt(rate('mcts'))}, judgements {fmt(rate('judge'))}"}


METHOD = register_method(Method(
    "agent_r", "Agent-R: MCTS per env task with the policy, (good, bad) leaf pairs, the policy judges the bad "
               "path's first error, spliced revision trajectories (and good trajectories)",
    (StageSpec("mcts", MCTSStage), StageSpec("pairs", PairsStage), StageSpec("judge", JudgeBadPathsStage),
     StageSpec("splice", SpliceStage)),
    roles=("policy",), exports={"sft": "sft_agent_r", "sft-tokenized": "sft_tokenized_agent_r",
                                "dpo": "dpo_agent_r"}, summary=agent_r_summary, home=Path(__file__).parent))

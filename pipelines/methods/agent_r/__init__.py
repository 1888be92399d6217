"""agent_r: Agent-R. MCTS per env task with the policy (`trees`, `nodes`), (good, bad) leaf pairs (`pairs`), the
policy judges the bad path's first error (`judgements`), spliced revision trajectories and good trajectories
(`revision_trajectories`). The search is search_stages.py (with mcts.py, tree.py, pairs.py), the revision revision_stages.py
(with step_judge.py, splice.py)."""
from pathlib import Path

from pipelines.methods.agent_r import exports  # noqa: F401  (registers the Agent-R exports)
from pipelines.methods.agent_r.revision_stages import JudgeBadPathsStage, SpliceStage
from pipelines.methods.agent_r.search_stages import MCTSStage, PairsStage
from schemas.registry import Method, StageSpec, register_method

METHOD = register_method(Method(
    "agent_r", "Agent-R: MCTS per env task with the policy, (good, bad) leaf pairs, the policy judges the bad "
               "path's first error, spliced revision trajectories (and good trajectories)",
    (StageSpec("mcts", MCTSStage), StageSpec("pairs", PairsStage), StageSpec("judge", JudgeBadPathsStage),
     StageSpec("splice", SpliceStage)),
    roles=("policy",), exports={"sft": "sft_agent_r", "sft-tokenized": "sft_tokenized_agent_r",
                                "dpo": "dpo_agent_r"}, home=Path(__file__).parent))

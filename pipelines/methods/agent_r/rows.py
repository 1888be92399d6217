"""Row types of Agent-R: search trees (`trees`, one row per task), their nodes (`nodes`, one row per node) and
the (good, bad) leaf pairs cut from them (`pairs`). Judgements of bad paths go to the shared `judgements` table
(target_table "nodes"), spliced and good trajectories to `revision_trajectories` (messages with per-message loss).

Every splice can be audited in SQL: a revision_trajectories row names its pair; the pair names its leaves, divergence parent
and children, first-error node and judgements; nodes name their parents. See pipelines/methods/agent_r/mcts.py for what each
node field means.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from schemas.agent_rows import Message
from schemas.revision_rows import RevisionColumns
from schemas.rows import Lineage
from schemas.registry import TableSpec, register_table


@dataclass
class TreeRow(Lineage):
    tree_id: str = field(default="", metadata={"doc": "stable id of the tree"})
    problem_id: str = field(default="", metadata={"doc": "the task (problems row)"})
    task_id: str = field(default="", metadata={"doc": "the env's own task id"})
    task_seed: int = field(default=0, metadata={"doc": "task seed"})
    split: str = field(default="train", metadata={"doc": "task split"})
    env: str = field(default="", metadata={"doc": "env name"})
    iteration: int = field(default=0, metadata={"doc": "self-training round of the policy that searched it"})
    model: str = field(default="", metadata={"doc": "policy model"})
    sampling_json: str = field(default="", metadata={"doc": "policy sampling, JSON"})
    instruction: str = field(default="", metadata={"doc": "the task instruction"})
    task_config_json: str = field(default="", metadata={"doc": "the task's env config, JSON"})
    settings_json: str = field(default="", metadata={"doc": "search settings, JSON"})
    error: Optional[str] = field(default=None, metadata={"doc": "why the search failed (such trees are error "
                                                                "rows, not written here)"})
    root_visits: int = field(default=0, metadata={"doc": "terminal leaves backed up through the root"})
    root_value: float = field(default=0.0, metadata={"doc": "sum of the leaf values backed up"})
    n_nodes: int = field(default=0, metadata={"doc": "nodes, the root included"})
    n_leaves: int = field(default=0, metadata={"doc": "terminal childless nodes (error leaves included)"})
    stats_json: str = field(default="", metadata={"doc": "the search's counters (expansions, env steps, ...)"})
    drop_reason: Optional[str] = field(default=None, metadata={"doc": "why a later stage dropped it; null = kept"})


@dataclass
class NodeRow(Lineage):
    node_id: str = field(default="", metadata={"doc": "stable id of the node"})
    tree_id: str = field(default="", metadata={"doc": "its tree"})
    problem_id: str = field(default="", metadata={"doc": "the tree's task"})
    task_id: str = field(default="", metadata={"doc": "the env's task id"})
    env: str = field(default="", metadata={"doc": "env name"})
    iteration: int = field(default=0, metadata={"doc": "self-training round"})
    seq: int = field(default=0, metadata={"doc": "creation order in the tree (0 = root)"})
    node_path: list[int] = field(default_factory=list, metadata={"doc": "child indexes from the root"})
    parent_id: Optional[str] = field(default=None, metadata={"doc": "parent node; null at the root"})
    depth: int = field(default=0, metadata={"doc": "0 at the root; a node at depth d took d actions, its own "
                                                   "being the d-th (so depths number actions from 1)"})
    sample_index: Optional[int] = field(default=None, metadata={"doc": "which sample of its expansion"})
    raw_text: str = field(default="", metadata={"doc": "the policy's text (assistant turn), as sampled"})
    action: Optional[str] = field(default=None, metadata={"doc": "the parsed action; null when unparseable"})
    parse_ok: bool = field(default=True, metadata={"doc": "an action could be parsed from raw_text"})
    executed_action: Optional[str] = field(default=None, metadata={"doc": "what the env was sent"})
    duplicates: int = field(default=0, metadata={"doc": "later samples of the same action folded into it"})
    observation: str = field(default="", metadata={"doc": "the env's answer (root: the first observation)"})
    env_reward: float = field(default=0.0, metadata={"doc": "the step's reward as the env gave it"})
    reward: float = field(default=0.0, metadata={"doc": "the same, 0 for a disaster"})
    path_return: float = field(default=0.0, metadata={"doc": "sum of rewards from the root to here"})
    done: bool = field(default=False, metadata={"doc": "the env ended the episode here"})
    success: Optional[bool] = field(default=None, metadata={"doc": "the env's success flag of a done step"})
    invalid: bool = field(default=False, metadata={"doc": "the env refused the action"})
    disaster: bool = field(default=False, metadata={"doc": "negative env reward (terminal, reward 0)"})
    error: Optional[str] = field(default=None, metadata={"doc": "env / policy / replay failure at this node"})
    terminal: bool = field(default=False, metadata={"doc": "terminal node"})
    terminal_reason: Optional[str] = field(default=None, metadata={"doc": "done, max_depth, disaster, exhausted, "
                                                                          "error"})
    leaf_value: Optional[float] = field(default=None, metadata={"doc": "what this leaf backed up"})
    visits: int = field(default=0, metadata={"doc": "leaves backed up through this node"})
    value: float = field(default=0.0, metadata={"doc": "sum of their values"})
    mean_value: float = field(default=0.0, metadata={"doc": "value / visits"})
    expanded: bool = field(default=False, metadata={"doc": "the policy was asked for its children"})
    n_children: int = field(default=0, metadata={"doc": "children"})
    opening_json: Optional[str] = field(default=None, metadata={"doc": "root only: the conversation's opening"})


@dataclass
class PairRow(Lineage):
    pair_id: str = field(default="", metadata={"doc": "stable id of the pair (good_leaf kind: of the leaf)"})
    kind: str = field(default="pair", metadata={"doc": "pair: a (good, bad) leaf pair; good_leaf: a leaf with "
                                                       "value > alpha (Agent-R's good data), bad fields null"})
    tree_id: str = field(default="", metadata={"doc": "its tree"})
    problem_id: str = field(default="", metadata={"doc": "the tree's task"})
    task_id: str = field(default="", metadata={"doc": "the env's task id"})
    env: str = field(default="", metadata={"doc": "env name"})
    iteration: int = field(default=0, metadata={"doc": "self-training round"})
    good_leaf_id: str = field(default="", metadata={"doc": "node id of the good leaf"})
    good_leaf_value: float = field(default=0.0, metadata={"doc": "its value/visits"})
    bad_leaf_id: Optional[str] = field(default=None, metadata={"doc": "node id of the bad leaf"})
    bad_leaf_value: Optional[float] = field(default=None, metadata={"doc": "its value/visits"})
    value_gap: Optional[float] = field(default=None, metadata={"doc": "good minus bad value (> beta)"})
    alpha: float = field(default=0.0, metadata={"doc": "alpha the pair was cut with"})
    beta: Optional[float] = field(default=None, metadata={"doc": "beta the pair was cut with"})
    divergence_node_id: Optional[str] = field(default=None, metadata={"doc": "deepest common ancestor of the "
                                                                             "leaves (divergence parent)"})
    divergence_depth: Optional[int] = field(default=None, metadata={"doc": "its depth (nodes.depth)"})
    good_child_id: Optional[str] = field(default=None, metadata={"doc": "divergence parent's child towards the "
                                                                        "good leaf"})
    bad_child_id: Optional[str] = field(default=None, metadata={"doc": "... towards the bad leaf"})
    judge_status: Optional[str] = field(default=None, metadata={"doc": "the bad path's walk: first_error, "
                                                                       "no_error, unparsed, unparsed_as_bad, "
                                                                       "judge_error; null before judging"})
    first_error_node_id: Optional[str] = field(default=None, metadata={"doc": "node judged the first error"})
    first_error_depth: Optional[int] = field(default=None, metadata={
        "doc": "its depth (nodes.depth: its action is the depth-th from the root)"})
    bad_end_node_id: Optional[str] = field(default=None, metadata={"doc": "last bad step the splice keeps"})
    bad_end_depth: Optional[int] = field(default=None, metadata={"doc": "its depth (nodes.depth)"})
    judgement_ids: list[str] = field(default_factory=list, metadata={"doc": "judgements of the walk, in order"})
    drop_reason: Optional[str] = field(default=None, metadata={"doc": "why no revision was made of it (e.g. "
                                                                      "judgement_unparsed); null = kept"})


TREES = register_table(TableSpec(
    "trees", TreeRow, "tree_id", ("problem_id",),
    description="Agent-R search trees, one per task: settings, root value/visits, counters"))
NODES = register_table(TableSpec(
    "nodes", NodeRow, "node_id", ("tree_id", "parent_id", "problem_id"),
    description="Agent-R tree nodes: parent, depth, the policy's raw text, parsed action, parse_ok, observation, "
                "visits, value, terminal, disaster, reward"))
# the columns of a pair the judge stage fills (the pairs stage the rest)
JUDGE_COLUMNS = ("judge_status", "first_error_node_id", "first_error_depth", "bad_end_node_id", "bad_end_depth",
                 "judgement_ids")

@dataclass
class RevisionTrajectory(RevisionColumns):
    """An Agent-R trajectory: a splice (bad prefix, revision turn, the good branch) or a good trajectory kept
    as it is, as messages with per-message loss."""
    messages: list[Message] = field(default_factory=list, metadata={"doc": "conversation methods: the same text "
                                                                           "as messages with roles and loss"})
    is_correct: Optional[bool] = field(default=None, metadata={"doc": "the revised trajectory is right (math: "
                                                                      "verified against the reference; agents: "
                                                                      "the good leaf's env success)"})
    drop_reason: Optional[str] = field(default=None, metadata={"doc": "why a stage dropped it; null = kept"})
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
    first_error_depth: Optional[int] = field(default=None, metadata={"doc": "depth judged the first error; null "
                                                                            "when none was (end-of-trajectory "
                                                                            "revision)"})
    bad_end_depth: Optional[int] = field(default=None, metadata={"doc": "depth of the last bad step kept"})
    judge_status: Optional[str] = field(default=None, metadata={"doc": "first_error, no_error, unparsed_as_bad"})
    wait_reply: Optional[str] = field(default=None, metadata={"doc": "the env's answer to the revision turn's "
                                                                     "`Action: wait`"})
    prefix_len: Optional[int] = field(default=None, metadata={"doc": "messages of the opening + shared prefix"})
    revision_turn_index: Optional[int] = field(default=None, metadata={"doc": "index in messages of the revision "
                                                                              "turn"})





PAIRS = register_table(TableSpec(
    "pairs", PairRow, "pair_id", ("tree_id", "good_leaf_id", "bad_leaf_id", "problem_id"),
    description="Agent-R (good, bad) leaf pairs with their divergence and the bad path's judged first error; and "
                "good leaves (value > alpha)"))
REVISION_TRAJECTORIES = register_table(TableSpec(
    "revision_trajectories", RevisionTrajectory, "revision_id", ("problem_id", "tree_id", "pair_id"),
    description="Agent-R's spliced revision trajectories and good trajectories (messages with per-message loss)"))

"""The shared `revisions` table: a revised trajectory, as segments with a per-segment loss flag.

General fields (every method that revises: LEMMA's fix & continue / fresh & restart, Agent-R's splice, ...):
revision_id, strategy, problem_id, segments [{text, author, loss}], final_answer, is_correct, and the lineage
columns (run_id, method, created_at, parent_ids). Conversation methods also fill `messages` [{role, content,
loss}] (the same text as the segments, with roles); `kind` says what the row is (Agent-R: `revision` or `good`).
Agent-R's own fields follow, null for other methods. The loss flag of every segment and message is kept end to
end: no converter may drop it (tests/unit/test_agent_r_*.py fail if one does).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from schemas.agent_rows import Message
from schemas.rows import Lineage
from schemas.tables import TableSpec, register_table


@dataclass
class Segment:
    text: str = field(metadata={"doc": "the segment's text"})
    author: str = field(metadata={"doc": "who wrote it: model, teacher, template, env, rules"})
    loss: bool = field(default=False, metadata={"doc": "a model should learn this segment"})


@dataclass
class Revision(Lineage):
    revision_id: str = field(default="", metadata={"doc": "stable id of the revision"})
    strategy: str = field(default="", metadata={"doc": "fix_continue, fresh_restart, splice, teacher_reflect, "
                                                       "critique_refine; Agent-R's good trajectories: none"})
    kind: str = field(default="revision", metadata={"doc": "revision (a revised trajectory) or good (a "
                                                           "trajectory kept as it is, full loss)"})
    problem_id: str = field(default="", metadata={"doc": "the problem / env task"})
    segments: list[Segment] = field(default_factory=list, metadata={"doc": "the text in order, each with its "
                                                                           "author and loss flag"})
    messages: list[Message] = field(default_factory=list, metadata={"doc": "conversation methods: the same text "
                                                                           "as messages with roles and loss"})
    final_answer: Optional[str] = field(default=None, metadata={"doc": "final answer (math); null for agents"})
    is_correct: Optional[bool] = field(default=None, metadata={"doc": "the revised trajectory succeeds (agents: "
                                                                      "the good leaf's env success)"})
    final_reward: Optional[float] = field(default=None, metadata={"doc": "agents: the good leaf's value"})
    revision_signal: Optional[str] = field(default=None, metadata={"doc": "the reflection text that turns the "
                                                                          "trajectory around (Agent-R)"})
    revision_signal_index: Optional[int] = field(default=None, metadata={"doc": "which of the configured "
                                                                                "signals was drawn"})
    # Agent-R (null elsewhere)
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
    drop_reason: Optional[str] = field(default=None, metadata={"doc": "why a later stage dropped it; null = kept"})


REVISIONS = register_table(TableSpec(
    "revisions", Revision, "revision_id", ("problem_id", "tree_id", "pair_id"),
    description="revised trajectories (segments / messages with per-part loss flags), e.g. Agent-R splices and "
                "good trajectories"))

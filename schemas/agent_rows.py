"""Row types of agent methods: trajectories (one episode of a policy, or an env's gold path, in an environment).

A trajectory keeps the whole conversation as the policy's engine would see it untrimmed (Agent-R's opening:
instruction, "OK", first observation; then assistant / user turns), each message with its `loss` flag, and the
same turns as parsed steps: the raw model text beside the parsed thought and action, parse_ok, the env's
observation, reward, done and whether the env called the action invalid. Exports keep the loss flags end to end.

An episode that failed (the env died, a request failed, the context could not fit) is not a trajectory: it is an
`errors` row of the rollout stage with the partial trajectory as its raw output (see pipelines/methods/agent_rollout/rollout_stages.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from schemas.rows import Lineage
from schemas.registry import TableSpec, register_table


@dataclass
class Message:
    role: str = field(metadata={"doc": "user, assistant or system"})
    content: str = field(metadata={"doc": "the text (assistant turns: the model's raw text)"})
    loss: bool = field(default=False, metadata={"doc": "a model should learn this message (assistant turns of "
                                                       "the policy; never user/observation turns)"})


@dataclass
class AgentStep:
    idx: int = field(metadata={"doc": "1-based: the episode's idx-th action (in DuckDB, `steps[idx]`), as every "
                                      "step column numbers steps"})
    raw_text: str = field(metadata={"doc": "the model's text for this turn, as written"})
    parse_ok: bool = field(metadata={"doc": "an action could be parsed from raw_text"})
    thought: Optional[str] = field(default=None, metadata={"doc": "the Thought part, parsed"})
    action: Optional[str] = field(default=None, metadata={"doc": "the Action, parsed; null when unparseable (the "
                                                                 "env was sent an invalid action)"})
    observation: str = field(default="", metadata={"doc": "the env's answer"})
    reward: float = field(default=0.0, metadata={"doc": "reward of this step"})
    done: bool = field(default=False, metadata={"doc": "the episode ended with this step"})
    invalid: bool = field(default=False, metadata={"doc": "the env answered that the action was invalid"})


@dataclass
class Trajectory(Lineage):
    trajectory_id: str = field(default="", metadata={"doc": "stable id of the trajectory"})
    problem_id: str = field(default="", metadata={"doc": "the task (a problems row with env fields)"})
    task_id: str = field(default="", metadata={"doc": "the env's own task id, e.g. craft:<world>:train:3"})
    env: str = field(default="", metadata={"doc": "env kind: craft, twx, python"})
    env_name: str = field(default="", metadata={"doc": "the env class's name (craft, twx, or a user's own)"})
    split: str = field(default="train", metadata={"doc": "task split"})
    seed: int = field(default=0, metadata={"doc": "task seed"})
    sample_index: int = field(default=0, metadata={"doc": "which of the n episodes of the task (gold: 0)"})
    gold: bool = field(default=False, metadata={"doc": "the env's gold path (planner / TWX gold actions), not a "
                                                       "model's episode"})
    model: str = field(default="", metadata={"doc": "policy model; gold rows: gold:<env>"})
    engine: str = field(default="", metadata={"doc": "engine kind of the policy; gold rows: empty"})
    sampling_json: str = field(default="", metadata={"doc": "sampling parameters, JSON (gold rows: empty)"})
    prompt_template: str = field(default="", metadata={"doc": "ReAct opening template name@version"})
    max_steps: int = field(default=0, metadata={"doc": "step limit the episode ran under"})
    messages: list[Message] = field(default_factory=list, metadata={"doc": "the whole conversation, untrimmed"})
    steps: list[AgentStep] = field(default_factory=list, metadata={"doc": "one per policy turn"})
    n_steps: int = field(default=0, metadata={"doc": "steps taken"})
    success: bool = field(default=False, metadata={"doc": "the env says the task was solved"})
    final_reward: float = field(default=0.0, metadata={"doc": "sum of step rewards"})
    finish: str = field(default="", metadata={"doc": "why it ended: done (the env ended it) or max_steps"})
    n_unparsed: int = field(default=0, metadata={"doc": "turns whose action could not be parsed"})
    n_invalid: int = field(default=0, metadata={"doc": "steps the env answered as invalid (unparsed ones too)"})
    dropped_pairs: int = field(default=0, metadata={"doc": "most (assistant, user) pairs trimmed from one prompt "
                                                           "to fit the context"})
    prompt_tokens: int = field(default=0, metadata={"doc": "prompt tokens over every turn"})
    completion_tokens: int = field(default=0, metadata={"doc": "completion tokens over every turn"})
    drop_reason: Optional[str] = field(default=None, metadata={"doc": "why a later stage dropped it; null = kept"})


TRAJECTORIES = register_table(TableSpec(
    "trajectories", Trajectory, "trajectory_id", ("problem_id",),
    description="agent episodes (a policy's, or an env's gold path) in an environment: messages with loss flags, "
                "steps with raw text, parse_ok, action, observation, reward, done"))

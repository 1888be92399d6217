"""Row type of STeP: `step_trajectories`, one row per episode (self-reflected: the agent with the teacher checking
each step; golden: the env's planner or the teacher's own episode), messages with per-message loss, segments with
per-segment loss (an erroneous turn's thought may keep loss while its action does not), and every executed action
as a `steps` entry with the teacher's verdict, raw text and parse_ok beside it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from schemas.agent_rows import Message
from schemas.revision_rows import RevisionColumns, Segment
from schemas.registry import TableSpec, register_table


@dataclass
class StepSegment(Segment):
    message: int = field(default=0, metadata={"doc": "index of the message it is part of (a message's segments, "
                                                      "joined, are its content)"})


@dataclass
class StepRecord:
    idx: int = field(metadata={"doc": "1-based: the episode's idx-th executed action (agent's and teacher's)"})
    author: str = field(metadata={"doc": "agent (the agent's turn) or teacher (a reflection + corrected step)"})
    raw_text: str = field(metadata={"doc": "the turn's text as written (teacher: Reflection/Thought/Action)"})
    parse_ok: bool = field(metadata={"doc": "an action could be parsed from raw_text"})
    executed_action: str = field(metadata={"doc": "what the env was sent (replaying these from reset reproduces "
                                                  "every observation)"})
    observation: str = field(metadata={"doc": "the env's real answer to executed_action"})
    thought: Optional[str] = field(default=None, metadata={"doc": "the Thought part, parsed"})
    action: Optional[str] = field(default=None, metadata={"doc": "the Action, parsed; null when unparseable"})
    reward: float = field(default=0.0, metadata={"doc": "the step's env reward"})
    done: bool = field(default=False, metadata={"doc": "the env ended the episode here"})
    invalid: bool = field(default=False, metadata={"doc": "the env refused the action"})
    success: Optional[bool] = field(default=None, metadata={"doc": "the env's success flag of a done step"})
    outcome: int = field(default=0, metadata={"doc": "what the env showed: 3 solved, 2 positive reward, 1 "
                                                     "accepted, 0 refused, -1 ended unsolved / negative reward"})
    verdict: str = field(default="none", metadata={"doc": "the teacher's verdict of an agent step: ok, error, "
                                                          "unparsed (handled as ok); none: not judged (teacher "
                                                          "steps, golden rows)"})
    verdict_reason: Optional[str] = field(default=None, metadata={"doc": "the teacher's short reason"})
    verdict_raw: Optional[str] = field(default=None, metadata={"doc": "the teacher's verdict reply as written"})
    verdict_parse_ok: Optional[bool] = field(default=None, metadata={"doc": "the verdict could be read"})
    correction_raw: Optional[str] = field(default=None, metadata={"doc": "an erroneous step: the teacher's "
                                                                         "correction reply as written"})
    correction_parse_ok: Optional[bool] = field(default=None, metadata={"doc": "it had a reflection and an "
                                                                               "action (else no intervention)"})
    reflection: Optional[str] = field(default=None, metadata={"doc": "teacher steps: the reflection"})
    intervention: Optional[int] = field(default=None, metadata={"doc": "0-based intervention this step belongs "
                                                                       "to (the erroneous step and its correction)"})
    loss: bool = field(default=False, metadata={"doc": "the turn's action carries loss"})
    thought_loss: bool = field(default=False, metadata={"doc": "the turn's thought carries loss"})
    vs_agent: Optional[str] = field(default=None, metadata={"doc": "teacher steps: the corrected action's outcome "
                                                                   "against the erroneous step's: better, equal, "
                                                                   "worse"})
    compare: Optional[str] = field(default=None, metadata={"doc": "same_state (the corrected action was also "
                                                                  "tried from the state before the error) or "
                                                                  "after_error (its real outcome)"})
    counterfactual_outcome: Optional[int] = field(default=None, metadata={"doc": "same_state: the corrected "
                                                                                 "action's outcome there"})


@dataclass
class StepTrajectory(RevisionColumns):
    segments: list[StepSegment] = field(default_factory=list, metadata={"doc": "the messages' text in order, each "
                                                                               "piece with its author, loss and "
                                                                               "message index"})
    trajectory_kind: str = field(default="self_reflected", metadata={"doc": "self_reflected or golden"})
    is_golden: bool = field(default=False, metadata={"doc": "a golden trajectory (not the agent's)"})
    golden_source: Optional[str] = field(default=None, metadata={"doc": "golden rows: planner (the env's gold "
                                                                        "plan) or teacher (its own episode)"})
    task_id: str = field(default="", metadata={"doc": "the env's own task id"})
    env: str = field(default="", metadata={"doc": "env kind: craft, twx, python"})
    env_name: str = field(default="", metadata={"doc": "the env class's name"})
    split: str = field(default="train", metadata={"doc": "task split"})
    seed: int = field(default=0, metadata={"doc": "task seed"})
    sample_index: int = field(default=0, metadata={"doc": "which episode of the task"})
    agent_model: str = field(default="", metadata={"doc": "the agent's model (golden: gold:<env> or the "
                                                          "teacher's)"})
    teacher_model: str = field(default="", metadata={"doc": "the teacher's model"})
    sampling_json: str = field(default="", metadata={"doc": "agent and teacher sampling, JSON"})
    messages: list[Message] = field(default_factory=list, metadata={"doc": "the conversation with per-message "
                                                                           "loss (false on erroneous turns)"})
    steps: list[StepRecord] = field(default_factory=list, metadata={"doc": "every executed action, in order"})
    n_steps: int = field(default=0, metadata={"doc": "executed actions"})
    n_judged: int = field(default=0, metadata={"doc": "agent steps the teacher judged"})
    n_ok: int = field(default=0, metadata={"doc": "... judged ok"})
    n_error: int = field(default=0, metadata={"doc": "... judged error"})
    n_unparsed: int = field(default=0, metadata={"doc": "... whose verdict did not parse (handled as ok)"})
    interventions: int = field(default=0, metadata={"doc": "reflections + corrected steps"})
    better: int = field(default=0, metadata={"doc": "interventions whose corrected step did better than the "
                                                    "agent's"})
    equal: int = field(default=0, metadata={"doc": "... as well"})
    worse: int = field(default=0, metadata={"doc": "... worse"})
    success: bool = field(default=False, metadata={"doc": "the env says the task was solved"})
    final_reward: float = field(default=0.0, metadata={"doc": "sum of step rewards"})
    finish: str = field(default="", metadata={"doc": "done (the env ended it) or max_steps"})
    assistant_tokens: int = field(default=0, metadata={"doc": "tokens of the step turns (the agent's tokenizer; "
                                                              "fake engine: words)"})
    masked_tokens: int = field(default=0, metadata={"doc": "... of them without loss"})
    masked_fraction: float = field(default=0.0, metadata={"doc": "masked_tokens / assistant_tokens"})
    dropped_pairs: int = field(default=0, metadata={"doc": "most (assistant, user) pairs trimmed from the agent's "
                                                           "prompt"})
    drop_reason: Optional[str] = field(default=None, metadata={"doc": "not_successful, golden_over_ratio; null = "
                                                                      "kept"})


STEP_TRAJECTORIES = register_table(TableSpec(
    "step_trajectories", StepTrajectory, "revision_id", ("problem_id",),
    description="STeP trajectories: the agent's episodes with the teacher's verdict on each step, reflections and "
                "corrected steps (self_reflected), or golden ones; messages and segments with loss flags"))

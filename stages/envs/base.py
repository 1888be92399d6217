"""The agent-environment interface every environment implements (craft, twx, a user's own class).

    env = SomeEnv(**config)                 # cheap: no JVM, no files opened yet
    env.setup()                             # heavy resources (a JVM, recipe files); once per worker
    obs, info = env.reset(task)             # task: a row of the `problems` table's env fields, see EnvTask
    obs, reward, done, info = env.step(action_text)
    env.valid_actions()                     # list[str] where the env knows them, else None
    state = env.snapshot(); env.restore(state)   # only where `can_snapshot` is True; else callers replay
    env.describe()                          # what the manifest records (name, version, settings)
    env.tasks(split, count, seed)           # list[EnvTask] a recipe can run (where the env has a task list)
    env.gold_plan(task)                     # [(thought, action), ...] that solves the task (where the env knows one)
    env.close()

Rules:
- `step` never raises for a bad action text: the observation says the action is invalid (reward 0, done False,
  info["invalid"] = True).
- A failure of the environment itself (a JVM crash, a timeout) raises EnvFailure; the caller turns it into an
  error row for that episode and goes on. A new `reset` after EnvFailure must work (the env restarts what died).
- A terminal step (done True) sets info["success"] (bool): did the agent solve the task.
- Determinism: given the same task (task_id + seed) and the same actions, `reset` + `step`s give the same
  observations, so replaying actions from reset is an exact substitute for `restore` (used when an env cannot
  snapshot).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from schemas.errors import ErrataError

# What a caller sends when the model's text held no parseable action: no env accepts it, so the env answers with
# its own "invalid action" observation and the episode goes on (never a guessed action).
INVALID_ACTION = "(no parseable action)"


class EnvFailure(ErrataError):
    """The environment itself failed (crash, timeout); the episode becomes an error row."""

    def __init__(self, reason: str, message: str = ""):
        self.reason = reason
        super().__init__(f"{reason}: {message}" if message else reason)


@dataclass
class EnvTask:
    """One task of an environment: what `reset` needs to start the same episode again."""
    task_id: str                                   # stable id within the env, e.g. "craft:train:17"
    seed: int = 0
    split: str = "train"
    config: dict[str, Any] = field(default_factory=dict)   # env-specific (goal item, game params, ...)
    instruction: str = ""                          # the task instruction shown to the agent


class Env:
    """Base class. Subclasses set `name` and implement reset/step (and snapshot/restore if they can)."""

    name: str = "env"
    can_snapshot: bool = False

    def setup(self) -> None:
        """Acquire heavy resources (JVM, files). Called once per worker before the first reset."""

    def reset(self, task: EnvTask) -> tuple[str, dict[str, Any]]:
        raise NotImplementedError

    def step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]:
        raise NotImplementedError

    def valid_actions(self) -> Optional[list[str]]:
        return None

    def action_pattern(self) -> Optional[str]:
        """A regex every action this env accepts now matches (a policy's turn is constrained to it where the engine
        can); by default the valid actions, where the env lists them; None: any one line. Override it to give
        your env's action syntax."""
        actions = self.valid_actions()
        if not actions:
            return None
        from stages.formats import one_of
        return one_of(actions)

    def snapshot(self) -> Any:
        raise NotImplementedError(f"{self.name} cannot snapshot; replay the actions from reset")

    def restore(self, state: Any) -> None:
        raise NotImplementedError(f"{self.name} cannot restore; replay the actions from reset")

    def describe(self) -> dict[str, Any]:
        return {"env": self.name}

    def tasks(self, split: str, count: int, seed: int = 0) -> list[EnvTask]:
        """`count` tasks of `split`; the same arguments give the same tasks (ids included)."""
        raise NotImplementedError(f"{self.name} has no task list")

    def gold_plan(self, task: EnvTask) -> list[tuple[str, str]]:
        """(thought, action) pairs that solve `task` from reset. May reset the env."""
        raise NotImplementedError(f"{self.name} has no gold plan")

    def close(self) -> None:
        """Release what setup acquired."""


def replay(env: Env, task: EnvTask, actions: list[str]) -> tuple[str, float, bool, dict[str, Any]]:
    """Reset to `task` and step `actions`: the state `restore` would give, for envs that cannot snapshot.
    Returns the last (observation, reward, done, info); with no actions, the reset's observation and info."""
    obs, info = env.reset(task)
    reward, done = 0.0, False
    for a in actions:
        obs, reward, done, info = env.step(a)
    return obs, reward, done, info

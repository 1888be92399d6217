"""The agent-environment interface every environment implements (craft, twx, a user's own class).

    env = SomeEnv(**config)                 # cheap: no JVM, no files opened yet
    env.setup()                             # heavy resources (a JVM, recipe files); once per worker
    obs, info = env.reset(task)             # task: a row of the `problems` table's env fields, see EnvTask
    obs, reward, done, info = env.step(action_text)
    env.valid_actions()                     # list[str] where the env knows them, else None
    state = env.snapshot(); env.restore(state)   # only where `can_snapshot` is True; else callers replay
    env.describe()                          # what the manifest records (name, version, settings)
    env.close()

Rules:
- `step` never raises for a bad action text: the observation says the action is invalid (reward 0, done False,
  info["invalid"] = True).
- A failure of the environment itself (a JVM crash, a timeout) raises EnvFailure; the caller turns it into an
  error row for that episode and goes on. A new `reset` after EnvFailure must work (the env restarts what died).
- Determinism: given the same task (task_id + seed) and the same actions, `reset` + `step`s give the same
  observations, so replaying actions from reset is an exact substitute for `restore` (used when an env cannot
  snapshot).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from schemas.errors import ErrataError


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

    def snapshot(self) -> Any:
        raise NotImplementedError(f"{self.name} cannot snapshot; replay the actions from reset")

    def restore(self, state: Any) -> None:
        raise NotImplementedError(f"{self.name} cannot restore; replay the actions from reset")

    def describe(self) -> dict[str, Any]:
        return {"env": self.name}

    def close(self) -> None:
        """Release what setup acquired."""

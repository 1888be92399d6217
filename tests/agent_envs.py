"""Environments of our own for the agent tests, loaded by class path as a user's would be
(`env: {kind: python, class: "tests.agent_envs:CounterEnv", config: {target: 3}}`)."""
from __future__ import annotations

import os
import signal

from stages.envs.base import Env, EnvTask
from stages.envs.twx import TwxEnv


class CounterEnv(Env):
    """Count up to `target`: the action 'inc' adds one; anything else is invalid."""
    name = "counter"

    def __init__(self, target: int = 3):
        self.target, self.n = target, 0

    def tasks(self, split: str, count: int, seed: int = 0) -> list[EnvTask]:
        return [EnvTask(task_id=f"counter:{split}:{k}", seed=seed + k, split=split, config={"k": k},
                        instruction=f"Reach {self.target} with the action 'inc'.") for k in range(count)]

    def reset(self, task: EnvTask):
        self.n = 0
        return f"The count is 0. Goal: {self.target}.", {}

    def step(self, action: str):
        if action.strip() != "inc":
            return f"Invalid action {action!r}: the only action is 'inc'.", 0.0, False, {"invalid": True}
        self.n += 1
        done = self.n >= self.target
        return f"The count is {self.n}.", float(done), done, ({"success": True} if done else {})

    def gold_plan(self, task: EnvTask):
        return [("I count up.", "inc")] * self.target


class NoGoldCounterEnv(CounterEnv):
    gold_plan = Env.gold_plan


class KillingTwxEnv(TwxEnv):
    """TextWorldExpress whose JVM is killed (SIGKILL) at the first step of every episode of the task with seed
    `kill_seed`: the crash TWX might have, on cue. The next reset starts a new JVM."""

    def __init__(self, kill_seed: int = 1, **config):
        super().__init__(**config)
        self.kill_seed, self._seed, self.kills = kill_seed, None, 0

    def reset(self, task: EnvTask):
        self._seed = task.seed
        return super().reset(task)

    def step(self, action: str):
        if self._seed == self.kill_seed and self.jvm is not None and self.jvm.alive:
            os.kill(self.jvm.proc.pid, signal.SIGKILL)
            self.jvm.proc.wait(20)
            self.kills += 1
        return super().step(action)

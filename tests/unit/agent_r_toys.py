"""Test helpers for the Agent-R core: a deterministic line world (with and without snapshots), a tiny ReAct
parser, and scripted async policies. Imported by tests/unit/test_mcts.py and friends."""
from __future__ import annotations

import asyncio
import hashlib
import random
import re
from typing import Any, Optional

from stages.envs.base import Env, EnvFailure, EnvTask

ACTION = re.compile(r"^\s*Action:\s*(.*?)\s*$", re.MULTILINE)


def parse_action(text: str) -> tuple[Optional[str], bool]:
    """The last `Action:` line's text; (None, False) when there is none or it is empty."""
    found = ACTION.findall(text or "")
    if not found or not found[-1]:
        return None, False
    return found[-1], True


def turn(action: str, thought: str = "step") -> str:
    return f"Thought: {thought}\nAction: {action}"


class LineWorld(Env):
    """Positions on a line. Start at `start`; `right`/`left` move one step; reaching `goal` ends the episode
    with reward 1 (success); stepping on a `lava` cell ends it with reward -1 (a disaster); the first visit to a
    `coin` cell pays 0.25. `look` and `wait` change nothing. Stepping onto a `broken` cell raises EnvFailure, and
    so does every reset of a task with `reset_fails`.
    Anything else is invalid (reward 0, info["invalid"])."""

    name = "line"
    can_snapshot = False

    def __init__(self):
        self.pos = 0
        self.coins: frozenset = frozenset()
        self.done = False
        self.cfg: dict[str, Any] = {}
        self.resets = self.steps = self.restores = self.closed = self.setups = 0

    def setup(self) -> None:
        self.setups += 1

    def close(self) -> None:
        self.closed += 1

    def reset(self, task: EnvTask) -> tuple[str, dict]:
        self.resets += 1
        self.cfg = {"start": 0, "goal": 3, "lava": [-2], "coin": [], "broken": [], **task.config}
        if self.cfg.get("reset_fails"):
            raise EnvFailure("env_crash", "this task's reset always fails")
        self.pos, self.coins, self.done = self.cfg["start"], frozenset(), False
        return f"You stand at {self.pos}. The goal is at {self.cfg['goal']}.", {}

    def step(self, action: str) -> tuple[str, float, bool, dict]:
        self.steps += 1
        if self.done:
            return "The episode is over.", 0.0, True, {"invalid": True}
        a = (action or "").strip().lower()
        if a in ("look", "wait"):
            return f"You {a}. You are at {self.pos}.", 0.0, False, {}
        if a not in ("left", "right"):
            return f"Invalid action '{action}'.", 0.0, False, {"invalid": True}
        new = self.pos + (1 if a == "right" else -1)
        if new in self.cfg["broken"]:
            raise EnvFailure("env_crash", f"cell {new} is broken")
        self.pos = new
        if new in self.cfg["lava"]:
            self.done = True
            return f"You step into lava at {new}.", -1.0, True, {"success": False}
        if new == self.cfg["goal"]:
            self.done = True
            return f"You reach the goal at {new}.", 1.0, True, {"success": True}
        reward = 0.0
        if new in self.cfg["coin"] and new not in self.coins:
            self.coins = self.coins | {new}
            reward = 0.25
        return f"You move {a}. You are at {new}.", reward, False, {}

    def describe(self) -> dict:
        return {"env": self.name}


class SnapLineWorld(LineWorld):
    can_snapshot = True

    def snapshot(self) -> Any:
        return (self.pos, self.coins, self.done, dict(self.cfg))

    def restore(self, state: Any) -> None:
        self.restores += 1
        self.pos, self.coins, self.done, cfg = state
        self.cfg = dict(cfg)


class DriftingLineWorld(LineWorld):
    """Not deterministic: `look` reports how many resets this env has seen, so a replay differs."""

    def step(self, action: str) -> tuple[str, float, bool, dict]:
        obs, r, d, info = super().step(action)
        if action.strip().lower() == "look":
            obs = f"{obs} (reset #{self.resets})"
        return obs, r, d, info


def line_task(k: int = 0, **config) -> EnvTask:
    return EnvTask(task_id=f"line:{k}", seed=k, config=config,
                   instruction="Walk along the line to the goal cell. Actions: left, right, look, wait.")


def _digest(messages: list[dict]) -> str:
    return hashlib.sha256(repr([(m["role"], m["content"]) for m in messages]).encode()).hexdigest()


class RandomWalker:
    """A policy whose samples depend only on the prompt (never on call order): a seeded RNG keyed on the
    messages draws actions from `choices`; "..." stands for a reply with no Action line. Counts calls."""

    def __init__(self, choices=("right", "right", "left", "look", "..."), seed: int = 0):
        self.choices, self.seed = choices, seed
        self.calls = 0
        self.prompts: list[list[dict]] = []

    async def __call__(self, messages: list[dict], n: int, temperature: float) -> list[str]:
        self.calls += 1
        self.prompts.append(messages)
        rng = random.Random(f"{self.seed}:{_digest(messages)}")
        out = []
        for _ in range(n):
            c = rng.choice(self.choices)
            out.append("I am not sure what to do." if c == "..." else turn(c, f"try {c}"))
        await asyncio.sleep(0)
        return out


class Scripted:
    """A policy that answers by the conversation's depth (number of policy turns so far): script[depth] is the
    list of samples returned (cycled/trimmed to n). Records every call's (depth, n, temperature)."""

    def __init__(self, script: dict[int, list[str]], default: Optional[list[str]] = None):
        self.script, self.default = script, default or [turn("wait")]
        self.calls: list[tuple[int, int, float]] = []

    async def __call__(self, messages: list[dict], n: int, temperature: float) -> list[str]:
        depth = (len(messages) - 3) // 2
        self.calls.append((depth, n, temperature))
        samples = self.script.get(depth, self.default)
        return [samples[i % len(samples)] for i in range(n)]

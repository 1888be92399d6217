"""A recipe's `env:` section: which environment agent methods act in.

    env: {kind: craft, config: {generate: {seed: 0, depth: 3}}}
    env: {kind: twx, config: {game: coin, game_params: "numLocations=3"}}
    env: {kind: python, class: "my_pkg.envs:MazeEnv", config: {size: 5}}

The task source (`tasks: {kind: env}`) lists the env's tasks into `problems` rows; each row carries its env spec
and task as JSON (`env_config_json`), so the rollout stage rebuilds the env from the row alone (a recipe fed by a
published version of agent problems needs no `env:` section).
"""
from __future__ import annotations

import json
from typing import Any, Literal, Optional

from pydantic import ConfigDict, Field

from stages.envs import KINDS, Env, EnvTask, make_env, tasks_for
from stages.options import Options


class EnvSpec(Options):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    kind: Literal[KINDS] = Field("craft", description="craft: a generated crafting world (TextCraft's mechanics); "
                                                      "twx: TextWorldExpress games (needs java); python: your own "
                                                      "Env subclass named by `class`")
    class_path: Optional[str] = Field(None, alias="class", description="python: 'package.module:ClassName' of an "
                                                                       "Env subclass (importable where the "
                                                                       "build runs)")
    config: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the env's constructor "
                                                                     "(craft: CraftConfig, twx: TwxConfig, "
                                                                     "python: your class's)")

    def as_dict(self) -> dict[str, Any]:
        """The spec as recorded on problems rows: {kind, class, config}."""
        return {"kind": self.kind, "class": self.class_path, "config": self.config}

    def make(self) -> Env:
        """A new env (not set up). ConfigError names env.kind / env.class / env.config.<key>."""
        return make_env(self.kind, dict(self.config), self.class_path)

    def tasks(self, split: str, count: int, seed: int = 0) -> list[EnvTask]:
        return tasks_for(self.kind, dict(self.config), split, count, seed, self.class_path)


def task_record(spec: dict[str, Any], task: EnvTask) -> str:
    """`env_config_json` of a problems row: the env spec and the task, canonical JSON (stable ids)."""
    return json.dumps({**spec, "task": {"task_id": task.task_id, "seed": task.seed, "split": task.split,
                                        "config": task.config, "instruction": task.instruction}},
                      sort_keys=True, ensure_ascii=False, default=str)


def read_task_record(text: str) -> tuple[dict[str, Any], EnvTask]:
    """(env spec {kind, class, config}, EnvTask) from a problems row's `env_config_json`. ValueError if it is
    not one."""
    d = json.loads(text)
    if not isinstance(d, dict) or "task" not in d or "kind" not in d:
        raise ValueError("env_config_json: expected {kind, class, config, task}")
    t = d["task"]
    task = EnvTask(task_id=str(t["task_id"]), seed=int(t.get("seed", 0)), split=str(t.get("split", "train")),
                   config=dict(t.get("config") or {}), instruction=str(t.get("instruction") or ""))
    return {"kind": d["kind"], "class": d.get("class"), "config": dict(d.get("config") or {})}, task

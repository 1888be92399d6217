"""Agent environments behind one small interface (base.py). Nothing here imports Ray or Prefect.

    env = make_env("craft", {"generate": {"seed": 1}})
    env = make_env("twx", {"game": "coin", "game_params": "numLocations=5"})
    env = make_env("python", {"size": 5}, class_path="my_pkg.envs:MazeEnv")
    tasks = tasks_for("craft", {}, split="train", count=32, seed=0)

A recipe's env section maps onto these arguments: `{kind, class, config}`; errors name those fields
(`env.kind`, `env.class`, `env.config.<key>`). Env modules are imported on first use, so importing this package
costs nothing (no JVM bindings, no world generation).
"""
from __future__ import annotations

from typing import Any, Optional

from schemas.errors import ConfigError
from stages.envs.base import INVALID_ACTION, Env, EnvFailure, EnvTask, replay

KINDS = ("craft", "twx", "python")

__all__ = ["Env", "EnvTask", "EnvFailure", "INVALID_ACTION", "KINDS", "make_env", "tasks_for", "replay"]


def env_class(kind: str) -> type[Env]:
    if kind == "craft":
        from stages.envs.craft import CraftEnv
        return CraftEnv
    if kind == "twx":
        from stages.envs.twx import TwxEnv
        return TwxEnv
    raise ConfigError(f"env.kind: unknown environment kind {kind!r} (known: {', '.join(KINDS)})")


def make_env(kind: str, config: Optional[dict[str, Any]] = None, class_path: Optional[str] = None) -> Env:
    """A new, not yet set up, environment. `class_path` ("package.module:ClassName") is for kind "python"."""
    from stages.envs.python_env import construct, make_python_env
    config = {} if config is None else config
    if kind == "python":
        if not class_path:
            raise ConfigError("env.class: required for kind 'python' ('package.module:ClassName')")
        return make_python_env(class_path, config)
    if class_path:
        raise ConfigError(f"env.class: only kind 'python' takes a class (kind is {kind!r})")
    return construct(env_class(kind), config, kind)


def tasks_for(kind: str, config: Optional[dict[str, Any]], split: str, count: int, seed: int = 0,
              class_path: Optional[str] = None) -> list[EnvTask]:
    """`count` tasks of `split` for an env of this kind and config (the env's `tasks`); same arguments, same
    tasks. Needs no setup beyond what `tasks` itself does (craft builds its world; twx starts no JVM)."""
    if not isinstance(count, int) or count < 1:
        raise ConfigError(f"count: expected a positive integer, got {count!r}")
    env = make_env(kind, config, class_path)
    try:
        return env.tasks(split, count, seed)
    except NotImplementedError:
        raise ConfigError(f"env.class: {class_path or kind} has no task list (implement "
                          f"tasks(split, count, seed))") from None

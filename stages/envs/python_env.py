"""Bring your own environment: a class named "package.module:ClassName" that subclasses Env.

    env: {kind: python, class: "my_pkg.envs:MazeEnv", config: {size: 5}}    ->  MazeEnv(size=5)

Every problem is a ConfigError naming the recipe field: `env.class` for a path that does not import or a class
that is no Env (not a subclass, or reset/step not implemented), `env.config.<key>` for a keyword the class does
not take or a required one that is missing.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any

from pydantic import ValidationError

from schemas.errors import ConfigError
from stages.envs.base import Env


def load_env_class(class_path: Any) -> type[Env]:
    if not isinstance(class_path, str) or class_path.count(":") != 1:
        raise ConfigError(f"env.class: expected 'package.module:ClassName', got {class_path!r}")
    module_name, _, attr = class_path.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"env.class: expected 'package.module:ClassName', got {class_path!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:      # ModuleNotFoundError, or the module itself failed on import
        raise ConfigError(f"env.class: cannot import module {module_name!r} "
                          f"({type(e).__name__}: {e})") from None
    cls = module
    for part in attr.split("."):
        cls = getattr(cls, part, None)
        if cls is None:
            raise ConfigError(f"env.class: module {module_name!r} has no {attr!r}")
    if not (isinstance(cls, type) and issubclass(cls, Env)):
        raise ConfigError(f"env.class: {class_path} is not an environment class (subclass "
                          f"stages.envs.base.Env and implement reset and step)")
    missing = [m for m in ("reset", "step") if getattr(cls, m) is getattr(Env, m)]
    if missing:
        raise ConfigError(f"env.class: {class_path} does not implement {' and '.join(missing)}")
    return cls


def check_kwargs(cls: type, config: dict[str, Any], what: str) -> None:
    """ConfigError naming env.config.<key> if `cls(**config)` cannot bind."""
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):
        return
    params = sig.parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    named = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if not takes_any:
        for key in config:
            if key not in named:
                raise ConfigError(f"env.config.{key}: {what} takes no option {key!r} "
                                  f"(it takes: {', '.join(named) or 'nothing'})")
    for n, p in params.items():
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is p.empty and n not in config:
            raise ConfigError(f"env.config.{n}: required by {what}")


def construct(cls: type[Env], config: dict[str, Any], what: str) -> Env:
    """`cls(**config)`, every failure a ConfigError naming the field."""
    if not isinstance(config, dict):
        raise ConfigError(f"env.config: expected a mapping of options, got {type(config).__name__}")
    check_kwargs(cls, config, what)
    try:
        return cls(**config)
    except ConfigError:
        raise
    except ValidationError as e:
        msgs = "; ".join(f"env.config.{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors())
        raise ConfigError(msgs) from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"env.config: {what} rejected its options: {e}") from None


def make_python_env(class_path: Any, config: dict[str, Any]) -> Env:
    cls = load_env_class(class_path)
    return construct(cls, config, class_path)

"""The configuration reference (docs/configuration.md), generated from the typed configs' field descriptions.

Every recipe has the common sections of `RecipeConfig` (dataset, method, tasks, env, limit, engines, execution,
storage), rendered once; each built-in method's recipe model adds one section per stage, rendered per method.
Nested models are walked: a field is listed by its dotted recipe key (`engines.<role>.dtype`, `env.class`), with
its type, default and description.

    python -m pipelines.config_reference > docs/configuration.md
"""
from __future__ import annotations

import enum
import types
import typing
from typing import Any, Optional

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

HEADER = """# Configuration reference

Generated from the typed configs' field descriptions by `python -m pipelines.config_reference >
docs/configuration.md`; do not edit by hand. A recipe is YAML with these keys; `errata build RECIPE --set
KEY=VALUE` overrides any of them (dotted keys as listed). Unknown keys are errors.
"""


def _is_union(ann: Any) -> bool:
    return typing.get_origin(ann) in (typing.Union, types.UnionType)


def _model_in(ann: Any) -> Optional[type[BaseModel]]:
    """The pydantic model an annotation holds directly or as `Optional[Model]`; None otherwise."""
    if _is_union(ann):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        ann = args[0] if len(args) == 1 else None
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def _dict_of_models(ann: Any) -> Optional[type[BaseModel]]:
    """The value model of a `dict[str, Model]` (e.g. `engines`: role -> EngineConfig); None otherwise."""
    if typing.get_origin(ann) is dict:
        args = typing.get_args(ann)
        if len(args) == 2:
            return _model_in(args[1])
    return None


def type_name(ann: Any) -> str:
    """A short, readable type: `int`, `float | None`, `'auto' | 'ray' | 'local'`, `list[str]`."""
    if ann is type(None):
        return "None"
    origin = typing.get_origin(ann)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(ann))
    if _is_union(ann):
        return " | ".join(type_name(a) for a in typing.get_args(ann))
    if origin is not None:
        args = typing.get_args(ann)
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(type_name(a) for a in args)}]" if args else name
    if ann is typing.Any:
        return "any"
    if isinstance(ann, type):
        return ann.__name__
    return str(ann).replace("typing.", "")


def default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        value = field.default_factory()
    else:
        value = field.default
    if value is PydanticUndefined:
        return "required"
    if isinstance(value, BaseModel):
        return ""                         # a section: its fields carry the defaults
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, str):
        return repr(value)
    if value is None:
        return "None"
    text = str(value)
    if isinstance(value, (list, tuple, dict)) and len(text) > 80:
        return f"{type(value).__name__} of {len(value)} (see the code)"
    return text


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def field_rows(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, description) for every field of `model`, nested models walked."""
    rows: list[tuple[str, str, str, str]] = []
    for name, field in model.model_fields.items():
        key = prefix + (field.alias or name)
        ann = field.annotation
        sub = _model_in(ann)
        values = _dict_of_models(ann)
        description = field.description or ""
        if sub is not None:
            rows.append((key, "section" + (" (optional)" if _is_union(ann) else ""), "", description))
            rows.extend(field_rows(sub, key + "."))
        elif values is not None:
            rows.append((key, f"mapping of name -> {values.__name__}", "", description))
            placeholder = "<role>" if name == "engines" else "<name>"
            rows.extend(field_rows(values, f"{key}.{placeholder}."))
        else:
            rows.append((key, type_name(ann), default_text(field), description))
    return rows


def _table(rows: list[tuple[str, str, str, str]]) -> list[str]:
    out = ["| key | type | default | description |", "|---|---|---|---|"]
    for key, typ, default, description in rows:
        out.append(f"| `{_cell(key)}` | {_cell(typ)} | {_cell(default)} | {_cell(description)} |")
    return out


def builtin_methods() -> dict:
    """The built-in methods (pipelines/methods/__init__.py), in that order, as registered."""
    from pipelines.methods import BUILTIN
    from schemas.registry import get_method
    return {name: get_method(name) for name in BUILTIN}


def config_reference() -> str:
    """Markdown for the common recipe sections and every built-in method's stage sections."""
    from pipelines.config import RecipeConfig, recipe_model

    lines = [HEADER, "## Sections every recipe has", ""]
    lines += _table(field_rows(RecipeConfig))
    common = set(RecipeConfig.model_fields)
    for name, method in builtin_methods().items():
        model = recipe_model(name)
        lines += ["", f"## Method `{name}`", "", _cell(method.description) + ".", "",
                  f"Stages: {' → '.join(method.stage_names())}. Engine roles: {', '.join(method.roles)}.", ""]
        for section, field in model.model_fields.items():
            if section in common:
                continue
            sub = _model_in(field.annotation)
            lines += [f"### `{section}`", "", _cell(field.description or ""), ""]
            rows = field_rows(sub, section + ".") if sub is not None else []
            lines += _table(rows) if rows else ["(no options)"]
            lines.append("")
        lines.pop()
    return "\n".join(lines).rstrip("\n") + "\n"


if __name__ == "__main__":
    print(config_reference(), end="")

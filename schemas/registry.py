"""The registry: what exists by name. Tables (row types), methods (chains of stages) and exports register here.

This module imports nothing of the build machinery (pipelines/, stages/, flows/): a method package registers its
tables, exports and its Method at import, and the machinery looks them up by name. The built-in methods are listed
in pipelines/methods/__init__.py; a third party's method is a recipe's `method: "package.module:NAME"` or an entry
point of the group `errata.methods`. Looking a name up loads the built-ins first (`load_methods`), so a table of any
built-in method is known wherever it is asked for (`errata show --id`, SQL, exports).

- A table: `TableSpec(name, row_type, id_column, parent_columns, scope)`. `parent_columns` hold ids of the rows a
  row was made from (lineage joins, `show --id`); scope "shard" tables are split like the problems they come from,
  a "build" table is computed once over the whole build by a global stage.
- A method: `Method(name, description, stages=(StageSpec(step_name, StageClass), ...), roles, exports, home)`;
  `home` is the method's folder, whose `prompts/` and `recipes/` are found there.
- An export: `ExportSpec(name, reads, description, schema, convert, ...)`, a pure per-row converter over a
  version's tables in TRL's column conventions.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import pyarrow as pa

from schemas.errors import ConfigError
from schemas.rows import Attempt, ErrorRecord, Judgement, Problem, arrow_schema, columns

BUILTIN_METHODS_MODULE = "pipelines.methods"     # lists the built-in method packages (`load_builtin`)
ENTRY_POINT_GROUP = "errata.methods"             # third-party methods: an entry point naming a Method


# --- tables -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TableSpec:
    name: str
    row_type: type
    id_column: str
    parent_columns: tuple[str, ...] = ()
    scope: Literal["shard", "build"] = "shard"
    description: str = ""

    @property
    def schema(self) -> pa.Schema:
        return arrow_schema(self.row_type)

    @property
    def columns(self) -> list[str]:
        return columns(self.row_type)


_TABLES: dict[str, TableSpec] = {}


def register_table(spec: TableSpec) -> TableSpec:
    """Register a table; registering the same spec again is a no-op, a different one under a taken name an error."""
    have = _TABLES.get(spec.name)
    if have is not None and have != spec:
        raise ConfigError(f"table '{spec.name}' is already registered with another definition")
    if spec.id_column not in spec.columns:
        raise ConfigError(f"table '{spec.name}': id column '{spec.id_column}' is not a field of "
                          f"{spec.row_type.__name__}")
    missing = [c for c in spec.parent_columns if c not in spec.columns]
    if missing:
        raise ConfigError(f"table '{spec.name}': parent columns {missing} are not fields of {spec.row_type.__name__}")
    _TABLES[spec.name] = spec
    return spec


def get_table(name: str) -> TableSpec:
    if name not in _TABLES:
        load_methods()
    try:
        return _TABLES[name]
    except KeyError:
        raise ConfigError(f"unknown table '{name}' (registered: {', '.join(sorted(_TABLES))})") from None


def registered_tables() -> dict[str, TableSpec]:
    load_methods()
    return dict(_TABLES)


def id_column(table: str) -> str | None:
    if table not in _TABLES:
        load_methods()
    spec = _TABLES.get(table)
    return spec.id_column if spec else None


ERRORS = "errors"

register_table(TableSpec("problems", Problem, "problem_id",
                         description="the tasks: questions (math) or environment tasks (agents), with references"))
register_table(TableSpec("attempts", Attempt, "attempt_id", ("problem_id",),
                         description="model samples of a problem, verified against its reference"))
register_table(TableSpec("judgements", Judgement, "judgement_id", ("target_id", "problem_id"),
                         description="an LLM's verdict on an attempt (or injection): parsed fields beside its raw "
                                     "text, parse_ok"))
register_table(TableSpec(ERRORS, ErrorRecord, "error_id", ("row_id",),
                         description="rows that failed inside a stage: stage, table, row id, reason, raw input/output"))


# --- exports ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExportSpec:
    name: str
    reads: tuple[str, ...]
    description: str
    schema: pa.Schema
    convert: Callable[[dict[str, list[dict]], str, dict[str, Any]], list[dict]]   # tables, source ref, options
    trl_format: str = ""          # what the card says TRL sees
    options: dict[str, str] = field(default_factory=dict)   # option -> description
    # options -> facts recorded with the export (card and export_metadata.json), e.g. the tokenizer and its
    # chat template's hash of a pre-tokenized export; None: nothing beyond the card
    metadata: Callable[[dict[str, Any]], dict[str, Any]] | None = None


_EXPORTS: dict[str, ExportSpec] = {}


def register_export(spec: ExportSpec) -> ExportSpec:
    _EXPORTS[spec.name] = spec
    return spec


def get_export(name: str) -> ExportSpec:
    if name not in _EXPORTS:
        load_methods()
    try:
        return _EXPORTS[name]
    except KeyError:
        raise ConfigError(f"unknown export '{name}' (registered: {', '.join(sorted(_EXPORTS))})") from None


def registered_exports() -> dict[str, ExportSpec]:
    load_methods()
    return dict(_EXPORTS)


# --- methods ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StageSpec:
    name: str                 # the step's name: config section, stats key, checkpoint directory
    stage: type               # a stages.base.Stage subclass


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    stages: tuple[StageSpec, ...]
    roles: tuple[str, ...] = ("student",)
    inputs: tuple[str, ...] = ("problems",)          # tables a task source provides
    exports: dict[str, str] = field(default_factory=dict)   # --format alias -> registered export name
    # manifest `stages` -> named figures the build summary prints (e.g. LEMMA's yield per stage); None: nothing
    summary: Optional[Callable[[dict], dict]] = None
    home: Optional[Path] = None                      # the method's folder: its prompts/ and recipes/

    def stage_names(self) -> list[str]:
        return [s.name for s in self.stages]


RESERVED_SECTIONS = frozenset({"dataset", "method", "description", "tasks", "env", "limit", "engines",
                               "execution", "storage", "clean"})   # recipe sections every method has (pipelines/config.py RecipeConfig)

_METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    names = method.stage_names()
    if len(set(names)) != len(names):
        raise ConfigError(f"method '{method.name}': stage names must be unique ({names})")
    clash = set(names) & RESERVED_SECTIONS
    if clash:
        raise ConfigError(f"method '{method.name}': stage names {sorted(clash)} clash with recipe sections")
    _METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    load_methods()
    if name not in _METHODS and ":" in name:
        _METHODS[name] = _method_from_ref(name)
    try:
        return _METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown method '{name}' (known: {', '.join(sorted(_METHODS))}; a method of your own: "
                          f"'package.module:NAME')") from None


def methods() -> dict[str, Method]:
    load_methods()
    return dict(_METHODS)


def _method_from_ref(ref: str) -> Method:
    """`package.module:NAME` -> the Method that module defines (importing it registers its tables and exports)."""
    module, _, attr = ref.partition(":")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"method '{ref}': cannot load it ({e})") from None
    if not isinstance(obj, Method):
        raise ConfigError(f"method '{ref}': {module}.{attr} is a {type(obj).__name__}, not a Method")
    return obj


_LOADED = False


def load_methods() -> None:
    """Register the built-in methods (listed in pipelines/methods/__init__.py) and the entry points of the group
    `errata.methods`, once per process. Each method package registers its tables and exports at import."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    importlib.import_module(BUILTIN_METHODS_MODULE).load_builtin()
    from importlib.metadata import entry_points
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            method = ep.load()
        except Exception as e:      # a broken third-party package must not hide the built-ins
            raise ConfigError(f"entry point '{ep.name}' ({ep.value}) of group {ENTRY_POINT_GROUP}: {e}") from None
        if not isinstance(method, Method):
            raise ConfigError(f"entry point '{ep.name}' ({ep.value}) is a {type(method).__name__}, not a Method")
        register_method(method)

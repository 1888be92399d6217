"""Typed configuration: one model per thing, a description on every field, YAML in, `--set key=value` overrides.

A recipe is YAML mapped onto the typed model of its method (the registry, schemas/registry.py): the common sections (dataset,
method, tasks, limit, engines, execution, storage) plus one section per stage of the method, named after the stage
and typed by the stage's own options class (which lives beside the stage). `load_recipe("demo", ["generate.n=8"])`
finds the built-in recipe `pipelines/methods/sample_verify/recipes/demo.yaml` (or takes a path), applies overrides, validates, and raises
ConfigError naming the offending key on any problem.
"""
from __future__ import annotations

import hashlib
import json
import os
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

import yaml
from pydantic import BaseModel, Field, ValidationError, create_model, model_validator

from pipelines.clean import CLEAN_STAGES, CleanConfig, clean_stage_config
from schemas.errors import ConfigError
from schemas.registry import Method, get_method, methods
from stages.engines.config import EMBEDDED_MODEL, EngineConfig  # noqa: F401  (re-exported)
from stages.envs.spec import EnvSpec
from stages.filter import DedupConfig
from stages.options import Options
from stages.tasks import TaskSourceConfig

DEFAULT_METHOD = "sample_verify"


class ExecutionConfig(Options):
    runner: Literal["auto", "ray", "local"] = Field(
        "auto", description="ray: Ray Data stages and engine actors; local: in process, same output; auto: local on "
                            "a CPU-only machine with 2 usable cores or fewer (where Ray's processes slow the "
                            "engine) unless ray_address is set, Ray is already up in this process or "
                            "VLLM_CPU_NUM_OF_RESERVED_CPU keeps a core from the engine; else ray. The manifest "
                            "records which ran and why")
    ray_address: Optional[str] = Field(None, description="Ray cluster address; none = local ray.init")
    num_cpus: Optional[int] = Field(None, description="logical CPUs for a local ray.init (default: machine); "
                                                      "used when the runner is ray")
    shard_size: int = Field(32, ge=1, description="problems per shard: the unit of checkpointing and of resume")
    max_error_fraction: float = Field(0.5, ge=0, le=1, description="the most of a stage's results that may be "
                                                                   "errors: above it the build stops before "
                                                                   "publishing (rc != 0) and forgets that stage's "
                                                                   "work on the shards with errors, so a rerun "
                                                                   "redoes them")
    allow_errors: bool = Field(False, description="publish even when a stage's errors exceed max_error_fraction "
                                                  "(the manifest says so); `errata build --allow-errors`")
    shards_in_flight: int = Field(4, ge=1, description="shards an LLM stage works on at once; their requests "
                                                       "share the engine's batch, so one shard's long tail does "
                                                       "not leave the engine half idle")
    cpu_stage_concurrency: int = Field(1, ge=1, description="Ray: parallel workers for CPU stages (unfused)")
    fuse_stages: Optional[bool] = Field(None, description="Ray: run the CPU stages that follow an LLM stage in "
                                                          "that stage's actor (threads) instead of actor pools "
                                                          "of their own. Each Ray actor and operator costs the "
                                                          "engine CPU on a small machine; on a cluster, unfused "
                                                          "CPU stages scale out. Default: fused on a local Ray, "
                                                          "unfused with ray_address")

    def fused(self) -> bool:
        """Whether the Ray runner fuses CPU stages into the LLM stage's actor (`fuse_stages` or its default)."""
        return self.fuse_stages if self.fuse_stages is not None else not self.ray_address


class StorageConfig(Options):
    root: str = Field("data", description="storage root: a directory or an fsspec URL (s3://...); datasets "
                                          "under <root>/datasets, staging under <root>/staging, models under "
                                          "<root>/models")


class RecipeConfig(Options):
    """The sections every recipe has. Each method's recipe model adds one section per stage."""

    roles: ClassVar[tuple[str, ...]] = ()          # engine roles the method's stages use (set per method)
    stage_sections: ClassVar[tuple[str, ...]] = ()

    dataset: str = Field(..., pattern=r"^[a-z][a-z0-9_]*$", description="dataset name the build publishes to")
    method: str = Field(DEFAULT_METHOD, description="the method (recipe kind): which stages run, see "
                                                    "`errata recipes`")
    description: str = Field("", description="free text")
    tasks: TaskSourceConfig = Field(default_factory=TaskSourceConfig, description="where problems come from")
    env: Optional[EnvSpec] = Field(None, description="agent methods: the environment ({kind, class, config}); "
                                                     "`tasks: {kind: env}` lists its tasks")
    limit: Optional[int] = Field(None, ge=1, description="use only the first N problems")
    engines: dict[str, EngineConfig] = Field(default_factory=dict,
                                             description="engine per role (student, teacher, ...); roles with the "
                                                         "same settings share one engine; unset roles get the "
                                                         "embedded model")
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig, description="how it runs")
    storage: StorageConfig = Field(default_factory=StorageConfig, description="where it is written")
    clean: CleanConfig = Field(default_factory=CleanConfig, description="cleaning stages any method can add: "
                                                                        "near-duplicate removal, decontamination "
                                                                        "against evaluation sets (docs/cleaning.md)")

    @model_validator(mode="after")
    def _roles_have_engines(self) -> "RecipeConfig":
        roles = self.used_roles()
        extra = sorted(set(self.engines) - set(roles)) if self.stage_sections else []
        if extra:
            raise ValueError(f"engines: {', '.join(extra)} not a role of method '{self.method}' "
                             f"(roles: {', '.join(roles) or 'none'})")
        for role in roles:
            if role not in self.engines:
                self.engines[role] = EngineConfig()
        return self

    @model_validator(mode="after")
    def _kept_duplicates_stay(self) -> "RecipeConfig":
        """`tasks.keep_duplicates` keeps repeated problems: a `dedup` stage (which drops the attempts of repeated
        questions) is then off unless the recipe turns it on itself."""
        if self.tasks.keep_duplicates:
            for sec in self.stage_sections:
                cfg = getattr(self, sec, None)
                if isinstance(cfg, DedupConfig) and "enabled" not in cfg.model_fields_set:
                    cfg.enabled = False
        return self

    @model_validator(mode="after")
    def _env_tasks_need_env(self) -> "RecipeConfig":
        if self.tasks.kind == "env" and self.env is None:
            raise ValueError("tasks.kind=env lists the tasks of the recipe's environment: add an `env:` section "
                             "({kind: craft|twx|python, class: ..., config: {...}})")
        return self

    def used_roles(self) -> list[str]:
        """The method's roles plus any role a stage section names (`role`, `teacher_role`)."""
        roles = list(self.roles)
        for sec in self.stage_sections:
            for attr in ("role", "teacher_role"):      # a stage that calls two models names both (STeP)
                r = getattr(getattr(self, sec, None), attr, None)
                if r and r not in roles:
                    roles.append(r)
        return roles

    def stage_config(self, section: str) -> Options:
        if section in CLEAN_STAGES and section not in self.stage_sections:
            return clean_stage_config(self.clean, section)
        return getattr(self, section)

    def config_hash(self) -> str:
        """Hash of what determines the output (not where or how it runs)."""
        d = self.model_dump(mode="json", exclude={"execution": {"runner", "ray_address", "num_cpus",
                                                                 "cpu_stage_concurrency", "shards_in_flight",
                                                                 "fuse_stages", "max_error_fraction",
                                                                 "allow_errors"},
                                                  "storage": True, "description": True})
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def builtin_recipes() -> dict[str, Path]:
    """Recipe name -> file, from every registered method's `recipes/` folder."""
    out: dict[str, Path] = {}
    for m in methods().values():
        if m.home is not None:
            for p in sorted((Path(m.home) / "recipes").glob("*.yaml")):
                out.setdefault(p.stem, p)
    return dict(sorted(out.items()))


def recipe_names() -> list[str]:
    return list(builtin_recipes())


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _model_of(annotation: Any) -> Optional[type[BaseModel]]:
    ann = annotation
    if typing.get_origin(ann) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        ann = args[0] if len(args) == 1 else ann
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def apply_override(data: dict, assignment: str, model: type[BaseModel]) -> None:
    """Apply one `a.b.c=value` to a nested dict, checking every key against the recipe model. A dict-of-models
    section (`engines`) takes any key at its level (a role), then that model's fields."""
    if "=" not in assignment:
        raise ConfigError(f"--set '{assignment}': expected key=value")
    key, _, value = assignment.partition("=")
    parts = key.strip().split(".")
    node: dict = data
    current: Optional[type[BaseModel]] = model
    i = 0
    while i < len(parts):
        part = parts[i]
        last = i == len(parts) - 1
        fields = current.model_fields if current is not None else {}
        fields = {**fields, **{f.alias: f for f in fields.values() if f.alias}}   # env.class (alias of class_path)
        if part not in fields:
            raise ConfigError(f"--set '{key}': unknown key '{'.'.join(parts[:i + 1])}' "
                              f"(known here: {', '.join(sorted(fields))})")
        ann = fields[part].annotation
        if last:
            node[part] = _parse_value(value)
            return
        sub = _model_of(ann)
        if sub is None and typing.get_origin(ann) is dict:      # engines.<role>.<field>
            value_model = _model_of(typing.get_args(ann)[1])
            node = node.setdefault(part, {})
            if not isinstance(node, dict) or value_model is None:
                raise ConfigError(f"--set '{key}': '{part}' is not a section")
            i += 1
            if i == len(parts) - 1:
                raise ConfigError(f"--set '{key}': set a field of '{'.'.join(parts[:i + 1])}', "
                                  f"e.g. {'.'.join(parts[:i + 1])}.model=...")
            node = node.setdefault(parts[i], {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set '{key}': '{parts[i]}' is not a section")
            current = value_model
            i += 1
            continue
        if sub is None:
            raise ConfigError(f"--set '{key}': '{part}' is not a section")
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set '{key}': '{part}' is not a section")
        current = sub
        i += 1


def resolve_recipe_path(recipe: str) -> Path:
    p = Path(recipe)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.exists():
            raise ConfigError(f"recipe file not found: {p}")
        return p
    builtin = builtin_recipes().get(recipe)
    if builtin is None:
        raise ConfigError(f"unknown recipe '{recipe}': not a file and not a built-in recipe "
                          f"(built-in: {', '.join(recipe_names())})")
    return builtin


def read_yaml_mapping(path: Path, what: str) -> dict:
    """A YAML file that must hold a mapping (empty file: {}); ConfigError naming the file otherwise."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: {what}")
    return data


_MODELS: dict[tuple[str, int], type[RecipeConfig]] = {}


def recipe_model(method: str | Method) -> type[RecipeConfig]:
    """The typed recipe of a method: the common sections plus one section per stage, typed by the stage's options."""
    m = get_method(method) if isinstance(method, str) else method
    key = (m.name, id(m))
    if key not in _MODELS:
        sections = {s.name: (s.stage.config_class,
                             Field(default_factory=s.stage.config_class,
                                   description=f"stage '{s.name}' ({s.stage.kind}): {s.stage.description}"))
                    for s in m.stages}
        model = create_model(f"Recipe_{m.name}", __base__=RecipeConfig, **sections)
        model.roles = tuple(m.roles)
        model.stage_sections = tuple(sections)
        _MODELS[key] = model
    return _MODELS[key]


def load_recipe(recipe: str, overrides: list[str] | tuple[str, ...] = ()) -> RecipeConfig:
    """Load a recipe by name or path, apply `key=value` overrides, validate."""
    path = resolve_recipe_path(recipe)
    data = read_yaml_mapping(path, "a recipe is a mapping of settings")
    for o in overrides:   # `method` first: it decides which sections exist
        if o.partition("=")[0].strip() == "method":
            data["method"] = _parse_value(o.partition("=")[2])
    model = recipe_model(str(data.get("method") or DEFAULT_METHOD))
    for o in overrides:
        apply_override(data, o, model)
    return validate_recipe(data, source=str(path))


def validate_recipe(data: dict, source: str = "recipe") -> RecipeConfig:
    method = data.get("method") or DEFAULT_METHOD
    if not isinstance(method, str):
        raise ConfigError(f"{source}: method: expected a method name, got {method!r}")
    model = recipe_model(method)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{source}: {validation_message(e)}") from None


def validation_message(e: ValidationError) -> str:
    """'section.field: what is wrong' for each error, without pydantic's 'Value error, ' noise."""
    out = []
    for err in e.errors():
        msg = err["msg"].removeprefix("Value error, ")
        loc = ".".join(str(x) for x in err["loc"])
        out.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(out)


def data_root(config: RecipeConfig | None = None) -> str:
    """Storage root: ERRATA_DATA env var wins, then the recipe, then ./data."""
    return os.environ.get("ERRATA_DATA") or (config.storage.root if config else "data")

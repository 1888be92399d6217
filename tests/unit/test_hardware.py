"""The dtype rule: bf16 only where the hardware computes it natively (issue: fast and legible on every CPU)."""
import pytest
import torch

from schemas.errors import ConfigError
from stages.engines import hardware as hw
from stages.engines.hardware import Device, choose_dtype, default_memory_utilization, normalize_dtype

AVX2 = Device("cpu", "AMD EPYC", "AVX2", False, "AVX2, no avx512_bf16/amx")
AMX = Device("cpu", "Intel Xeon", "AVX512", True, "AVX512 with amx")
H100 = Device("cuda", "NVIDIA H100", "9.0", True, "compute capability 9.0 >= 8.0")
T4 = Device("cuda", "Tesla T4", "7.5", False, "compute capability 7.5 < 8.0")


@pytest.mark.parametrize("device,want", [(AVX2, "float32"), (AMX, "bfloat16"), (H100, "bfloat16"),
                                         (T4, "float16")])
def test_auto_picks_by_capability(device, want):
    c = choose_dtype("auto", device)
    assert c.dtype == want and c.requested == "auto" and c.warning is None
    assert c.reason.startswith(device.kind + ": ") and c.reason.endswith(want)


def test_auto_reason_names_the_cpu_capability():
    assert choose_dtype("auto", AVX2).reason == "cpu: AVX2, no avx512_bf16/amx, no native bf16 -> float32"


def test_explicit_dtype_is_obeyed_with_a_warning_for_emulated_bf16():
    c = choose_dtype("bf16", AVX2)
    assert c.dtype == "bfloat16" and c.requested == "bfloat16"
    assert c.warning and "without native bf16" in c.warning and "auto" in c.warning
    assert choose_dtype("bfloat16", AMX).warning is None
    assert choose_dtype("float32", AMX).dtype == "float32"
    assert choose_dtype("fp16", T4).dtype == "float16"


def test_unknown_dtype_is_a_config_error():
    with pytest.raises(ConfigError, match="engine.dtype"):
        normalize_dtype("int4")


def test_memory_budget_follows_dtype():
    assert default_memory_utilization("float32", AVX2) == 0.4
    assert default_memory_utilization("bfloat16", AMX) == 0.3
    assert default_memory_utilization("bfloat16", H100, engines_on_device=2) == 0.425


def test_engines_on_one_cpu_node_split_its_budget_down_to_what_still_starts():
    assert default_memory_utilization("bfloat16", AMX, engines_on_device=2) == 0.15
    assert default_memory_utilization("bfloat16", AMX, engines_on_device=3) == 0.15   # floor: below, no KV room
    assert default_memory_utilization("float32", AVX2, engines_on_device=2) == 0.3    # fp32 at 0.15 did not start
    assert default_memory_utilization("bfloat16", H100, engines_on_device=4) == 0.212


def _fake_cpu(monkeypatch, capability, bf16_hw, flags=()):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: bf16_hw)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(hw, "_cpu_flags", lambda: set(flags))


def test_cpu_detection_native_bf16(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    _fake_cpu(monkeypatch, "AVX512", True, {"avx512_bf16"})
    d = hw.cpu_device()
    assert d.native_bf16 and "avx512_bf16" in d.detail


def test_cpu_detection_honours_the_aten_cap(monkeypatch):
    # ATEN_CPU_CAPABILITY=avx2 makes torch report AVX2 although the hardware has avx512_bf16
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    _fake_cpu(monkeypatch, "AVX2", True, {"avx512_bf16"})
    d = hw.cpu_device()
    assert not d.native_bf16 and "capped at AVX2" in d.detail
    assert choose_dtype("auto", d).dtype == "float32"


def test_cpu_detection_honours_the_onednn_cap(monkeypatch):
    _fake_cpu(monkeypatch, "AVX512", True, {"avx512_bf16"})
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    d = hw.cpu_device()
    assert not d.native_bf16 and "ONEDNN_MAX_CPU_ISA" in d.detail
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
    assert hw.cpu_device().native_bf16


def test_cpu_without_bf16_hardware(monkeypatch):
    _fake_cpu(monkeypatch, "AVX512", False)
    d = hw.cpu_device()
    assert not d.native_bf16 and d.capability == "AVX512"


def test_this_machine_is_detected_consistently():
    """Whatever this CPU is, the decision matches torch's own view of it."""
    d = hw.detect_device(allow_gpu=False)
    native = bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()) and \
        str(torch.backends.cpu.get_cpu_capability()).startswith("AVX512")
    assert d.kind == "cpu" and d.native_bf16 == native
    assert choose_dtype("auto", d).dtype == ("bfloat16" if native else "float32")

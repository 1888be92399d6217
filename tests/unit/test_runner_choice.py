"""`execution.runner: auto` (the default): in process on a CPU-only box of 2 cores or fewer, Ray otherwise; the choice
and its reason reach the manifest and the build summary; the Prefect path's early engine start works in process."""
import sys
import types

import pytest

import pipelines.session as ps
from pipelines.build import build, run_build
from pipelines.plan import plan_build
import pipelines.runner as runner
from pipelines.runner import choose_runner


@pytest.fixture
def box(monkeypatch):
    """A machine of `cores` usable cores, with or without a GPU, and no Ray in this process."""
    monkeypatch.delenv("VLLM_CPU_NUM_OF_RESERVED_CPU", raising=False)
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(is_initialized=lambda: False))

    def make(cores: int, gpu: bool = False) -> None:
        monkeypatch.setattr(runner, "usable_cores", lambda: cores)
        monkeypatch.setattr(runner, "gpu_present", lambda: gpu)
    return make


def test_auto_runs_in_process_on_a_small_cpu_box_and_on_ray_elsewhere(box, monkeypatch):
    box(2)
    name, why = choose_runner("auto", None)
    assert name == "local" and "2 CPU cores and no GPU" in why and "execution.runner=ray" in why
    box(1)
    assert choose_runner("auto", None)[0] == "local"
    box(3)
    assert choose_runner("auto", None) == ("ray", "auto: 3 CPU cores")
    box(2, gpu=True)
    assert choose_runner("auto", None) == ("ray", "auto: a GPU is present")
    box(2)
    assert choose_runner("auto", "ray://head:10001") == ("ray", "auto: a Ray cluster address is set")
    monkeypatch.setenv("VLLM_CPU_NUM_OF_RESERVED_CPU", "1")     # the engine leaves a core to the rest
    assert choose_runner("auto", None)[0] == "ray"
    monkeypatch.setenv("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    assert choose_runner("auto", None)[0] == "local"
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(is_initialized=lambda: True))
    assert choose_runner("auto", None) == ("ray", "auto: this process is already connected to Ray")


def test_an_explicit_runner_is_kept_whatever_the_box(box):
    box(2)
    assert choose_runner("ray", None) == ("ray", "execution.runner=ray")
    box(64, gpu=True)
    assert choose_runner("local", "ray://head:10001") == ("local", "execution.runner=local")


def test_the_default_recipe_runner_is_auto():
    from pipelines.config import load_recipe
    assert load_recipe("demo").execution.runner == "auto"
    assert load_recipe("demo", ["execution.runner=ray"]).execution.runner == "ray"


def test_the_manifest_and_the_summary_say_which_runner_ran_and_why(fake_recipe, box, capsys):
    from flows.cli import print_build_summary
    box(2)
    result = build(fake_recipe(n=4, runner="auto"), progress=False, log=lambda s: None)
    assert result.manifest.execution["runner"] == "local"
    assert "2 CPU cores and no GPU" in result.manifest.execution["reason"]
    assert result.manifest.tables["attempts"].rows == 8
    print_build_summary(result)
    assert "runner:  local (auto: 2 CPU cores" in capsys.readouterr().out


def test_early_start_in_process_hands_the_engine_to_the_build_or_stops_it(fake_recipe, box):
    """On the in-process runner the Prefect path's early start begins the first LLM stage's engine in this
    process (no Ray): the build's session takes it over (one start); without a build it is stopped."""
    box(2)
    cfg = fake_recipe(n=4, runner="auto")
    with ps.early_start(cfg):
        early = ps._EARLY[cfg.config_hash()]
        assert early.runner == "local" and early.ray_started is False
        engines = early.engines
        result = run_build(plan_build(cfg, log=lambda s: None), progress=False, log=lambda s: None)
        assert cfg.config_hash() not in ps._EARLY
    assert [e["starts"] for e in result.manifest.engines.values()] == [1]
    assert engines.running() == [] and engines._loop is None        # the session stopped what it took over
    cfg2 = fake_recipe(n=4, runner="local", dataset="fake_two")
    with ps.early_start(cfg2):       # no session opens in the block
        early = ps._EARLY[cfg2.config_hash()]
        early.engines.start()        # waits for the begun start
        assert early.engines.running() == [cfg2.engines["student"].key()]
    assert ps._EARLY == {} and early.engines.running() == [] and early.engines._loop is None

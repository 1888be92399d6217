"""The error budget: a stage whose results are mostly errors stops the build before publishing (one `error:` line
naming the stage, the fraction and the top reasons; rc != 0); the shards with errors are redone by the rerun while
finished shards are kept; `--allow-errors` publishes anyway and the manifest says so."""
from __future__ import annotations

import json

import pytest

from pipelines.build import build
from pipelines.catalog import Catalog
from pipelines.config import validate_recipe
from schemas.errors import ErrorBudgetExceeded
from stages.engines.fake_engine import SCRIPTS, FakeFailure, register_script, request_text, script_echo_answer

DOWN = {"on": True}      # while on, every question marked [down] fails (an engine that answers nothing for them)


def flaky(req, i):
    if DOWN["on"] and "[down]" in request_text(req):
        raise FakeFailure("transient_exhausted", "scripted: no answer")
    return script_echo_answer(req, i)


# test_flows imports this file as tests.unit.test_error_budget, a second copy beside the one pytest collected (no
# __init__.py here): the first copy's script stays registered, so the DOWN its tests switch is the one the engine reads
if "flaky_down" not in SCRIPTS:
    register_script("flaky_down", flaky)


def recipe(data_root, tmp_path, down: int = 3, total: int = 4, **execution):
    lines = []
    for i in range(total):
        mark = " [down]" if i < down else ""
        lines.append(json.dumps({"question": f"What is {i} plus 1? [gold={i + 1}]{mark}", "answer": f"#### {i + 1}"}))
    (tmp_path / "tasks.jsonl").write_text("\n".join(lines) + "\n")
    return validate_recipe({
        "dataset": "budget", "method": "sample_verify", "tasks": {"kind": "jsonl", "path": str(tmp_path / "tasks.jsonl")},
        "engines": {"student": {"kind": "fake", "fake_script": "flaky_down"}}, "generate": {"n": 2, "max_tokens": 32},
        "execution": {"runner": "local", "shard_size": 1, **execution}, "storage": {"root": str(data_root)}})


@pytest.fixture(autouse=True)
def engine_down():
    DOWN["on"] = True
    yield
    DOWN["on"] = True


def test_a_stage_over_its_error_budget_publishes_nothing_and_the_rerun_redoes_only_its_failed_shards(
        data_root, tmp_path):
    cfg = recipe(data_root, tmp_path)
    with pytest.raises(ErrorBudgetExceeded) as e:
        build(cfg, progress=False)
    msg = str(e.value)
    assert "stage 'generate': 3 of its results are errors (60% > execution.max_error_fraction 0.5; " \
           "transient_exhausted 3)" in msg and "3 shard(s) with errors will be redone" in msg
    assert Catalog(str(data_root)).versions("budget") == []
    DOWN["on"] = False                       # the engine is back
    result = build(recipe(data_root, tmp_path), progress=False)
    assert result.resumed_shards == 1        # the shard without errors was kept
    m = result.manifest
    assert m.tables["attempts"].rows == 8 and m.tables["errors"].rows == 0
    assert m.error_budget["stages"]["generate"]["fraction"] == 0 and m.error_budget["over_budget"] == []


def test_within_the_budget_the_errors_are_published_as_error_rows(data_root, tmp_path):
    m = build(recipe(data_root, tmp_path, down=1), progress=False).manifest
    assert m.tables["errors"].rows == 1 and m.tables["attempts"].rows == 6
    assert m.error_budget["stages"]["generate"]["fraction"] == pytest.approx(1 / 7, abs=1e-3)


def test_allow_errors_publishes_and_the_manifest_and_summary_say_so(data_root, tmp_path, capsys):
    from flows.cli import main
    recipe(data_root, tmp_path)              # writes tasks.jsonl
    path = tmp_path / "budget.yaml"
    path.write_text(f"dataset: budget\ntasks: {{kind: jsonl, path: {tmp_path / 'tasks.jsonl'}}}\n"
                    "engines: {student: {kind: fake, fake_script: flaky_down}}\n"
                    "generate: {n: 2, max_tokens: 32}\nexecution: {runner: local, shard_size: 1}\n")
    assert main(["build", str(path), "--no-prefect", "--no-progress"]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "stage 'generate'" in lines[0] and "60%" in lines[0] and "transient_exhausted" in lines[0]
    assert "to resume, run the same command again" in err
    assert main(["build", str(path), "--no-prefect", "--no-progress", "--allow-errors"]) == 0
    out = capsys.readouterr().out
    assert "errors:  published with --allow-errors although generate had 60% errors" in out
    m = Catalog(str(data_root)).resolve("budget@1")
    assert m.error_budget["over_budget"] == ["generate"] and m.error_budget["allow_errors"] is True
    assert m.tables["errors"].rows == 3


def test_a_budget_of_one_never_stops_a_build(data_root, tmp_path):
    m = build(recipe(data_root, tmp_path, down=4, max_error_fraction=1.0), progress=False).manifest
    assert m.tables["attempts"].rows == 0 and m.tables["errors"].rows == 4

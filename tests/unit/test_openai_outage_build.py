"""A build on the openai engine whose server goes away mid-build and stays away past outage_timeout_s: `errata build
--no-prefect` fails with one `error:` line (EngineUnavailable's message, the resume hint), publishes nothing and turns
no request into an error row; rerun with the server up, it resumes the finished shards and publishes."""
from __future__ import annotations

import re

import pytest

from tests.conftest import catalog, cli_env, errata, write_gsm8k_style
from tests.unit.test_openai_engine import ScriptedServer

N = 6            # problems, one per shard


def _answer(n: int = 2) -> dict:
    """A fixed chat completion: n choices, each ending in a parseable final answer."""
    return {"choices": [{"index": i, "message": {"role": "assistant", "content": "2 + 3 = 5\n#### 5"},
                         "finish_reason": "stop"} for i in range(n)],
            "usage": {"prompt_tokens": 20, "completion_tokens": 9 * n}}


@pytest.mark.parametrize("runner", ["local", pytest.param("ray", marks=pytest.mark.integration)])
def test_openai_outage_fails_the_build_and_a_rerun_resumes(tmp_path, runner):
    """`errata build --no-prefect` as a user runs it, in process and on Ray (the engine in an actor, the stages in
    Ray Data workers: the error line is still the outage's own message, not Ray's wrapper)."""
    root = tmp_path / "data"
    tasks = write_gsm8k_style(tmp_path / "tasks.jsonl", N)
    with ScriptedServer(delay=0.2) as s:
        s.plan[""] = [(200, _answer())]
        recipe = tmp_path / "oa.yaml"
        recipe.write_text(
            f"dataset: oa\nmethod: sample_verify\ntasks: {{kind: jsonl, path: {tasks}}}\n"
            f"engines: {{student: {{kind: openai, model: served-model, base_url: '{s.url}', max_retries: 0, "
            "outage_timeout_s: 1.0}}\n"
            "generate: {n: 2, max_tokens: 64}\n"
            f"execution: {{runner: {runner}, shard_size: 1, shards_in_flight: 1}}\n")
        cmd = ["build", str(recipe), "--no-prefect", "--no-progress"]
        # the 4th shard's request is in flight when the server is killed; it does not come back within 1 s
        s.later((0.05, s.go_down), once=lambda: len(s.hits) >= 4)
        r = errata(*cmd, env=cli_env(root), check=False, timeout=600)
        said = r.stdout + r.stderr
        assert r.returncode == 2, said
        errors = [ln for ln in said.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1, said
        assert f"the OpenAI-compatible server at {s.url} is unavailable: waited" in errors[0], said
        assert "outage_timeout_s=1" in errors[0] and "last failure" in errors[0]
        assert "to resume, run the same command again" in said
        assert "Traceback" not in said and "ray::" not in said and "Failed to apply UDF" not in said
        assert catalog(root).versions("oa") == []                # nothing published
        assert len(s.hits) == 4                                  # shards 0-2 answered, shard 3's request lost

        s.come_back()
        r = errata(*cmd, env=cli_env(root), check=False, timeout=600)
        said = r.stdout + r.stderr
    assert r.returncode == 0, said
    assert re.search(r"published oa@1 .*3 shards resumed", said), said
    m = catalog(root).manifest("oa")
    assert m.version == 1 and m.shards == {"total": N, "resumed": 3}
    assert m.tables["attempts"].rows == 2 * N and m.tables["errors"].rows == 0
    assert len(s.hits) == 4 + (N - 3)                            # the rerun asked only for the unfinished shards
    (eng,) = m.engines.values()
    assert eng["kind"] == "openai" and eng["outages"] == 0 and eng["resubmitted"] == 0
    gen = m.stages["generate"]
    assert gen["completion_tokens"] == 9 * 2 * N and gen["tokens_per_s"] > 0
    assert re.search(r"generate .*tokens=108 \((\d+) tok/s\)", said), said


def test_an_errata_error_comes_out_of_ray_s_wrappers_as_itself():
    """What the Ray runner does with an engine actor's EngineUnavailable (RayEngineClient) and with the note Ray Data
    appends to a map task's error (RayRunner): the stage and the CLI see errata's own error and message."""
    from ray.exceptions import RayTaskError

    from pipelines.engines import _errata
    from pipelines.runner import _without_retry_note
    from schemas.errors import EngineUnavailable
    e = EngineUnavailable("the server at http://x/v1 is unavailable: waited 600 s")
    wrapped = RayTaskError("EngineHost.generate", "Traceback (most recent call last): ...", e).as_instanceof_cause()
    assert isinstance(wrapped, EngineUnavailable) and str(wrapped) != str(e)     # Ray's header, not the message
    inner = _errata(wrapped)
    assert type(inner) is EngineUnavailable and str(inner) == str(e)
    other = RuntimeError("not ours")
    assert _errata(other) is other
    noted = EngineUnavailable(f"{e}\nFailed to apply UDF transform after 1/1 attempts (total backoff 0.0s).\n"
                              "To change retry attempts, backoff, or which errors are retried, configure ...")
    assert str(_without_retry_note(noted)) == str(e)

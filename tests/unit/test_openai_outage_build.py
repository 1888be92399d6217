"""A build on the openai engine whose server goes away mid-build and stays away past outage_timeout_s: `errata build
--no-prefect` fails with one `error:` line (EngineUnavailable's message, the resume hint), publishes nothing and turns
no request into an error row; rerun with the server up, it resumes the finished shards and publishes."""
from __future__ import annotations

import re

import pytest

from flows.cli import main
from stages.engines.openai_engine import OpenAIEngine
from tests.conftest import catalog, write_gsm8k_style
from tests.unit.test_openai_engine import ScriptedServer

N = 6            # problems, one per shard


def _answer(n: int = 2) -> dict:
    """A fixed chat completion: n choices, each ending in a parseable final answer."""
    return {"choices": [{"index": i, "message": {"role": "assistant", "content": "2 + 3 = 5\n#### 5"},
                         "finish_reason": "stop"} for i in range(n)],
            "usage": {"prompt_tokens": 20, "completion_tokens": 9 * n}}


def test_openai_outage_fails_the_build_and_a_rerun_resumes(tmp_path, data_root, capsys, monkeypatch):
    monkeypatch.setattr(OpenAIEngine, "backoff_base_s", 0.01)
    monkeypatch.setattr(OpenAIEngine, "probe_base_s", 0.05)
    monkeypatch.setattr(OpenAIEngine, "probe_max_s", 0.2)
    tasks = write_gsm8k_style(tmp_path / "tasks.jsonl", N)
    with ScriptedServer(delay=0.2) as s:
        s.plan[""] = [(200, _answer())]
        recipe = tmp_path / "oa.yaml"
        recipe.write_text(
            f"dataset: oa\nmethod: sample_verify\ntasks: {{kind: jsonl, path: {tasks}}}\n"
            f"engines: {{student: {{kind: openai, model: served-model, base_url: '{s.url}', max_retries: 1, "
            "outage_timeout_s: 1.0}}\n"
            "generate: {n: 2, max_tokens: 64}\nexecution: {runner: local, shard_size: 1, shards_in_flight: 1}\n")
        cmd = ["build", str(recipe), "--no-prefect", "--no-progress"]
        # the 4th shard's request is in flight when the server is killed; it does not come back within 1 s
        s.later((0.05, s.go_down), once=lambda: len(s.hits) >= 4)
        code = main(cmd)
        out = capsys.readouterr()
        said = out.out + out.err
        assert code == 2, said
        errors = [ln for ln in said.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1, said
        assert f"the OpenAI-compatible server at {s.url} is unavailable: waited" in errors[0], said
        assert "outage_timeout_s=1" in errors[0] and "last failure" in errors[0]
        assert "to resume, run the same command again" in said
        assert catalog(data_root).versions("oa") == []          # nothing published
        assert len(s.hits) == 4                                  # shards 0-2 answered, shard 3's request lost

        s.come_back()
        code = main(cmd)
        out = capsys.readouterr()
        said = out.out + out.err
    assert code == 0, said
    assert re.search(r"published oa@1 .*3 shards resumed", said), said
    cat = catalog(data_root)
    m = cat.manifest("oa")
    assert m.version == 1 and m.shards == {"total": N, "resumed": 3}
    assert m.tables["attempts"].rows == 2 * N and m.tables["errors"].rows == 0
    assert len(s.hits) == 4 + (N - 3)                            # the rerun asked only for the unfinished shards
    (eng,) = m.engines.values()
    assert eng["kind"] == "openai" and eng["outages"] == 0 and eng["resubmitted"] == 0
    gen = m.stages["generate"]
    assert gen["completion_tokens"] == 9 * 2 * N and gen["tokens_per_s"] > 0
    assert re.search(r"generate .*tokens=108 \((\d+) tok/s\)", said), said

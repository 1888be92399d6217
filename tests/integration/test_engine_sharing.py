"""Three LLM stages on the real embedded model share one engine actor on Ray, started once per build; nothing is left running
after the build; under the AVX2 caps (`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`) the engine computes in
float32 and the manifest says why."""
import json
import os
import time

import psutil
import pytest

from tests.conftest import MODELS_DIR, errata

pytestmark = pytest.mark.integration


def _engine_processes(since: float) -> list[str]:
    out = []
    for p in psutil.process_iter(["name", "cmdline", "create_time"]):
        try:
            text = (p.info["name"] or "") + " " + " ".join(p.info["cmdline"] or [])
            if p.info["create_time"] >= since and ("VLLM" in text or "EngineHost" in text or "raylet" in text):
                if p.status() != psutil.STATUS_ZOMBIE:
                    out.append(text[:120])
        except psutil.Error:
            pass
    return out


@pytest.mark.parametrize("mode", ["prefect", "no-prefect"])
def test_three_llm_stages_one_engine_start_and_nothing_left(tmp_path, mode):
    root = tmp_path / "data"
    env = dict(os.environ, ERRATA_DATA=str(root), ERRATA_MODELS=str(MODELS_DIR), ATEN_CPU_CAPABILITY="avx2",
               ONEDNN_MAX_CPU_ISA="AVX2")
    t0 = time.time()
    p = errata("build", "self_correct", "--set", "tasks.count=4", "--set", "tasks.max_steps=1",
               "--set", "generate.n=2", "--set", "generate.max_tokens=64", "--set", "self_check.max_tokens=48",
               "--set", "retry.max_tokens=64", "--set", "execution.shard_size=2", "--no-progress", "--runner", "ray",
               *(["--no-prefect"] if mode == "no-prefect" else []), env=env)
    man = json.loads(next(root.glob("datasets/self_correct/v0001/manifest.json")).read_text())
    llm = [s for s in ("generate", "self_check", "retry") if man["stages"][s].get("completion_tokens")]
    assert llm[:2] == ["generate", "self_check"], man["stages"]       # retry runs only if an attempt was wrong
    (eng,) = man["engines"].values()
    assert eng["starts"] == 1 and eng["roles"] == ["student"], eng
    assert eng["dtype"] == "float32" and "no native bf16" in eng["dtype_reason"], eng
    assert eng["device"]["capability"] == "AVX2"
    assert "started 1x" in p.stdout and "float32" in p.stdout
    # how full the one engine's batch was, over all three stages (vLLM's per-step stats, read in the engine actor)
    assert eng["batch"]["steps"] > 0 and 0 < eng["batch"]["mean_running"] <= eng["batch"]["max_num_seqs"], eng
    assert "sequences per step on average" in p.stdout
    assert man["stages"]["self_check"]["counts"].get("parse_ok", 0) + \
        man["stages"]["self_check"]["counts"].get("unparsed", 0) == man["stages"]["self_check"]["out"]
    time.sleep(2)
    assert _engine_processes(t0) == [], _engine_processes(t0)

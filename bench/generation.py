"""Generation throughput: raw vLLM offline (`LLM.chat`, all prompts at once) vs the pipeline's GenerateStage
(AsyncLLM, all requests in flight), same model, prompts and sampling.

Each measurement runs in its own subprocess (one vLLM engine at a time; memory is freed between them), and the two
systems are interleaved across repeats (alternating which goes first). Output tokens/s counts generation only
(engine start excluded). Writes bench/results/generation.json.

    .venv/bin/python bench/generation.py                 # 256 prompts, 1 repeat, eager
    .venv/bin/python bench/generation.py --repeats 3 --compiled
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "generation.json"
TEMPERATURE, MAX_TOKENS, MAX_NUM_SEQS, MAX_MODEL_LEN = 0.7, 256, 64, 2048


def problems(n: int, seed: int = 0) -> tuple[list[dict], str]:
    try:
        sys.path.insert(0, str(REPO))
        from stages.tasks import builtin_problems
        return builtin_problems(n, seed), "stages.tasks.builtin_problems"
    except ImportError:
        import random
        rng = random.Random(seed)
        out = []
        for i in range(n):
            a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 9)
            out.append({"problem_id": f"bench-{i}", "question": f"Sam has {a} marbles, wins {b} more, then "
                        f"shares them equally among {c} friends. How many marbles does each friend get?",
                        "reference_answer": str((a + b) / c), "reference_solution": None, "source": "bench"})
        return out, "local arithmetic fallback"


def _configs(compiled: bool):
    from pipelines.config import EngineConfig, GenerateConfig, SamplingConfig
    eng = EngineConfig(kind="vllm", model="embedded", dtype="bfloat16", max_model_len=MAX_MODEL_LEN,
                       max_num_seqs=MAX_NUM_SEQS, gpu_memory_utilization=0.15, enforce_eager=not compiled,
                       enable_prefix_caching=True, seed=0)
    return eng, SamplingConfig(temperature=TEMPERATURE, max_tokens=MAX_TOKENS, n=1), GenerateConfig()


def worker(system: str, n_prompts: int, compiled: bool, out: str) -> None:
    """One measurement in this process."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    sys.path.insert(0, str(REPO))
    from stages.engines.model_prep import ensure_embedded_model
    from stages.generate import GenerateStage
    models_dir = str(REPO / "data" / "models")
    model_path = str(ensure_embedded_model(models_dir))
    probs, _ = problems(n_prompts)
    eng_cfg, samp_cfg, gen_cfg = _configs(compiled)
    # identical chat messages for both systems: the pipeline's own template rendering
    msgs = [GenerateStage(eng_cfg, samp_cfg, gen_cfg).messages_for(p)[1] for p in probs]
    t0 = time.perf_counter()
    if system == "raw":
        from vllm import LLM, SamplingParams
        llm = LLM(model=model_path, dtype=eng_cfg.dtype, max_model_len=eng_cfg.max_model_len,
                  max_num_seqs=eng_cfg.max_num_seqs, gpu_memory_utilization=eng_cfg.gpu_memory_utilization,
                  enforce_eager=eng_cfg.enforce_eager, enable_prefix_caching=True, seed=eng_cfg.seed)
        start_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        outs = llm.chat(msgs, SamplingParams(temperature=TEMPERATURE, max_tokens=MAX_TOKENS, n=1), use_tqdm=False)
        gen_s = time.perf_counter() - t1
        completion = sum(len(o.outputs[0].token_ids) for o in outs)
        prompt = sum(len(o.prompt_token_ids) for o in outs)
        ok = len(outs)
    else:
        stage = GenerateStage(eng_cfg, samp_cfg, gen_cfg, models_dir=models_dir, run_id="bench", method="bench")
        stage.setup()
        start_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        rows, stats = stage.process(probs)
        gen_s = time.perf_counter() - t1
        stage.teardown()
        completion, prompt, ok = stats.completion_tokens, stats.prompt_tokens, stats.rows_out
    Path(out).write_text(json.dumps({
        "system": system, "engine_start_s": round(start_s, 2), "generation_s": round(gen_s, 3),
        "prompts_ok": ok, "prompt_tokens": prompt, "completion_tokens": completion,
        "tokens_per_s": round(completion / gen_s, 2)}))


def machine() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["mem_gib"] = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    try:
        from importlib.metadata import version
        for pkg in ("vllm-cpu", "vllm", "torch", "transformers"):
            try:
                info[pkg] = version(pkg)
            except Exception:
                pass
    except ImportError:
        pass
    try:
        import torch
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:
        info["gpu"] = None
    return info


def run_one(system: str, args) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [sys.executable, __file__, "--worker", system, "--n-prompts", str(args.n_prompts), "--out", out]
    if args.compiled:
        cmd.append("--compiled")
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=args.timeout)
    if p.returncode != 0:
        raise SystemExit(f"{system} run failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    res = json.loads(Path(out).read_text())
    os.unlink(out)
    res["process_s"] = round(time.perf_counter() - t0, 1)
    print(f"  {system:9s} {res['tokens_per_s']:8.1f} tok/s  ({res['completion_tokens']} tokens in "
          f"{res['generation_s']:.1f} s; engine start {res['engine_start_s']:.1f} s)", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-prompts", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--compiled", action="store_true", help="torch.compile mode (default: enforce_eager)")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per measurement process")
    ap.add_argument("--out", default=None)
    ap.add_argument("--worker", choices=["raw", "pipeline"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.n_prompts, args.compiled, args.out)
        return
    _, source = problems(args.n_prompts)
    runs: list[dict] = []
    for r in range(args.repeats):
        order = ["raw", "pipeline"] if r % 2 == 0 else ["pipeline", "raw"]
        print(f"repeat {r + 1}/{args.repeats}", flush=True)
        for system in order:
            runs.append(dict(run_one(system, args), repeat=r))
    mean = {s: statistics.mean(x["tokens_per_s"] for x in runs if x["system"] == s) for s in ("raw", "pipeline")}
    report = {
        "benchmark": "generation throughput: raw vLLM LLM.chat vs errata GenerateStage",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "raw_tokens_per_s": round(mean["raw"], 1), "pipeline_tokens_per_s": round(mean["pipeline"], 1),
        "ratio_pipeline_over_raw": round(mean["pipeline"] / mean["raw"], 3), "target_ratio": 0.95,
        "settings": {"n_prompts": args.n_prompts, "prompt_source": source, "repeats": args.repeats,
                     "model": "embedded:SmolLM2-135M-Instruct", "dtype": "bfloat16", "temperature": TEMPERATURE,
                     "max_tokens": MAX_TOKENS, "n": 1, "max_num_seqs": MAX_NUM_SEQS, "max_model_len": MAX_MODEL_LEN,
                     "enforce_eager": not args.compiled, "gpu_memory_utilization": 0.15,
                     "VLLM_CPU_NUM_OF_RESERVED_CPU": os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU", "0"),
                     "timing": "output tokens / generation wall time; engine start excluded"},
        "machine": machine(), "runs": runs}
    out = Path(args.out) if args.out else RESULTS
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"raw {report['raw_tokens_per_s']} tok/s, pipeline {report['pipeline_tokens_per_s']} tok/s, "
          f"ratio {report['ratio_pipeline_over_raw']}  -> {out}")


if __name__ == "__main__":
    main()

"""Generation throughput: raw vLLM offline (`LLM.chat`, all prompts at once) vs the pipeline's GenerateStage on the
build's engine host (AsyncLLM, all requests in flight), same model, prompts and sampling, for each dtype.

Each measurement runs in its own subprocess (one vLLM engine at a time; memory is freed between them), and the two
systems are interleaved across repeats (alternating which goes first). Output tokens/s counts generation only
(engine start excluded). The report names the CPU capability and, per dtype, whether the hardware computes it
natively; a dtype the CPU only emulates (bf16 without avx512_bf16/AMX) is measured on fewer prompts
(`--n-prompts-emulated`), since it runs several times slower. Writes bench/results/generation.json.

    .venv/bin/python bench/generation.py                          # float32 and bfloat16, 256 prompts, eager
    .venv/bin/python bench/generation.py --dtypes float32 --repeats 3
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


def _configs(compiled: bool, dtype: str):
    from stages.engines.config import EngineConfig
    from stages.generate import GenerateConfig
    eng = EngineConfig(kind="vllm", model="embedded", dtype=dtype, max_model_len=MAX_MODEL_LEN,
                       max_num_seqs=MAX_NUM_SEQS, enforce_eager=not compiled, enable_prefix_caching=True, seed=0)
    return eng, GenerateConfig(temperature=TEMPERATURE, max_tokens=MAX_TOKENS, n=1)


def worker(system: str, n_prompts: int, compiled: bool, dtype: str, out: str) -> None:
    """One measurement in this process."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    sys.path.insert(0, str(REPO))
    from stages.base import StageContext
    from stages.engines.hardware import choose_dtype, default_memory_utilization, detect_device
    from stages.engines.host import LocalEngines
    from stages.engines.model_prep import ensure_embedded_model
    from stages.generate import GenerateStage
    models_dir = str(REPO / "data" / "models")
    model_path = str(ensure_embedded_model(models_dir))
    probs, _ = problems(n_prompts)
    eng_cfg, gen_cfg = _configs(compiled, dtype)
    device = detect_device()
    choice = choose_dtype(dtype, device)
    stage = GenerateStage(gen_cfg, context=StageContext("bench", "bench", {"student": eng_cfg}))
    # identical chat messages for both systems: the pipeline's own template rendering
    msgs = [stage.messages(stage.template.render(question=p["question"])) for p in probs]
    t0 = time.perf_counter()
    if system == "raw":
        from vllm import LLM, SamplingParams
        llm = LLM(model=model_path, dtype=choice.dtype, max_model_len=eng_cfg.max_model_len,
                  max_num_seqs=eng_cfg.max_num_seqs,
                  gpu_memory_utilization=default_memory_utilization(choice.dtype, device),
                  enforce_eager=eng_cfg.enforce_eager, enable_prefix_caching=True, seed=eng_cfg.seed)
        start_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        outs = llm.chat(msgs, SamplingParams(temperature=TEMPERATURE, max_tokens=MAX_TOKENS, n=1), use_tqdm=False)
        gen_s = time.perf_counter() - t1
        completion = sum(len(o.outputs[0].token_ids) for o in outs)
        prompt = sum(len(o.prompt_token_ids) for o in outs)
        ok = len(outs)
    else:
        engines = LocalEngines({"student": eng_cfg}, models_dir)
        engines.start(["student"])
        stage.setup(engines)
        start_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        res = stage.run({"problems": probs})
        gen_s = time.perf_counter() - t1
        stage.teardown()
        engines.stop()
        completion, prompt, ok = res.stats.completion_tokens, res.stats.prompt_tokens, res.stats.rows_out
    Path(out).write_text(json.dumps({
        "system": system, "dtype": choice.dtype, "dtype_reason": choice.reason, "n_prompts": n_prompts,
        "engine_start_s": round(start_s, 2), "generation_s": round(gen_s, 3), "prompts_ok": ok,
        "prompt_tokens": prompt, "completion_tokens": completion, "tokens_per_s": round(completion / gen_s, 2)}))


def machine() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        sys.path.insert(0, str(REPO))
        from stages.engines.hardware import detect_device
        d = detect_device()
        info["device"] = d.as_dict()
        info["cpu_capability"] = d.capability if d.kind == "cpu" else None
        info["native_bf16"] = d.native_bf16
        info["caps"] = {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if k in os.environ}
    except Exception as e:
        info["device_error"] = str(e)
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


def run_one(system: str, args, dtype: str, n_prompts: int) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [sys.executable, __file__, "--worker", system, "--n-prompts", str(n_prompts), "--dtype", dtype,
           "--out", out]
    if args.compiled:
        cmd.append("--compiled")
    t0 = time.perf_counter()
    load_before = os.getloadavg()[0]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=args.timeout)
    if p.returncode != 0:
        raise SystemExit(f"{system} run failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    res = json.loads(Path(out).read_text())
    os.unlink(out)
    res["process_s"] = round(time.perf_counter() - t0, 1)
    res["load_avg_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]   # other work on the machine
    print(f"  {dtype:9s} {system:9s} {res['tokens_per_s']:8.1f} tok/s  ({res['completion_tokens']} tokens in "
          f"{res['generation_s']:.1f} s; engine start {res['engine_start_s']:.1f} s)", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-prompts", type=int, default=256)
    ap.add_argument("--n-prompts-emulated", type=int, default=64,
                    help="prompts for a dtype this CPU only emulates (bf16 without avx512_bf16/AMX)")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--compiled", action="store_true", help="torch.compile mode (default: enforce_eager)")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per measurement process")
    ap.add_argument("--out", default=None)
    ap.add_argument("--keep-other-dtypes", action="store_true",
                    help="keep the report's entries for dtypes not measured now (each keeps its own date and load)")
    ap.add_argument("--worker", choices=["raw", "pipeline"], help=argparse.SUPPRESS)
    ap.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.n_prompts, args.compiled, args.dtype, args.out)
        return
    _, source = problems(args.n_prompts)
    info = machine()
    runs: list[dict] = []
    per_dtype: dict[str, dict] = {}
    for dtype in [d.strip() for d in args.dtypes.split(",") if d.strip()]:
        emulated = dtype == "bfloat16" and info.get("cpu_capability") and not info.get("native_bf16")
        n = args.n_prompts_emulated if emulated else args.n_prompts
        mine = []
        for r in range(args.repeats):
            order = ["raw", "pipeline"] if r % 2 == 0 else ["pipeline", "raw"]
            print(f"{dtype}: repeat {r + 1}/{args.repeats} ({n} prompts{', emulated on this CPU' if emulated else ''})",
                  flush=True)
            for system in order:
                mine.append(dict(run_one(system, args, dtype, n), repeat=r))
        runs += mine
        mean = {s: statistics.mean(x["tokens_per_s"] for x in mine if x["system"] == s) for s in ("raw", "pipeline")}
        per_dtype[dtype] = {"n_prompts": n, "native_on_this_machine": not emulated,
                            "dtype_reason": mine[0]["dtype_reason"],
                            "raw_tokens_per_s": round(mean["raw"], 1), "pipeline_tokens_per_s": round(mean["pipeline"], 1),
                            "ratio_pipeline_over_raw": round(mean["pipeline"] / mean["raw"], 3),
                            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                            "load_avg_1m": [x["load_avg_1m"] for x in mine]}
    out = Path(args.out) if args.out else RESULTS
    if args.keep_other_dtypes and out.exists():
        old = json.loads(out.read_text())
        for d, v in old.get("per_dtype", {}).items():
            if d not in per_dtype:
                v.setdefault("when", old.get("when"))
                per_dtype[d] = v
                runs += [r for r in old.get("runs", []) if r.get("dtype") == d]
    report = {
        "benchmark": "generation throughput: raw vLLM LLM.chat vs errata GenerateStage on the build's engine host",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "target_ratio": 0.95,
        "per_dtype": per_dtype,
        "settings": {"n_prompts": args.n_prompts, "n_prompts_emulated": args.n_prompts_emulated,
                     "prompt_source": source, "repeats": args.repeats, "model": "embedded:SmolLM2-135M-Instruct",
                     "temperature": TEMPERATURE, "max_tokens": MAX_TOKENS, "n": 1, "max_num_seqs": MAX_NUM_SEQS,
                     "max_model_len": MAX_MODEL_LEN, "enforce_eager": not args.compiled,
                     "gpu_memory_utilization": "errata's default for the dtype (0.4 float32, 0.3 bfloat16 on CPU)",
                     "VLLM_CPU_NUM_OF_RESERVED_CPU": os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU", "0"),
                     "timing": "output tokens / generation wall time; engine start excluded"},
        "machine": info, "runs": runs}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    for d, v in per_dtype.items():
        print(f"{d}: raw {v['raw_tokens_per_s']} tok/s, pipeline {v['pipeline_tokens_per_s']} tok/s, "
              f"ratio {v['ratio_pipeline_over_raw']} ({v['n_prompts']} prompts)")
    print(f"-> {out}")


if __name__ == "__main__":
    main()

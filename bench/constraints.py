"""What constrained outputs cost: the same policy-turn requests on one engine with and without the ReAct turn's
constraint (regex from the env's actions), interleaved (free, held, free, held, ...), and how long a constraint
takes to build with each backend vLLM offers (the engine uses engines.<role>.structured_outputs_backend). Target: constrained at most 15% slower (tokens/s). Writes bench/results/constraints.json.

The requests: the opening of `--tasks` crafting-world tasks (the agent_demo recipe's world), `--samples` samples
each, as the rollout stage sends them. Each run reports output tokens/s (engine start excluded), and how many
samples parse as a turn with an action the env offers. Compile time: llguidance and xgrammar building each
task's regex against the embedded model's tokenizer, cold.

    .venv/bin/python bench/constraints.py [--tasks 16] [--samples 4] [--repeats 2]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.envs import _write, machine, start_embedded_policy  # noqa: E402

GEN = {"generate": {"seed": 0, "depth": 3}, "max_goal_depth": 2, "distractors": 4}


def requests(n_tasks: int, samples: int, max_tokens: int, constrained: bool, tag: str):
    from stages.agents.react import ReactTurnFormat, initial_messages
    from stages.engines.base import GenerationRequest, SamplingParams
    from stages.envs.craft import CraftEnv
    env = CraftEnv(**GEN)
    env.setup()
    fmt, out, patterns = ReactTurnFormat(), [], []
    for i, task in enumerate(env.tasks("train", n_tasks)):
        obs, _ = env.reset(task)
        pattern = env.action_pattern()
        patterns.append(pattern)
        c = fmt.constraint(action_pattern=pattern, max_tokens=max_tokens) if constrained else None
        msgs = [{"role": m["role"], "content": m["content"]} for m in initial_messages(task.instruction, obs)]
        out.append(GenerationRequest(messages=msgs, request_id=f"{tag}-{i}",
                                     sampling=SamplingParams(temperature=0.7, max_tokens=max_tokens, n=samples,
                                                             constraint=c)))
    return out, patterns


def compile_times(patterns: list[str], max_tokens: int) -> dict:
    """Per backend vLLM can use: the time to build each task's constraint for the embedded model's tokenizer."""
    import llguidance
    import llguidance.hf
    import xgrammar
    from transformers import AutoTokenizer

    from pipelines.files import Root
    from stages.agents.react import ReactTurnFormat
    from stages.engines.model_prep import resolve_model
    tok = AutoTokenizer.from_pretrained(resolve_model("embedded", Root(str(REPO / "data")).models_dir))
    regexes = [ReactTurnFormat().constraint(action_pattern=p, max_tokens=max_tokens).regex for p in patterns]
    info = xgrammar.TokenizerInfo.from_huggingface(tok)
    guidance_tok = llguidance.hf.from_tokenizer(tok)

    def xgr(rx):
        xgrammar.GrammarCompiler(info, cache_enabled=False).compile_regex(rx)

    def guidance(rx):
        m = llguidance.LLMatcher(guidance_tok, llguidance.LLMatcher.grammar_from_regex(rx))
        if m.is_error():
            raise ValueError(m.get_error())
    out = {}
    for name, fn in (("guidance", guidance), ("xgrammar", xgr)):
        times = []
        for rx in regexes:
            t0 = time.perf_counter()
            fn(rx)
            times.append(time.perf_counter() - t0)
        out[name] = {"patterns": len(times), "median_ms": round(1000 * statistics.median(times), 1),
                     "max_ms": round(1000 * max(times), 1)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=16)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "constraints.json"))
    a = ap.parse_args()
    from stages.agents.react import parse_react
    from stages.envs.craft import CraftEnv
    env = CraftEnv(**GEN)
    env.setup()
    tasks = env.tasks("train", a.tasks)
    engines, _engine, described, start_s = start_embedded_policy()
    runs = []
    try:
        client = engines.client("policy")
        for r in range(a.repeats):
            for constrained in (False, True):
                reqs, patterns = requests(a.tasks, a.samples, a.max_tokens, constrained, f"r{r}{int(constrained)}")
                t0 = time.perf_counter()
                results = client.generate(reqs, tag="bench")
                secs = time.perf_counter() - t0
                toks = sum(c.completion_tokens for res in results for c in res.completions)
                valid = 0
                for task, pattern, res in zip(tasks, patterns, results):
                    for c in res.completions:
                        turn = parse_react(c.text)
                        valid += bool(turn.parse_ok and turn.action and re.fullmatch(pattern, turn.action))
                n = sum(len(res.completions) for res in results)
                runs.append({"constrained": constrained, "repeat": r, "seconds": round(secs, 2),
                             "completion_tokens": toks, "tokens_per_s": round(toks / secs, 1), "samples": n,
                             "valid_action_turns": valid, "valid_rate": round(valid / n, 4) if n else None})
                print(runs[-1])
    finally:
        engines.stop()
    free = [x["tokens_per_s"] for x in runs if not x["constrained"]]
    held = [x["tokens_per_s"] for x in runs if x["constrained"]]
    ratio = statistics.mean(held) / statistics.mean(free)
    _, patterns = requests(a.tasks, 1, a.max_tokens, False, "c")
    report = {"benchmark": "ReAct turns on one engine, free vs held to the env's actions (regex)",
              "when": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "tasks": a.tasks, "samples_per_task": a.samples, "max_tokens": a.max_tokens,
              "engine_start_s": round(start_s, 1), "engine": next(iter(described.values())), "runs": runs,
              "tokens_per_s_free": round(statistics.mean(free), 1),
              "tokens_per_s_constrained": round(statistics.mean(held), 1),
              "constrained_over_free": round(ratio, 3), "slowdown": round(1 - ratio, 3), "target_slowdown": 0.15,
              "meets_target": (1 - ratio) <= 0.15,
              "valid_rate_free": round(statistics.mean(x["valid_rate"] for x in runs if not x["constrained"]), 4),
              "valid_rate_constrained": round(statistics.mean(x["valid_rate"] for x in runs if x["constrained"]), 4),
              "compile": compile_times(patterns, a.max_tokens), "machine": machine()}
    _write(Path(a.out), report)
    print(json.dumps({k: report[k] for k in ("tokens_per_s_free", "tokens_per_s_constrained", "slowdown",
                                             "valid_rate_free", "valid_rate_constrained", "compile")}, indent=1))


if __name__ == "__main__":
    main()

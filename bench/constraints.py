"""What constrained outputs cost: the same policy-turn requests on one engine with and without the ReAct turn's
constraint (regex from the env's actions), and how long a constraint takes to build with each backend vLLM offers
(the engine uses engines.<role>.structured_outputs_backend). Writes bench/results/constraints.json.

Each repeat runs, on one engine: (1) the requests free, (2) the same requests constrained, (3) the same requests free
again, each held to exactly the token count its constrained twin produced (min_tokens = max_tokens). A constrained turn
ends as soon as its action is written, so it is shorter than a free one; tokens/s of (1) against (2) mixes that length
difference (fewer decode tokens to spread each request's prompt over) with what the constraint costs. (3) against (2)
is the constraint's own cost, same prompts and same output lengths: the target is constrained at most 15% slower
(tokens/s) there. The report also gives the wall time of (1) and (2): how long the same turns take with and without.

The requests: the opening of `--tasks` crafting-world tasks (the agent_demo recipe's world), `--samples` requests
each (n=1, as separate requests so each can be held to its own length), as the rollout stage sends them. Each run
reports output tokens/s (engine start excluded) and how many samples parse as a turn with an action the env offers.
Compile time: llguidance and xgrammar building each task's regex against the embedded model's tokenizer, cold.

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


def requests(n_tasks: int, samples: int, max_tokens: int, constrained: bool, tag: str,
             lengths: list[int] | None = None):
    """`samples` n=1 requests per task (task-major). With `lengths`, request k is held to exactly lengths[k] tokens."""
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
        for j in range(samples):
            k = len(out)
            held = lengths[k] if lengths is not None else 0
            out.append(GenerationRequest(messages=msgs, request_id=f"{tag}-{i}-{j}",
                                         sampling=SamplingParams(temperature=0.7, max_tokens=held or max_tokens,
                                                                 min_tokens=held, constraint=c)))
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
    engines, _engine, described, start_s = start_embedded_policy()
    runs = []
    try:
        client = engines.client("policy")
        for r in range(a.repeats):
            lengths = None
            for kind in ("free", "constrained", "free_same_lengths"):
                reqs, patterns = requests(a.tasks, a.samples, a.max_tokens, kind == "constrained", f"r{r}{kind}",
                                          lengths if kind == "free_same_lengths" else None)
                t0 = time.perf_counter()
                results = client.generate(reqs, tag="bench")
                secs = time.perf_counter() - t0
                done = [c for res in results for c in res.completions]
                toks = sum(c.completion_tokens for c in done)
                if kind == "constrained":
                    lengths = [max(1, res.completions[0].completion_tokens) if res.completions else 1
                               for res in results]
                valid = 0
                for k, res in enumerate(results):
                    pattern = patterns[k // a.samples]
                    for c in res.completions:
                        turn = parse_react(c.text)
                        valid += bool(turn.parse_ok and turn.action and re.fullmatch(pattern, turn.action))
                n = len(done)
                runs.append({"run": kind, "constrained": kind == "constrained", "repeat": r,
                             "seconds": round(secs, 2), "completion_tokens": toks,
                             "tokens_per_s": round(toks / secs, 1), "samples": n,
                             "valid_action_turns": valid, "valid_rate": round(valid / n, 4) if n else None})
                print(runs[-1], flush=True)
    finally:
        engines.stop()
    def mean(kind: str, key: str) -> float:
        return statistics.mean(x[key] for x in runs if x["run"] == kind)
    free, held, same = (mean(k, "tokens_per_s") for k in ("free", "constrained", "free_same_lengths"))
    cost = 1 - held / same
    _, patterns = requests(a.tasks, 1, a.max_tokens, False, "c")
    report = {"benchmark": "ReAct turns on one engine, free vs held to the env's actions (regex)",
              "when": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "tasks": a.tasks, "samples_per_task": a.samples, "max_tokens": a.max_tokens,
              "engine_start_s": round(start_s, 1), "engine": next(iter(described.values())), "runs": runs,
              "tokens_per_s_free": round(free, 1),
              "tokens_per_s_constrained": round(held, 1),
              "tokens_per_s_free_same_lengths": round(same, 1),
              "constraint_cost": round(cost, 3), "target_cost": 0.15, "meets_target": cost <= 0.15,
              "constrained_over_free_own_lengths": round(held / free, 3),
              "mean_tokens_per_turn_free": round(mean("free", "completion_tokens") / (a.tasks * a.samples), 1),
              "mean_tokens_per_turn_constrained": round(mean("constrained", "completion_tokens")
                                                        / (a.tasks * a.samples), 1),
              "seconds_same_turns_free": round(mean("free", "seconds"), 2),
              "seconds_same_turns_constrained": round(mean("constrained", "seconds"), 2),
              "valid_rate_free": round(mean("free", "valid_rate"), 4),
              "valid_rate_constrained": round(mean("constrained", "valid_rate"), 4),
              "compile": compile_times(patterns, a.max_tokens), "machine": machine()}
    _write(Path(a.out), report)
    print(json.dumps({k: report[k] for k in ("tokens_per_s_free", "tokens_per_s_constrained",
                                             "tokens_per_s_free_same_lengths", "constraint_cost", "meets_target",
                                             "seconds_same_turns_free", "seconds_same_turns_constrained",
                                             "valid_rate_free", "valid_rate_constrained", "compile")}, indent=1))


if __name__ == "__main__":
    main()

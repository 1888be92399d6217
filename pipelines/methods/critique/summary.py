"""A critique build (or evaluation) in numbers, from its manifest's stage stats: the yield per stage and the
critic's first-error accuracy on the labelled paths beside a random-step critic (ProcessBench's figures)."""
from __future__ import annotations

from typing import Any, Optional


def harmonic(a: Optional[float], b: Optional[float]) -> Optional[float]:
    if a is None or b is None:
        return None
    return round(2 * a * b / (a + b), 4) if a + b > 0 else 0.0


def first_error_scores(stage_stats: dict) -> dict[str, Any]:
    """ProcessBench's figures from a CritiqueStage's counters: accuracy on erroneous samples (the first Wrong step
    is exactly the label), on correct samples (no Wrong step), their harmonic mean (F1), within one step, the
    parse rate, and the expected figures of a critic naming one of (no error, step 1..n) uniformly at random."""
    c = stage_stats.get("counts", {})
    ne, nc = c.get("labelled_erroneous", 0), c.get("labelled_correct", 0)
    rate = lambda k, n, scale=1: round(c.get(k, 0) / scale / n, 4) if n else None   # noqa: E731
    acc_e, acc_c = rate("exact_erroneous", ne), rate("exact_correct", nc)
    def random_rate(kind: str, total: int) -> Optional[float]:
        prefix = f"steps_{kind}_"
        hits = sum(v / (int(k[len(prefix):]) + 1) for k, v in c.items() if k.startswith(prefix))
        return round(hits / total, 4) if total else None
    ra_e, ra_c = random_rate("erroneous", ne), random_rate("correct", nc)
    return {"erroneous": ne, "correct": nc, "acc_erroneous": acc_e, "acc_correct": acc_c,
            "f1": harmonic(acc_e, acc_c), "within_1_erroneous": rate("within_1_erroneous", ne),
            "parse_rate": stage_stats.get("parse_rate"), "random_acc_erroneous": ra_e, "random_acc_correct": ra_c,
            "random_f1": harmonic(ra_e, ra_c)}


def critique_yield(stages: dict[str, dict]) -> dict[str, int]:
    """paths -> verified paths -> critiques -> parsed -> agreeing -> refinements -> verified correct -> kept
    refinements -> kept critiques."""
    g = lambda name, key: stages.get(name, {}).get(key, 0)                       # noqa: E731
    c = lambda name, key: stages.get(name, {}).get("counts", {}).get(key, 0)     # noqa: E731
    return {"paths": g("paths", "out"), "paths_verified": g("filter_paths", "out"),
            "critiques": g("critique", "out"), "parsed": c("critique", "parse_ok"),
            "agreeing": c("critique", "agrees"), "refinements": g("refine", "out"),
            "refinements_verified_correct": c("filter_refinements", "verified_correct"),
            "refinements_kept": g("filter_refinements", "out"), "critiques_kept": g("filter_critiques", "out")}


def _fmt(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def describe_scores(s: dict[str, Any]) -> str:
    return (f"critiques of {s['erroneous']} erroneous + {s['correct']} correct labelled paths; "
            f"acc erroneous {_fmt(s['acc_erroneous'])}, correct {_fmt(s['acc_correct'])}, F1 {_fmt(s['f1'])}, "
            f"within 1 step {_fmt(s['within_1_erroneous'])}, "
            f"parse rate {_fmt(s['parse_rate'])} (random step: acc erroneous {_fmt(s['random_acc_erroneous'])}, "
            f"correct {_fmt(s['random_acc_correct'])}, F1 {_fmt(s['random_f1'])})")


def critique_summary(stages: dict[str, dict]) -> dict[str, Any]:
    """What `errata build` prints after a critique build (stored in the manifest's summary)."""
    return {"yield": " -> ".join(f"{k} {v}" for k, v in critique_yield(stages).items()),
            "critic on labelled paths": describe_scores(first_error_scores(stages.get("critique", {})))}


def eval_summary(stages: dict[str, dict]) -> dict[str, Any]:
    s = first_error_scores(stages.get("critique", {}))
    return {"critic": describe_scores(s), "scores": s}

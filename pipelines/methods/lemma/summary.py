"""A lemma build in numbers, from its manifest's stage stats: the yield per stage, the judge's accuracy on the
rules labels and the error-type histograms (`lemma_summary` is what `errata build` prints)."""
from __future__ import annotations

from typing import Any, Optional


TEACHER_STAGES = ("judge", "injections", "judge_injections", "revise", "smooth")


def judge_accuracy(stage_stats: dict) -> dict[str, Optional[float]]:
    """Exact and +-1 first-error accuracy of the judge on the rules-labelled injections, from the stats of a
    JudgeInjectionsStage (manifest `stages[name]`), beside what a judge naming a step at random among those shown
    would score (`random_exact`, `random_within_1`), and the judge's parse rate. A judgement that located nothing
    counts as a miss."""
    c = stage_stats.get("counts", {})
    n = c.get("labelled", 0)
    rate = lambda k, scale=1: round(c.get(k, 0) / scale / n, 4) if n else None     # noqa: E731
    return {"labelled": n, "exact": rate("exact"), "within_1": rate("within_1"),
            "random_exact": rate("random_exact_milli", 1000), "random_within_1": rate("random_within_1_milli", 1000),
            "parse_rate": stage_stats.get("parse_rate")}


def lemma_yield(stages: dict[str, dict]) -> dict[str, int]:
    """The yield per stage of a lemma build, from its manifest's `stages`: wrong attempts -> judged -> located ->
    revision requests -> passed the checks -> kept (verified correct; rules revisions included)."""
    g = lambda name, key: stages.get(name, {}).get(key, 0)                       # noqa: E731
    c = lambda name, key: stages.get(name, {}).get("counts", {}).get(key, 0)     # noqa: E731
    return {"wrong_attempts": g("judge", "in") - c("judge", "not_wrong"), "judged": g("judge", "out"),
            "located": c("judge", "located"), "injections_kept": g("filter_injections", "out"),
            "revision_requests": g("revise", "out"), "revisions_passed_checks": c("revise", "check_ok"),
            "rules_revisions": c("injections", "rules_revisions"), "kept": g("filter_revisions", "out"),
            "smoothed_kept": g("filter_smoothed", "out") - g("filter_revisions", "out")
            if "filter_smoothed" in stages else 0}


def type_histograms(stages: dict[str, dict]) -> dict[str, dict[str, int]]:
    """The error types of the kept injections (per source) beside the student's measured distribution (located
    judgements of its attempts), from a lemma build's manifest `stages`."""
    def pick(name: str, prefix: str) -> dict[str, int]:
        counts = stages.get(name, {}).get("counts", {})
        return {k[len(prefix):]: v for k, v in sorted(counts.items()) if k.startswith(prefix)}
    return {"measured_student": pick("type_weights", "measured_"),
            "kept_llm_injections": pick("filter_injections", "kept_llm_"),
            "kept_rules_injections": pick("filter_injections", "kept_rules_")}


def lemma_summary(stages: dict[str, dict]) -> dict[str, Any]:
    """What `errata build` prints after a lemma build: the yield per stage and the judge's accuracy on the rules
    labels (both stored in the manifest's stage stats)."""
    acc = judge_accuracy(stages.get("judge_injections", {}))
    fmt = lambda x: "n/a" if x is None else f"{x:.2f}"       # noqa: E731
    return {"yield": " -> ".join(f"{k} {v}" for k, v in lemma_yield(stages).items()),
            "judge on rules labels": f"{acc['labelled']} labelled, exact {fmt(acc['exact'])}, "
                                     f"within 1 step {fmt(acc['within_1'])} (a random step: exact "
                                     f"{fmt(acc['random_exact'])}, within 1 {fmt(acc['random_within_1'])})",
            "judge parse rate": ", ".join(f"{s} {fmt(stages[s].get('parse_rate'))}"
                                          for s in ("judge", "judge_injections") if s in stages),
            **{f"error types, {k.replace('_', ' ')}": ", ".join(f"{t} {n}" for t, n in h.items()) or "none"
               for k, h in type_histograms(stages).items()}}

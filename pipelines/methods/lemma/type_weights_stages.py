"""`TypeWeightsStage` (LEMMA, global): the build-scope table `error_type_weights`, the weights of the error types
the LLM injector asks for (measured from the judged student errors, uniform or explicit)."""
from __future__ import annotations

from collections import Counter
from typing import Any, Literal

from pydantic import Field, field_validator

from pipelines.methods.lemma.rows import ErrorTypeWeight
from schemas.rows import make_id
from stages.base import GlobalStage, StageStats, columns_except
from pipelines.methods.lemma.taxonomy import ERROR_LABELS, INJECTION_TYPES, canonical_label
from stages.options import Options


class TypeWeightsConfig(Options):
    mode: Literal["measured", "uniform", "explicit"] = Field(
        "measured", description="measured: the student's judged error-type distribution in this build (LEMMA's "
                                "choice); uniform; explicit: the `weights` given")
    types: list[str] = Field(default_factory=lambda: list(INJECTION_TYPES),
                             description="the error types the LLM injector may ask for (taxonomy labels)")
    weights: dict[str, float] = Field(default_factory=dict, description="explicit mode: type -> weight (>= 0)")
    prior: float = Field(1.0, ge=0, description="measured mode: pseudo-count added to every type (0: types the "
                                                "student never made get no requests)")

    @field_validator("types")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        out = []
        for t in v:
            c = canonical_label(t)
            if c is None:
                raise ValueError(f"unknown error type {t!r} (known: {', '.join(ERROR_LABELS)})")
            out.append(c)
        if not out:
            raise ValueError("at least one error type")
        return out


class TypeWeightsStage(GlobalStage):
    kind = "lemma_type_weights"
    fills = {"error_type_weights": columns_except(ErrorTypeWeight)}
    description = "global: the injection-type weights (measured from the judged student errors, uniform, explicit)"
    config_class = TypeWeightsConfig
    build_tables = ("error_type_weights",)
    reads = {"judgements": ("judgement_id", "target_table", "verdict", "error_type")}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **self.config.model_dump()}

    def summarize(self, tables, stats: StageStats):
        c = self.config
        measured = Counter(j.get("error_type") or "unknown" for j in tables.get("judgements", [])
                           if j.get("target_table") == "attempts" and j.get("verdict") == "located")
        for lab, n in measured.items():
            stats.count(f"measured_{lab}", n)
        if c.mode == "uniform":
            raw = {t: 1.0 for t in c.types}
        elif c.mode == "explicit":
            raw = {t: float(c.weights.get(t, 0.0)) for t in c.types}
            if sum(raw.values()) <= 0:
                raise ValueError("type_weights: explicit mode needs a positive weight for one of the types")
        else:
            raw = {t: measured.get(t, 0) + c.prior for t in c.types}
            if sum(raw.values()) <= 0:      # nothing measured and no prior: fall back to uniform, say so
                stats.count("fallback_uniform")
                raw = {t: 1.0 for t in c.types}
        total = sum(raw.values())
        stats.rows_out = len(c.types)
        return {"error_type_weights": [
            {"weight_id": make_id(c.mode, t, prefix="w-"), "error_type": t, "mode": c.mode,
             "count": measured.get(t, 0), "weight": raw[t] / total, **self.lineage([])} for t in c.types]}

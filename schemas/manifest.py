"""The manifest of a dataset version: written last, it is what makes a version exist."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class FileEntry(BaseModel):
    path: str = Field(..., description="path relative to the version directory")
    rows: int = Field(..., description="rows in the file")
    bytes: int = Field(..., description="file size")
    sha256: str = Field(..., description="sha256 of the file contents")


class TableEntry(BaseModel):
    rows: int = Field(..., description="rows in the table")
    files: list[FileEntry] = Field(default_factory=list, description="Parquet files of the table")


class Manifest(BaseModel):
    format_version: int = Field(1, description="manifest format")
    dataset: str = Field(..., description="dataset name")
    version: int = Field(..., description="version number, 1-based, never reused")
    created_at: str = Field(..., description="UTC ISO time of publication")
    run_id: str = Field(..., description="the build run that produced it")
    parents: list[str] = Field(default_factory=list, description="versions it was built from, 'name@N'")
    method: str = Field(..., description="recipe method")
    recipe: dict[str, Any] = Field(..., description="the full recipe config as run")
    recipe_hash: str = Field(..., description="hash of the output-determining recipe settings")
    code_version: str = Field(..., description="errata version and git commit (+dirty) of the code that built it")
    models: dict[str, Any] = Field(default_factory=dict, description="per stage: its settings, role and model")
    engines: dict[str, Any] = Field(default_factory=dict,
                                    description="per engine (one per distinct setting): roles served, model, the "
                                                "dtype chosen and why, device, starts and start seconds")
    prompt_templates: dict[str, str] = Field(default_factory=dict, description="template name -> version")
    tables: dict[str, TableEntry] = Field(default_factory=dict, description="per-table rows and files")
    drops: dict[str, dict[str, int]] = Field(default_factory=dict,
                                             description="per table: rows dropped, by reason (duplicate_problem, "
                                                         "near_duplicate, contaminated:<set>, a filter's reasons); "
                                                         "dropped rows stay in their table")
    stages: dict[str, dict[str, Any]] = Field(default_factory=dict,
                                              description="per-stage in/out/dropped_<reason>/errors/seconds, "
                                                          "tokens and tokens/s for LLM stages")
    summary: dict[str, Any] = Field(default_factory=dict,
                                    description="the method's own figures, as the build summary prints them (LEMMA: "
                                                "yield per stage, judge accuracy on the rules labels, error-type "
                                                "histograms); computed from `stages`")
    inputs: dict[str, Any] = Field(default_factory=dict, description="the task source: kind, path or version, "
                                                                     "filter")
    tokens: dict[str, int] = Field(default_factory=dict, description="prompt/completion tokens in total")
    timings: dict[str, float] = Field(default_factory=dict, description="wall-clock seconds of the build")
    shards: dict[str, int] = Field(default_factory=dict, description="shards total / resumed from an earlier run")
    execution: dict[str, str] = Field(default_factory=dict, description="how the build ran: runner (ray or local) "
                                                                        "and the reason it was chosen")
    error_budget: dict[str, Any] = Field(default_factory=dict,
                                         description="max_error_fraction, each stage's error fraction, and the "
                                                     "stages over it published anyway (--allow-errors)")

    @property
    def ref(self) -> str:
        return f"{self.dataset}@{self.version}"

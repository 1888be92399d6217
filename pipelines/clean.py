"""Cleaning stages any recipe can add with one line: near-duplicate removal and decontamination against
evaluation sets (the recipe's `clean:` section). Exact repeats of a problem are flagged at task loading
(`tasks.keep_duplicates`, stages/tasks.py); these are the global stages around the method's own:

    clean:
      decontaminate: {sets: [{name: gsm8k_test, path: gsm8k_test.jsonl}]}     # before: problems.question
      near_dup: {table: attempts, column: completion}                          # after the method's stages

Placement: `decontaminate` (problems) runs first, then `near_dup` when its table is `problems`; the method's
stages; then `decontaminate_outputs` (when `decontaminate.outputs` names TABLE.COLUMN) and `near_dup` on any other
table. The chain check sees them like any stage, so a table or column the method does not make is refused before
any work.
"""
from __future__ import annotations

from typing import Optional

from pydantic import Field

from schemas.errors import ConfigError
from schemas.registry import StageSpec
from stages.decontaminate import Decontaminate, DecontaminateConfig, DecontaminateOutputs
from stages.near_dup import NearDupConfig, NearDuplicates
from stages.options import Options

CLEAN_STAGES = ("decontaminate", "near_dup", "decontaminate_outputs")   # stage names (config: clean.<...>)


class CleanConfig(Options):
    near_dup: Optional[NearDupConfig] = Field(None, description="drop near-duplicate rows of one table's text "
                                                                "column (MinHash LSH), one kept per cluster, "
                                                                "reason near_duplicate; off when unset")
    decontaminate: Optional[DecontaminateConfig] = Field(None, description="drop problems (and optionally outputs) "
                                                                           "matching evaluation sets, reason "
                                                                           "contaminated:<set>; off when unset")


def clean_stages(clean: CleanConfig, method_stages: list[str]) -> tuple[list[StageSpec], list[StageSpec]]:
    """(stages before the method's, stages after them) that the recipe's `clean:` section adds."""
    clash = sorted(set(CLEAN_STAGES) & set(method_stages))
    if clash and (clean.near_dup or clean.decontaminate):
        raise ConfigError(f"clean: the method has stages named {clash}, which the cleaning stages use")
    before: list[StageSpec] = []
    after: list[StageSpec] = []
    if clean.decontaminate is not None:
        before.append(StageSpec("decontaminate", Decontaminate))
        if clean.decontaminate.outputs:
            after.append(StageSpec("decontaminate_outputs", DecontaminateOutputs))
    if clean.near_dup is not None:
        (before if clean.near_dup.table == "problems" else after).append(StageSpec("near_dup", NearDuplicates))
    return before, after


def clean_stage_config(clean: CleanConfig, name: str) -> Options:
    """The options of a cleaning stage by its name."""
    return clean.near_dup if name == "near_dup" else clean.decontaminate

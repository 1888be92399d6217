"""Row types of the cleaning stages (stages/near_dup.py, stages/decontaminate.py): what they found, one row per
finding, so every drop they make can be traced to its cluster or to the evaluation item it matched.

Both are build-scope tables (one for the whole build, written by a global stage); a build-scope table that several
global stages write holds the rows of each (the decontamination of problems and of outputs).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from schemas.registry import TableSpec, register_table
from schemas.rows import Lineage


@dataclass
class NearDuplicate(Lineage):
    near_duplicate_id: str = field(default="", metadata={"doc": "stable id of this finding"})
    stage: str = field(default="", metadata={"doc": "the stage that found it"})
    table: str = field(default="", metadata={"doc": "table of the row"})
    row_id: str = field(default="", metadata={"doc": "id of the row (in `table`)"})
    problem_id: Optional[str] = field(default=None, metadata={"doc": "problem of the row, when its table has one"})
    cluster_id: str = field(default="", metadata={"doc": "the cluster: rows with the same cluster_id are near "
                                                         "duplicates of its kept row"})
    kept: bool = field(default=False, metadata={"doc": "the one row of the cluster that stays (the first seen); "
                                                       "every other member is dropped with reason near_duplicate"})
    kept_row_id: str = field(default="", metadata={"doc": "id of the cluster's kept row"})
    similarity: float = field(default=1.0, metadata={"doc": "estimated Jaccard similarity (MinHash) of the row's "
                                                            "shingles to the kept row's; 1.0 for the kept row"})


@dataclass
class Contamination(Lineage):
    contamination_id: str = field(default="", metadata={"doc": "stable id of this finding"})
    stage: str = field(default="", metadata={"doc": "the stage that found it"})
    table: str = field(default="", metadata={"doc": "table of the contaminated row (problems, or an output table)"})
    row_id: str = field(default="", metadata={"doc": "id of the row (in `table`)"})
    problem_id: Optional[str] = field(default=None, metadata={"doc": "problem of the row, when its table has one"})
    eval_set: str = field(default="", metadata={"doc": "name of the evaluation set it matched (the recipe's "
                                                       "clean.decontaminate.sets[].name)"})
    eval_id: str = field(default="", metadata={"doc": "the matched evaluation item: its id_field value if the set "
                                                      "names one, else its 1-based line/row number"})
    match: str = field(default="", metadata={"doc": "ngram (a shared word n-gram) or near_duplicate (MinHash "
                                                    "similarity at or above the threshold)"})
    score: float = field(default=0.0, metadata={"doc": "ngram: the fraction of the row's n-grams found in the "
                                                       "evaluation item; near_duplicate: estimated Jaccard"})
    evidence: Optional[str] = field(default=None, metadata={"doc": "ngram: the first shared n-gram"})


register_table(TableSpec("near_duplicates", NearDuplicate, "near_duplicate_id", ("row_id",), scope="build",
                         description="near-duplicate clusters a near_dup stage found: every member, kept or dropped"))
register_table(TableSpec("contamination", Contamination, "contamination_id", ("row_id",), scope="build",
                         description="rows that matched an evaluation set (decontaminate stages): set, item, how"))

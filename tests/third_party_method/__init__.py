"""A method of a third party, outside errata's packages: the spine's generate stage, then its own stage writing its
own table. Named in a recipe as `method: "tests.third_party_method:METHOD"`, or as an entry point of the group
`errata.methods` (tests/unit/test_registry.py)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from schemas.registry import Method, StageSpec, TableSpec, register_table
from schemas.rows import Lineage, make_id
from stages.base import ExpandStage
from stages.generate import GenerateStage


@dataclass
class Echo(Lineage):
    echo_id: str = field(default="", metadata={"doc": "stable id"})
    attempt_id: str = field(default="", metadata={"doc": "the attempt echoed"})
    problem_id: str = field(default="", metadata={"doc": "its problem"})
    words: int = field(default=0, metadata={"doc": "words in the attempt"})
    drop_reason: Optional[str] = field(default=None, metadata={"doc": "null = kept"})


register_table(TableSpec("echoes", Echo, "echo_id", ("attempt_id", "problem_id"),
                         description="a third-party table: one row per attempt"))


class EchoStage(ExpandStage):
    kind = "echo"
    description = "count each attempt's words"
    source = "attempts"
    target = "echoes"
    reads = {"attempts": ("attempt_id", "problem_id", "completion")}

    def expand(self, rows, tables, stats, shard):
        return [[{"echo_id": make_id(r["attempt_id"], prefix="x-"), "attempt_id": r["attempt_id"],
                  "problem_id": r["problem_id"], "words": len((r["completion"] or "").split()),
                  **self.lineage([r["attempt_id"]])}] for r in rows]


METHOD = Method("echo", "generate, then count words (a test method from outside errata)",
                (StageSpec("generate", GenerateStage), StageSpec("echo", EchoStage)),
                roles=("student",), home=Path(__file__).parent)
ENTRY_POINT_METHOD = Method("echo_ep", METHOD.description, METHOD.stages, roles=METHOD.roles, home=METHOD.home)

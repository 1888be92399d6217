"""Helpers for calling stages directly, as Ray would, with the build's in-process engines."""
from __future__ import annotations

import re
from pathlib import Path

from schemas.rows import to_table
from stages.base import ShardInfo, StageContext
from stages.engines.config import EngineConfig
from stages.engines.host import LocalEngines


def context(run_id: str = "run-1", method: str = "sample_verify", **roles: EngineConfig) -> StageContext:
    roles = roles or {"student": EngineConfig(kind="fake", fake_script="mixed")}
    return StageContext(run_id=run_id, method=method, engines=roles)


class Harness:
    """Set a stage up on in-process engines, run it on tables, look at what the engines saw."""

    def __init__(self, stage):
        self.stage = stage
        self.engines = LocalEngines(dict(stage.context.engines))

    def __enter__(self) -> "Harness":
        self.stage.setup(self.engines)
        return self

    def __exit__(self, *exc) -> None:
        self.stage.teardown()
        self.engines.stop()

    def run(self, tables, shard: ShardInfo = ShardInfo()):
        return self.stage.run(tables, shard)

    def engine(self, role: str = "student"):
        """The engine object serving `role` (a FakeEngine in unit tests)."""
        return self.engines.hosts[self.engines.role_keys[role]]._engine


def run_stage(stage, tables, shard: ShardInfo = ShardInfo()):
    with Harness(stage) as h:
        return h.run(tables, shard)


def validate_row(row: dict, cls: type) -> None:
    """Raise (naming the field) when a row does not fit its row type's Arrow schema."""
    to_table([row], cls)
def doc_sql(doc: str, name: str) -> str:
    """The SQL block under `<!-- sql: name -->` in a doc (a path from the repository root), without its final ';':
    the exact query the docs show, for tests to run."""
    text = (Path(__file__).resolve().parents[1] / doc).read_text()
    marker = f"<!-- sql: {name} -->"
    assert text.count(marker) == 1, f"{doc}: expected one {marker}"
    m = re.match(r"\s*```sql\n(.*?)```", text[text.index(marker) + len(marker):], re.S)
    assert m, f"{doc}: no ```sql block right after {marker}"
    return m.group(1).strip().rstrip(";")

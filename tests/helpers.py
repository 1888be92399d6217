"""Helpers for calling stages directly, as Ray would, with the build's in-process engines."""
from __future__ import annotations

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

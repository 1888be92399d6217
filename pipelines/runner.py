"""Execution of a list of stages over shards: on Ray Data (default) or in process (debugging), same output.

The unit of work is a shard: a list of problem rows. Each Ray Data row carries one whole shard (pickled), so a
stage always sees complete shards whatever Ray does with blocks. A run ends in a sink, called once per shard that
came through: the ShardWriter (tables, then the `_SUCCESS` marker) when all stages run in one go, or the
CheckpointWriter (`after-<stage>.pkl`) when the build runs stage by stage. LLM stages run as actor pools that hold
the engine; the others as small actors. Stages are plain Python; this module is the only one that imports Ray.
"""
from __future__ import annotations

import json
import os
import pickle
from dataclasses import asdict
from typing import Any, Callable, Iterator

import pyarrow as pa

from pipelines.storage import ShardResult, Store
from schemas.errors import ConfigError
from schemas.rows import ErrorRecord, make_id, to_table
from stages.base import Stage, StageStats

RAY_ENV_VARS = {
    "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",   # on 2 cores, let vLLM compute on both (+47% measured)
    "HF_HUB_OFFLINE": "1",                  # nothing may download at run time
    "TOKENIZERS_PARALLELISM": "false",
}


# --- the shard writer: rows -> tables ---------------------------------------------------------------------
def error_record(row: dict) -> dict:
    """A failed row as an `errors` table record, with its reason and raw input/output."""
    row_id = row.get("attempt_id") or row.get("problem_id") or ""
    raw_input = {k: row.get(k) for k in ("problem_id", "question", "prompt", "completion") if row.get(k)}
    return {
        "error_id": make_id(row_id, row.get("error_stage"), row.get("sample_index"), prefix="e-"),
        "row_id": row_id, "problem_id": row.get("problem_id"), "stage": row.get("error_stage"),
        "reason": row.get("error_reason") or "unknown", "message": row.get("error_message") or "",
        "raw_input": json.dumps(raw_input, default=str), "raw_output": row.get("error_raw"),
        "run_id": row.get("run_id"), "method": row.get("method"), "created_at": row.get("created_at"),
        "parent_ids": [p for p in [row.get("problem_id")] if p],
    }


def split_tables(problems: list[dict], rows: list[dict], row_type: type) -> dict[str, pa.Table]:
    from schemas.rows import Problem
    ok = [r for r in rows if not r.get("error_stage")]
    failed = [error_record(r) for r in rows if r.get("error_stage")]
    return {"problems": to_table(problems, Problem), "attempts": to_table(ok, row_type),
            "errors": to_table(failed, ErrorRecord)}


class _OnStore:
    """Holds only a root URL (so it pickles into Ray actors) and opens the Store on first use."""
    root: str
    _store: Store | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.root)
        return self._store


class ShardWriter(_OnStore):
    """Sink that writes a processed shard's tables into staging, then its `_SUCCESS` marker.
    Picklable: it holds only the root URL and names."""

    def __init__(self, root: str, dataset: str, build_key: str, row_type: type):
        self.root, self.dataset, self.build_key, self.row_type = root, dataset, build_key, row_type

    def __call__(self, shard: dict) -> dict:
        tables = split_tables(shard["problems"], shard["rows"], self.row_type)
        return asdict(self.store.write_shard(self.dataset, self.build_key, shard["shard_id"], tables,
                                             shard["stats"]))


class CheckpointWriter(_OnStore):
    """Sink that records a shard's rows after one stage (`after-<stage>.pkl`), replacing the previous stage's."""

    def __init__(self, root: str, dataset: str, build_key: str, stage: str, previous: str | None):
        self.root, self.dataset, self.build_key, self.stage, self.previous = root, dataset, build_key, stage, previous

    def __call__(self, shard: dict) -> dict:
        self.store.write_checkpoint(self.dataset, self.build_key, shard["shard_id"], self.stage, shard,
                                     previous=self.previous)
        return {"shard_id": shard["shard_id"], "stats": {self.stage: shard["stats"].get(self.stage, {})}}


class CheckpointReader(_OnStore):
    """Source that loads a shard from its checkpoint after `stage`, in the worker that runs the next stage (so
    the driver never holds every shard's rows)."""

    def __init__(self, root: str, dataset: str, build_key: str, stage: str):
        self.root, self.dataset, self.build_key, self.stage = root, dataset, build_key, stage

    def __call__(self, item: dict) -> dict:
        return self.store.read_checkpoint(self.dataset, self.build_key, item["shard_id"], self.stage)


def new_shard(shard_id: int, problems: list[dict]) -> dict:
    """The unit that travels through the stages: the shard's problems, its current rows, per-stage stats."""
    return {"shard_id": shard_id, "problems": problems, "rows": [dict(p) for p in problems], "stats": {}}


def run_stages_on_shard(stages: list[Stage], rows: list[dict]) -> tuple[list[dict], dict[str, dict]]:
    stats: dict[str, dict] = {}
    for st in stages:
        rows, s = st.process(rows)
        stats[st.name] = s.as_dict()
    return rows, stats


# --- in process ---------------------------------------------------------------------------------------------
class LocalRunner:
    """Runs the stages in this process, shard by shard. Same output as RayRunner."""

    def run(self, shards: list[dict], stages: list[Stage], sink: Callable[[dict], dict],
            progress: bool = True, source: Callable[[dict], dict] | None = None) -> Iterator[dict]:
        """Pass each shard through the stages, then hand it to `sink`; yield what the sink returns. With a
        `source`, `shards` are {"shard_id"} items that `source` turns into shards first."""
        for st in stages:
            st.setup()
        try:
            for shard in shards:
                if source is not None:
                    shard = source(shard)
                rows, stats = run_stages_on_shard(stages, shard["rows"])
                shard["rows"] = rows
                shard["stats"].update(stats)
                yield sink(shard)
        finally:
            for st in stages:
                st.teardown()


# --- on Ray Data ----------------------------------------------------------------------------------------------
class _StageUDF:
    """Ray Data actor wrapper: setup once, then one shard per call."""

    def __init__(self, stage: Stage, source: Callable[[dict], dict] | None = None):
        self.stage, self.source = stage, source
        stage.setup()

    def __del__(self):
        # Ray Data deletes the UDF when the actor exits gracefully: close the engine instead of leaving
        # its processes to die noisily (or orphaned) with the actor.
        try:
            self.stage.teardown()
        except Exception:
            pass

    def __call__(self, batch: pa.Table) -> pa.Table:
        out_ids, out_payloads = [], []
        for sid, blob in zip(batch.column("shard_id").to_pylist(), batch.column("payload").to_pylist()):
            shard = pickle.loads(blob)
            if self.source is not None:
                shard = self.source(shard)
            rows, s = self.stage.process(shard["rows"])
            shard["rows"] = rows
            shard["stats"][self.stage.name] = s.as_dict()
            out_ids.append(sid)
            out_payloads.append(pickle.dumps(shard, protocol=5))
        return pa.table({"shard_id": out_ids, "payload": pa.array(out_payloads, pa.binary())})


class _SinkUDF:
    def __init__(self, sink: Callable[[dict], dict]):
        self.sink = sink

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = [json.dumps(self.sink(pickle.loads(blob)), default=str) for blob in batch.column("payload").to_pylist()]
        return pa.table({"result": out})


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast on a host:port nobody listens on (ray.init would retry for minutes)."""
    import socket
    if address in ("auto", "local") or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot reach the Ray cluster at {address}: {e}") from None


def _named(cls: type, name: str) -> type:
    """A subclass whose name Ray shows on the stage's progress bar."""
    return type(name, (cls,), {"__module__": cls.__module__})


class RayRunner:
    def __init__(self, address: str | None = None, num_cpus: int | None = None, cpu_stage_concurrency: int = 1,
                 engine_actors: int = 1, engine_cpus: float = 1.0, engine_gpus: float = 0.0):
        self.address, self.num_cpus = address, num_cpus
        self.cpu_stage_concurrency = cpu_stage_concurrency
        self.engine_actors, self.engine_cpus, self.engine_gpus = engine_actors, engine_cpus, engine_gpus

    def start(self, progress: bool = True) -> bool:
        """Connect to (or start) Ray unless this process already did; True if this call started it."""
        import ray
        if ray.is_initialized():
            return False
        env = dict(RAY_ENV_VARS)
        env["VLLM_LOGGING_LEVEL"] = os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")  # engine chatter off by default
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True,
                                  "runtime_env": {"env_vars": env}}
        if self.address:
            _check_reachable(self.address)
            kwargs["address"] = self.address
        elif self.num_cpus:
            kwargs["num_cpus"] = self.num_cpus
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = f"the Ray cluster at {self.address}" if self.address else "a local Ray instance"
            hint = (" If the cluster uses token authentication, set RAY_AUTH_MODE=token and make the token "
                    "available (~/.ray/auth_token or RAY_AUTH_TOKEN)." if "auth" in str(e).lower() else "")
            raise ConfigError(f"cannot start or reach {where}: {str(e).splitlines()[0][:300]}.{hint}") from e
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = progress
        ctx.verbose_progress = False
        return True

    def resources(self, stage: Stage) -> dict[str, Any]:
        """Actor pool size and per-actor resources of a stage: engine stages get the engine's settings,
        cheap CPU stages a quarter CPU each (so they never starve the engine on 2 cores)."""
        if stage.uses_engine:
            return {"actors": self.engine_actors, "num_cpus": self.engine_cpus, "num_gpus": self.engine_gpus}
        return {"actors": self.cpu_stage_concurrency, "num_cpus": 0.25, "num_gpus": 0}

    def run(self, shards: list[dict], stages: list[Stage], sink: Callable[[dict], dict],
            progress: bool = True, source: Callable[[dict], dict] | None = None) -> Iterator[dict]:
        """One Ray Data run: shards -> each stage (an actor pool) -> sink; yields what the sink returns. With a
        `source`, `shards` are {"shard_id"} items that the first stage's actors turn into shards."""
        import ray
        import ray.data
        started = self.start(progress)
        ds = ray.data.from_arrow([pa.table({"shard_id": [sh["shard_id"]],
                                            "payload": pa.array([pickle.dumps(sh, protocol=5)], pa.binary())})
                                  for sh in shards])
        for i, st in enumerate(stages):
            res = self.resources(st)
            ds = ds.map_batches(
                _named(_StageUDF, st.name.title()), fn_constructor_args=(st, source if i == 0 else None),
                batch_size=1, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=res["actors"]),
                num_cpus=res["num_cpus"], num_gpus=res["num_gpus"])
        ds = ds.map_batches(_named(_SinkUDF, type(sink).__name__), fn_constructor_args=(sink,), batch_size=1,
                            batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0.25)
        try:
            for row in ds.iter_rows():
                yield json.loads(row["result"])
        finally:
            if started:  # free the engine (GBs of RAM) and let its processes finish logging now
                ray.shutdown()


def merge_stats(results: list[ShardResult], order: list[str]) -> dict[str, dict]:
    merged: dict[str, StageStats] = {}
    for r in results:
        for name, d in r.stats.items():
            merged.setdefault(name, StageStats()).merge(StageStats.from_dict(d))
    return {n: merged[n].as_dict() for n in order if n in merged}

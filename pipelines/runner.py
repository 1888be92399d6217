"""Executing stages over shards: on Ray Data or in process, same output (`choose_runner` picks for `auto`).

Both runners do the same thing for each (shard, stage): if the stage already finished the shard (its checkpoint
exists) skip it; else read the tables the stage needs (from the earlier stages in this run, or from staging), run
the stage, write its output tables, errors and stats as that shard's checkpoint, and hand the tables on.

On Ray Data each Ray row is one shard: its id plus one binary column per table, an Arrow IPC stream (not a pickle).
An LLM stage runs as one light actor calling the build's shared engine for `shards_in_flight` shards at once
(threads), so several shards' requests share the engine's batch; CPU stages as small actors, or, with
`fuse_stages` (a local Ray), inside the actor of the LLM stage before them. This module is the
only one that imports Ray.
"""
from __future__ import annotations

import glob
import json
import os
import re
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, Optional

import pyarrow as pa

from pipelines.staging import Staging, table_from_rows
from schemas.errors import ConfigError, ErrataError
from schemas.rows import from_ipc_bytes, ipc_bytes
from stages.base import ShardInfo, Stage
from stages.engines.hardware import ENGINE_ENV_DEFAULTS

RAY_ENV_VARS = {   # defaults for Ray's workers; the caller's environment wins (ray_env_vars)
    **ENGINE_ENV_DEFAULTS,
    "HF_HUB_OFFLINE": "1",                  # nothing may download at run time
    "TOKENIZERS_PARALLELISM": "false",
    "VLLM_LOGGING_LEVEL": "WARNING",
}
CPU_CAP_VARS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")   # passed on when set: they decide the engines' dtype


SMALL_BOX_CORES = 2   # auto runs in process on a CPU-only machine with at most this many usable cores


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity: a container's or taskset's limit, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def gpu_present() -> bool:
    """Whether the machine shows a GPU device (NVIDIA or AMD), without importing torch or CUDA."""
    return bool(glob.glob("/dev/nvidia[0-9]*")) or os.path.exists("/dev/kfd")


def choose_runner(runner: str, ray_address: Optional[str]) -> tuple[str, str]:
    """The runner a build uses ("ray" or "local") and why. `auto` is Ray, except when errata would start its own
    local Ray on a CPU-only machine of SMALL_BOX_CORES cores or fewer: there the engine computes on every core and
    each wakeup of Ray's processes (raylet, GCS, the stages' actors, the calls between them) stalls it, measured
    at 1.13-1.22x the wall time of one raw vLLM process on a 2-core box, against 1.00-1.09x in process and
    1.03-1.06x on Ray with a core kept from the engine (bench/build_modes.py, bench/results/build_modes.json)."""
    if runner in ("ray", "local"):
        return runner, "execution.runner=" + runner
    if ray_address:
        return "ray", "auto: a Ray cluster address is set"
    if gpu_present():
        return "ray", "auto: a GPU is present"
    if int(os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU") or 0) > 0:
        return "ray", "auto: VLLM_CPU_NUM_OF_RESERVED_CPU keeps cores from the engine"
    cores = usable_cores()
    if cores > SMALL_BOX_CORES:
        return "ray", f"auto: {cores} CPU cores"
    # last: the Prefect path's early_start may have started Ray for this same choice; the reason is the one above
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return "ray", "auto: this process is already connected to Ray"
    return "local", (f"auto: {cores} CPU core{'s' if cores > 1 else ''} and no GPU, where Ray's own processes would "
                     f"slow the engine; execution.runner=ray to use Ray anyway")


def run_stage_on_shard(stage: Stage, staging: Staging, shard_id: int, shards_total: int,
                       stages_before: list[str], carried: dict[str, pa.Table]) -> dict:
    """One (shard, stage) step; updates `carried` (tables handed to the next stage). Returns the stage's stats
    for the shard (from its checkpoint when it had finished before)."""
    if staging.done(shard_id, stage.name):
        for t in stage.writes:      # later stages read this stage's version from its checkpoint
            carried.pop(t, None)
        return staging.marker(shard_id, stage.name)["stats"]
    inputs: dict[str, list[dict]] = {}
    for t in stage.reads:
        tbl = carried.get(t)
        if tbl is None:
            tbl = staging.read_table(shard_id, t, stages_before)
        inputs[t] = tbl.to_pylist() if tbl is not None else []
    res = stage.run(inputs, ShardInfo(shard_id, shards_total))
    out = {t: table_from_rows(rows, t) for t, rows in res.tables.items()}
    errors = table_from_rows(res.errors, "errors") if res.errors else None
    stats = res.stats.as_dict()
    staging.write_stage(shard_id, stage.name, out, errors, stats)
    carried.update(out)
    return stats


def run_global_stage(stage: Stage, staging: Staging, shard_ids: list[int], stages_before: list[str]) -> dict:
    """A global stage: gather the columns it reads from every shard, decide once, apply shard by shard."""
    from stages.base import StageStats
    if not staging.global_done(stage.name):
        data: dict[str, list[dict]] = {}

        def shard_rows(t: str, cols: tuple[str, ...], sid: int) -> list[dict]:
            tbl = staging.read_table(sid, t, stages_before, columns=list(cols) or None)
            return [] if tbl is None else [dict(r, __shard=sid) for r in tbl.to_pylist()]
        if getattr(stage, "scans_shards", False):    # one shard in memory at a time; the stage keeps its own state
            for sid in shard_ids:
                stage.scan({t: shard_rows(t, cols, sid) for t, cols in stage.reads.items()})
        else:
            data = {t: [r for sid in shard_ids for r in shard_rows(t, cols, sid)] for t, cols in stage.reads.items()}
        drops = stage.decide(data)
        summary_stats = StageStats(t_start=time.time())
        built = {t: table_from_rows(rows, t) for t, rows in stage.summarize(data, summary_stats).items()}
        summary_stats.t_end = time.time()
        del data
        if stage.table:
            for sid in shard_ids:
                if staging.done(sid, stage.name):
                    continue
                tbl = staging.read_table(sid, stage.table, stages_before)
                res = stage.apply(tbl.to_pylist() if tbl is not None else [], drops)
                staging.write_stage(sid, stage.name, {t: table_from_rows(r, t) for t, r in res.tables.items()},
                                    None, res.stats.as_dict())
        files = {t: staging.write_build_table(stage.name, t, tbl) for t, tbl in built.items()}
        staging.mark_global_done(stage.name, {"shards": len(shard_ids), "decisions": len(drops), "tables": files,
                                              "stats": summary_stats.as_dict()})
    merged = StageStats.from_dict(staging.global_marker(stage.name).get("stats", {}))
    if stage.table:
        for sid in shard_ids:
            merged.merge(StageStats.from_dict(staging.marker(sid, stage.name)["stats"]))
    return merged.as_dict()


# --- in process ---------------------------------------------------------------------------------------------
class LocalRunner:
    """Runs stages in this process: each shard goes through the stages in order; up to `shards_in_flight` shards
    at once (threads), so the shared engine sees several shards' requests together. Same output as RayRunner."""

    def __init__(self, shards_in_flight: int = 1):
        self.shards_in_flight = shards_in_flight

    def run(self, shard_ids: list[int], shards_total: int, stages: list[Stage], stages_before: list[str],
            staging: Staging, engines: Any, progress: bool = True) -> Iterator[dict]:
        for st in stages:
            st.setup(engines)
        try:
            def one(sid: int) -> dict:
                carried: dict[str, pa.Table] = {}
                before = list(stages_before)
                stats = {}
                for st in stages:
                    stats[st.name] = run_stage_on_shard(st, staging, sid, shards_total, before, carried)
                    before.append(st.name)
                return {"shard_id": sid, "stats": stats}
            if self.shards_in_flight <= 1:
                for sid in shard_ids:
                    yield one(sid)
            else:
                with ThreadPoolExecutor(self.shards_in_flight, thread_name_prefix="errata-shard") as ex:
                    yield from ex.map(one, shard_ids)
        finally:
            for st in stages:
                st.teardown()


# --- on Ray Data ----------------------------------------------------------------------------------------------
class _SegmentUDF:
    """Ray Data actor for a segment (one stage, or an LLM stage with the CPU stages that follow it): set its stages
    up once, then one shard per call through each stage in order."""

    def __init__(self, stages: list[Stage], staging: Staging, shards_total: int, stages_before: list[str],
                 engines: Any, tables: list[str], hand_on: bool = True):
        self.stages, self.staging, self.total, self.before = stages, staging, shards_total, stages_before
        self.tables = tables
        self.hand_on = hand_on      # False for the run's last segment: only the stats go back to the driver
        for st in stages:
            st.setup(engines)
        for role in dict.fromkeys(r for st in stages for r in st.roles):
            if hasattr(engines, "wait_ready"):
                # the engine starts beside this worker; the stage's clock (and tokens/s) starts once it runs
                engines.wait_ready(role)

    def __del__(self):
        for st in getattr(self, "stages", []):
            try:
                st.teardown()
            except Exception:
                pass

    def __call__(self, batch: pa.Table) -> pa.Table:
        out: dict[str, list] = {"shard_id": [], "stats": [], **{f"t_{t}": [] for t in self.tables}}
        cols = batch.to_pydict()
        for i, sid in enumerate(cols["shard_id"]):
            carried = {t: from_ipc_bytes(cols[f"t_{t}"][i]) for t in self.tables if cols[f"t_{t}"][i] is not None}
            stats = json.loads(cols["stats"][i])
            before = list(self.before)
            for st in self.stages:
                stats[st.name] = run_stage_on_shard(st, self.staging, sid, self.total, before, carried)
                before.append(st.name)
            out["shard_id"].append(sid)
            out["stats"].append(json.dumps(stats))
            for t in self.tables:
                out[f"t_{t}"].append(ipc_bytes(carried[t]) if self.hand_on and t in carried else None)
        return _payload_table(out, self.tables)


def _payload_table(cols: dict[str, list], tables: list[str]) -> pa.Table:
    schema = pa.schema([("shard_id", pa.int64()), ("stats", pa.string()),
                        *[(f"t_{t}", pa.binary()) for t in tables]])
    return pa.table(cols, schema=schema)


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
    """A subclass whose name Ray shows for the stage."""
    return type(name, (cls,), {"__module__": cls.__module__})


def ray_env_vars() -> dict[str, str]:
    """The environment errata gives Ray's workers (and so the engines): its defaults, where this process's
    environment does not set them (a user's VLLM_CPU_NUM_OF_RESERVED_CPU=1 holds on Ray as it does in process),
    and the CPU caps that decide the dtype."""
    env = {k: os.environ.get(k, v) for k, v in RAY_ENV_VARS.items()}
    env.update({k: os.environ[k] for k in CPU_CAP_VARS if os.environ.get(k)})
    return env


def start_ray(address: Optional[str], num_cpus: Optional[int]) -> bool:
    """Connect to (or start) Ray unless this process already did; True if this call started it. Workers' output is
    forwarded to this process (and so, in quiet mode, into the run's log file)."""
    import ray
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "runtime_env": {"env_vars": ray_env_vars()},
                              "log_to_driver": True}
    if address:
        _check_reachable(address)
        kwargs["address"] = address
    else:
        if num_cpus:
            kwargs["num_cpus"] = num_cpus
        # Ray starts its workers at nice 15. Beside a running engine (nice 0, busy on every core) a niced worker
        # barely gets the CPU: two of an LLM stage's four workers were still importing 12 s after the engine came
        # up (2-core box), and CPU stages' checkers hit their deadlines. The build's workers do little in steady
        # state: run them at normal priority.
        kwargs["_system_config"] = {"worker_niceness": 0}
    before = signal.getsignal(signal.SIGTERM)
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        hint = (" If the cluster uses token authentication, set RAY_AUTH_MODE=token and make the token "
                "available (~/.ray/auth_token or RAY_AUTH_TOKEN)." if "auth" in str(e).lower() else "")
        raise ConfigError(f"cannot start or reach {where}: {str(e).splitlines()[0][:300]}.{hint}") from e
    if callable(before) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, before)   # ray.init replaces a SIGTERM handler the program had set
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False     # errata shows its own progress (rows, sequences, tokens/s)
    ctx.verbose_progress = False
    # Ray Data polls each map call's memory once a second in a thread; errata's calls are whole shards and
    # every wakeup on the engine's cores costs the engine (its CPU threads sync at barriers)
    ctx.memory_usage_poll_interval_s = None
    # Ray Data's high-memory detector warned every 30 s that each (fused) map worker uses ~135 MiB while Ray
    # "requests 0.0B" (a 1,024-sequence build's log held a dozen of these multi-line warnings): errata's workers
    # hold one shard at a time and the engines' memory is their own, so the warning is noise in the run's log
    ctx.issue_detectors_config.high_memory_detector_config.detection_time_interval_s = -1
    # a stage's own error (an ErrataError: EngineUnavailable, StageError) must reach the driver as itself: Ray Data's
    # UserCodeException wrapper keeps it only as traceback text (its cause does not survive the trip), and a build
    # whose OpenAI-compatible server stayed down printed "error: StopIteration:" instead of the outage
    ctx.raise_original_map_exception = True
    return True


def segments(stages: list[Stage], fuse: bool) -> list[list[Stage]]:
    """How a run's stages map onto Ray Data actors. Unfused: one actor pool per stage. Fused: a new actor starts at
    each LLM stage and also runs the CPU stages after it, up to the next LLM stage; CPU stages before the first
    LLM stage run in that first actor too. Same checkpoints and output either way: fusing only saves the Ray
    processes and operators that CPU stages would otherwise cost."""
    if not fuse:
        return [[st] for st in stages]
    out: list[list[Stage]] = []
    for st in stages:
        if out and (st.role is None or all(x.role is None for x in out[-1])):
            out[-1].append(st)
        else:
            out.append([st])
    return out


class RayRunner:
    def __init__(self, shards_in_flight: int = 4, cpu_stage_concurrency: int = 1, fuse_stages: bool = False):
        self.shards_in_flight = shards_in_flight
        self.cpu_stage_concurrency = cpu_stage_concurrency
        self.fuse_stages = fuse_stages

    def resources(self, segment: list[Stage], shards: Optional[int] = None) -> dict[str, Any]:
        """Actor pool size, calls at once per actor and per-actor CPUs. A segment with an LLM stage only waits on
        the shared engine (it holds no model): ONE actor runs `shards_in_flight` shards at once in threads (as
        LocalRunner does), so several shards' requests share the engine's batch without one process per shard;
        every extra process steals cycles from the engine's CPU threads. CPU segments get a quarter CPU per
        actor. Never more than there are shards."""
        cap = max(1, shards) if shards is not None else 10 ** 9
        if any(st.role is not None for st in segment):
            return {"actors": 1, "calls": min(self.shards_in_flight, cap), "num_cpus": 0.01}
        return {"actors": min(self.cpu_stage_concurrency, cap), "calls": 1, "num_cpus": 0.25}

    def run(self, shard_ids: list[int], shards_total: int, stages: list[Stage], stages_before: list[str],
            staging: Staging, engines: Any, progress: bool = True) -> Iterator[dict]:
        """One Ray Data run: shards -> each segment (an actor pool) -> back to the driver as small stats rows."""
        import ray.data
        tables = sorted({t for st in stages for t in [*st.reads, *st.writes]})
        items = _payload_table({"shard_id": list(shard_ids), "stats": ["{}"] * len(shard_ids),
                                **{f"t_{t}": [None] * len(shard_ids) for t in tables}}, tables)
        ds = ray.data.from_arrow([items.slice(i, 1) for i in range(items.num_rows)])
        before = list(stages_before)
        parts = segments(stages, self.fuse_stages)
        for seg in parts:
            res = self.resources(seg, len(shard_ids))
            ds = ds.map_batches(
                _named(_SegmentUDF, "_".join(st.name.title().replace("_", "") for st in seg)),
                fn_constructor_args=(seg, staging, shards_total, list(before), engines, tables,
                                     seg is not parts[-1]),
                batch_size=1, batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=res["actors"], max_concurrent_calls_per_actor=res["calls"],
                                                   enable_true_multi_threading=res["calls"] > 1),
                num_cpus=res["num_cpus"])
            before += [st.name for st in seg]
        # The last segment hands no tables on, so no projection is needed here: a projection is one more Ray Data
        # operator whose tasks each reserve a whole CPU, and on a small machine that reservation starved the LLM
        # stage of its CPU budget (measured when it ran 4 actors: only 2 started; the engine's batch drained).
        try:
            for row in ds.iter_rows():
                yield {"shard_id": row["shard_id"], "stats": json.loads(row["stats"])}
        except Exception as e:
            from pipelines.engines import _unwrap
            inner = _unwrap(e)
            if isinstance(inner, ErrataError) and inner is not e:
                raise _without_retry_note(inner) from None   # errata's own error, not Ray's wrapper of its actor
            raise


_RAY_RETRY_NOTE = re.compile(r"\nFailed to .{0,80} after \d+/\d+ attempts \(total backoff [\d.]+s\)\.(\n.*)*\Z")


def _without_retry_note(e: BaseException) -> BaseException:
    """Ray Data appends "Failed to apply UDF transform after 1/1 attempts ..." and a paragraph on its retry settings
    to the message of an error a map task raised; errata's error is shown as it was raised."""
    if e.args and isinstance(e.args[0], str):
        e.args = (_RAY_RETRY_NOTE.sub("", e.args[0]),) + e.args[1:]
    return e

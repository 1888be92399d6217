"""Flow runs whose process is gone: no `Running` run in the history after its build was killed or its machine lost.

A build that is killed outright (kill -9, the OOM killer, a lost machine) never reports its end, so its flow run
would stay `Running` forever. Prefect's own remedy (flow-run heartbeats and an automation that marks a run Crashed
when they stop) needs a server that runs all along; errata's builds mostly run against a temporary server that
exists only while a build runs. So errata checks the process itself:

- When a build or export flow run starts, it records its process on the run, as Prefect flow-run labels
  (`errata.host`, `errata.pid`, `errata.pid_start`, and on Linux `errata.boot_id` and `errata.pid_ns`). The start
  time is the kernel's (clock ticks since boot, on Linux), so a pid reused by another process is not taken for the
  build, and a clock change does not make a live build look gone.
- `errata runs`, `errata runs show`, the start of every build flow and `errata serve` look at the runs still
  `Running` or `Pending`: one whose recorded process no longer exists on this host (or exists only as an unreaped
  zombie, or is another process with the same pid, or was started before this machine's last boot) is set to
  `Crashed` through Prefect's API, with the message "build process <pid> on <host> is gone (killed or lost)".
  Prefect's orchestration rules accept that only from a non-final state, so a run that has just finished keeps its
  state. The run's last sign of life (its latest event: Prefect's flow-run heartbeat, which errata turns on every
  30 s by default, or a state change) is kept as the label `errata.last_seen`: `errata runs` shows the duration up
  to it, not up to when errata noticed.
- A run recorded on another host (or in another pid namespace, e.g. another container) cannot be checked from
  here and is left alone; that host's next `errata runs` or build marks it. So is a run with no record (killed
  before its flow body started, or started by an older errata).
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import sys
from dataclasses import dataclass
from typing import Callable, Optional

LABEL_HOST = "errata.host"
LABEL_PID = "errata.pid"
LABEL_START = "errata.pid_start"
LABEL_BOOT = "errata.boot_id"
LABEL_PID_NS = "errata.pid_ns"
LABEL_LAST_SEEN = "errata.last_seen"   # set when errata marks the run Crashed
PAGE = 200                # runs per request: the most Prefect's API returns
CTIME_TOLERANCE_S = 1.0   # where only a wall-clock start time is known (not Linux)


@dataclass(frozen=True)
class ProcessId:
    """What identifies a process across time: host, pid and when it started (plus, on Linux, the boot and pid
    namespace it belongs to). `start` is `ticks:<clock ticks since boot>` on Linux, else `ctime:<epoch seconds>`."""
    host: str
    pid: int
    start: str
    boot: str = ""
    pid_ns: str = ""

    def labels(self) -> dict[str, str | int]:
        d: dict[str, str | int] = {LABEL_HOST: self.host, LABEL_PID: self.pid, LABEL_START: self.start}
        if self.boot:
            d[LABEL_BOOT] = self.boot
        if self.pid_ns:
            d[LABEL_PID_NS] = self.pid_ns
        return d

    @classmethod
    def from_labels(cls, labels: Optional[dict]) -> Optional["ProcessId"]:
        labels = labels or {}
        try:
            return cls(host=str(labels[LABEL_HOST]), pid=int(labels[LABEL_PID]), start=str(labels[LABEL_START]),
                       boot=str(labels.get(LABEL_BOOT) or ""), pid_ns=str(labels.get(LABEL_PID_NS) or ""))
        except (KeyError, TypeError, ValueError):
            return None


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _boot_id() -> str:
    return _read("/proc/sys/kernel/random/boot_id")


def _pid_ns() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _start_of(pid: int) -> Optional[str]:
    """The start of process `pid` as recorded in ProcessId.start; None if there is no such process or it has
    exited and only waits to be reaped (a zombie)."""
    if pid <= 0:
        return None
    if sys.platform.startswith("linux") and os.path.isdir("/proc/self"):
        stat = _read(f"/proc/{pid}/stat")
        if not stat:
            return None
        fields = stat[stat.rfind(")") + 2:].split()   # after "pid (comm) ": field 3 (state) onwards
        if not fields or fields[0] in ("Z", "X"):
            return None
        return f"ticks:{fields[19]}"                  # field 22: starttime
    try:
        import psutil
        p = psutil.Process(pid)
        if p.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            return None
        return f"ctime:{p.create_time():.2f}"
    except Exception:
        return None


def process_identity(pid: Optional[int] = None) -> ProcessId:
    """This process (or `pid`, a process on this host that is running) as a ProcessId."""
    pid = os.getpid() if pid is None else pid
    start = _start_of(pid)
    if start is None:
        raise ProcessLookupError(f"no running process {pid}")
    return ProcessId(host=socket.gethostname(), pid=pid, start=start, boot=_boot_id(), pid_ns=_pid_ns())


def is_gone(p: ProcessId, here: Optional[ProcessId] = None) -> Optional[bool]:
    """True if the process `p` no longer runs, False if it still does, None if that cannot be told from here
    (another host, another pid namespace)."""
    here = here or process_identity()
    if p.host != here.host:
        return None
    if p.boot and here.boot and p.boot != here.boot:
        return True                       # recorded before this machine's last boot
    if p.pid_ns and here.pid_ns and p.pid_ns != here.pid_ns:
        return None                       # another container on this host: its pids are not ours
    now = _start_of(p.pid)
    if now is None:
        return True
    if now == p.start:
        return False
    kind, _, value = p.start.partition(":")
    now_kind, _, now_value = now.partition(":")
    if kind == now_kind == "ctime":
        try:
            return abs(float(now_value) - float(value)) > CTIME_TOLERANCE_S
        except ValueError:
            return None
    return True                           # the pid belongs to another process now


# --- on the flow runs ---------------------------------------------------------------------------------------------
def record_this_process(log: Optional[Callable[[str], None]] = None) -> bool:
    """Record this process on the current flow run (no-op outside one). A failure (e.g. a shared server too old
    for flow-run labels) is logged, not raised: the run then cannot be marked Crashed should its process die."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run
    run_id = flow_run.id
    if not run_id:
        return False
    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run_labels(run_id, process_identity().labels())
        return True
    except Exception as e:  # noqa: BLE001
        if log:
            log(f"could not record this process on flow run {run_id}: {type(e).__name__}: {e}")
        return False


def lost_message(flow_name: str, p: ProcessId) -> str:
    what = flow_name.removeprefix("errata-") if flow_name.startswith("errata-") else "flow"
    return f"{what} process {p.pid} on {p.host} is gone (killed or lost)"


def _last_seen(client, fr, tasks) -> Optional[dt.datetime]:
    """The last sign of life of a flow run: its latest event (its heartbeats, every
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY seconds, its own and its task runs' state changes), else its latest state or
    task-run state. A Crashed state's time is when errata noticed the process was gone, maybe much later."""
    times = [fr.start_time, fr.state.timestamp if fr.state else None]
    for t in tasks:
        times += [t.start_time, t.end_time, t.state.timestamp if t.state else None]
    try:
        from prefect.events.filters import EventAnyResourceFilter, EventFilter, EventOccurredFilter
        since = fr.start_time or fr.expected_start_time or fr.created
        page = client.read_events(EventFilter(any_resource=EventAnyResourceFilter(id=[f"prefect.flow-run.{fr.id}"]),
                                              occurred=EventOccurredFilter(since=since)), limit=1)
        times += [e.occurred for e in page.events]
    except Exception:  # noqa: BLE001  (a server without the events API: the states are enough)
        pass
    times = [t for t in times if t is not None]
    return max(times) if times else None


def last_seen(labels: Optional[dict]) -> Optional[dt.datetime]:
    """When a run that errata marked Crashed was last known to run (None for any other run)."""
    try:
        return dt.datetime.fromisoformat(str((labels or {})[LABEL_LAST_SEEN]))
    except (KeyError, ValueError):
        return None


def mark_lost_runs(flow_names: Optional[list[str]] = None, log: Optional[Callable[[str], None]] = None,
                   limit: int = 1000) -> list[str]:
    """Set every Running or Pending run of errata's flows whose recorded process is gone on this host to Crashed
    (and its Running or Pending task runs with it). Returns the ids of the runs marked."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.filters import FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.responses import SetStateStatus
    from prefect.states import Crashed

    from flows.tags import FLOW_NAMES
    names = flow_names or FLOW_NAMES
    open_states = [StateType.RUNNING, StateType.PENDING]
    here = process_identity()
    marked: list[str] = []
    with get_client(sync_client=True) as client:
        flows = {f.id: f.name for f in client.read_flows(flow_filter=FlowFilter(name=FlowFilterName(any_=names)))}
        if not flows:
            return marked
        runs: list = []
        while len(runs) < limit:          # the API gives at most 200 a page
            page = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=names)),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=open_states))),
                limit=min(PAGE, limit - len(runs)), offset=len(runs))
            runs += page
            if len(page) < PAGE:
                break
        for fr in runs:
            who = ProcessId.from_labels(fr.labels)
            if who is None or is_gone(who, here) is not True:
                continue
            msg = lost_message(flows.get(fr.flow_id, ""), who)
            tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[fr.id])))
            seen = _last_seen(client, fr, tasks)
            result = client.set_flow_run_state(fr.id, Crashed(message=msg))
            if result.status != SetStateStatus.ACCEPT:
                continue                  # it reached a final state meanwhile
            marked.append(str(fr.id))
            if seen is not None:
                client.update_flow_run_labels(fr.id, {LABEL_LAST_SEEN: seen.isoformat()})
            if log:
                log(f"run {fr.name} ({str(fr.id)[:8]}) marked Crashed: {msg}")
            for t in tasks:
                if t.state and t.state.type in open_states:
                    client.set_task_run_state(t.id, Crashed(message=msg))
    return marked


def mark_lost_runs_quietly(log: Optional[Callable[[str], None]] = None) -> list[str]:
    """mark_lost_runs, but a failure is only logged: looking after other runs never stops a build or a listing."""
    try:
        return mark_lost_runs(log=log)
    except Exception as e:  # noqa: BLE001
        (log or logging.getLogger("errata.runs").warning)(
            f"could not check for runs whose process is gone: {type(e).__name__}: {e}")
        return []

"""Run history: errata's flow runs as the Prefect API records them.

Reads from PREFECT_API_URL when set, else from the server `errata serve` started, else from the project-local
database through a temporary server (a few seconds to start). Before reading, a Running or Pending run whose
recorded process is gone on this host (a build killed with kill -9, a lost machine) is marked Crashed
(flows/lost_runs.py).
"""
from __future__ import annotations

from flows._env import prefect_env

prefect_env()

import datetime as dt  # noqa: E402
import re  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any, Callable, Optional  # noqa: E402

from flows.lost_runs import last_seen  # noqa: E402
from flows.tags import FLOW_NAMES  # noqa: E402
from schemas.errors import ConfigError  # noqa: E402


@dataclass
class RunInfo:
    id: str
    name: str
    flow: str
    state: str
    recipe: Optional[str]
    dataset: Optional[str]
    version: Optional[str]
    schedule: Optional[str]
    started: Optional[dt.datetime]
    seconds: Optional[float]
    error: Optional[str]
    last_seen: Optional[dt.datetime] = None   # a run errata marked Crashed: when its process was last known to run
    parameters: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    artifacts: list[dict] = field(default_factory=list)
    tasks: list[dict] = field(default_factory=list)


def _tag(tags: list[str], prefix: str) -> Optional[str]:
    for t in tags:
        if t.startswith(prefix + ":"):
            return t.split(":", 1)[1]
    return None


def _info(fr, flow_names: dict) -> RunInfo:
    tags = list(fr.tags or [])
    st = fr.state
    state = st.name if st else "?"
    secs = fr.total_run_time.total_seconds() if fr.total_run_time else None
    if fr.start_time and fr.end_time:
        secs = (fr.end_time - fr.start_time).total_seconds()
    elif fr.start_time and st and not st.is_final():
        secs = (dt.datetime.now(dt.timezone.utc) - fr.start_time).total_seconds()
    params = dict(fr.parameters or {})
    recipe = _tag(tags, "recipe") or params.get("recipe") or (params.get("config") or {}).get("dataset")
    error = None
    if st and (st.is_failed() or st.is_crashed() or st.is_cancelled()):
        error = (st.message or "").strip() or state
    seen = last_seen(getattr(fr, "labels", None)) if st and st.is_crashed() else None
    if seen and fr.start_time:   # its end_time is when errata noticed the process was gone, maybe much later
        secs = max(0.0, (seen - fr.start_time).total_seconds())
    return RunInfo(id=str(fr.id), name=fr.name, flow=flow_names.get(fr.flow_id, "?"), state=state,
                   recipe=recipe, dataset=_tag(tags, "dataset"),
                   version=_tag(tags, "version") or _tag(tags, "source"), schedule=_tag(tags, "schedule"),
                   started=fr.start_time or fr.expected_start_time, seconds=secs, error=error,
                   last_seen=seen, parameters=params, tags=tags)


def list_runs(limit: int = 20, mark_lost: bool = True, log: Optional[Callable[[str], None]] = None) -> list[RunInfo]:
    """The latest runs of errata's flows, newest first (after marking the runs whose process is gone Crashed)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterState
    from prefect.client.schemas.filters import FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort
    not_scheduled = [t for t in StateType if t != StateType.SCHEDULED]
    if mark_lost:
        from flows.lost_runs import mark_lost_runs_quietly
        mark_lost_runs_quietly(log=log)
    with get_client(sync_client=True) as client:
        flows = client.read_flows(flow_filter=FlowFilter(name=FlowFilterName(any_=FLOW_NAMES)))
        names = {f.id: f.name for f in flows}
        if not names:
            return []
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=FLOW_NAMES)),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=not_scheduled))),
            sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=limit)
        return [_info(fr, names) for fr in runs]


def show_run(run_id: str, mark_lost: bool = True, log: Optional[Callable[[str], None]] = None) -> RunInfo:
    """One run by id or unique id prefix, with its artifacts and task runs."""
    import uuid

    if mark_lost:
        from flows.lost_runs import mark_lost_runs_quietly
        mark_lost_runs_quietly(log=log)

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter
    from prefect.client.schemas.filters import FlowRunFilterId
    from prefect.exceptions import ObjectNotFound
    with get_client(sync_client=True) as client:
        fr = None
        try:
            fr = client.read_flow_run(uuid.UUID(run_id))
        except (ValueError, ObjectNotFound):
            matches = [r for r in list_runs(limit=200, mark_lost=False) if r.id.startswith(run_id.lower())]
            if len(matches) > 1:
                raise ConfigError(f"run id prefix '{run_id}' is ambiguous: "
                                  + ", ".join(m.id[:12] for m in matches[:5])) from None
            if matches:
                fr = client.read_flow_run(uuid.UUID(matches[0].id))
        if fr is None:
            raise ConfigError(f"no errata flow run '{run_id}' (see `errata runs`)")
        flow = client.read_flow(fr.flow_id)
        info = _info(fr, {fr.flow_id: flow.name})
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[fr.id])))
        info.artifacts = [{"key": a.key, "type": a.type, "description": a.description, "data": a.data}
                          for a in arts]
        trs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[fr.id])))
        info.tasks = [{"name": t.name, "state": t.state.name if t.state else "?",
                       "attempts": t.run_count, "seconds": t.total_run_time.total_seconds(),
                       "message": (t.state.message if t.state and (t.state.is_failed() or t.state.is_crashed())
                                   else None)}
                      for t in sorted(trs, key=lambda t: t.expected_start_time or dt.datetime.min.replace(
                          tzinfo=dt.timezone.utc))]
        return info


def short_error(msg: Optional[str], n: int = 80) -> str:
    if not msg:
        return ""
    msg = re.sub(r"^(Flow|Task) run encountered an exception[.:]\s*", "", msg.strip())
    return msg.splitlines()[0][:n] if msg else ""

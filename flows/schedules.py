"""Schedules: scheduled builds and exports, served as Prefect deployments.

Where schedules live:
- `flows/schedules.yaml` (in the repo, versioned with the code): the team's schedules. Edit the file to change
  them; `errata schedule pause|resume NAME` records a local pause state for them, `remove` refuses.
- `<data root>/schedules.local.yaml`: schedules added with `errata schedule add`, and pause states.
- The Prefect server: `errata serve` registers every schedule of both files as a deployment (flow `errata-build`
  or `errata-export`, deployment name = schedule name) and executes their runs; while it runs it re-reads both
  files every few seconds, so schedules added or removed meanwhile take effect without a restart. When a server
  is reachable (PREFECT_API_URL, or the one `errata serve` started), add/pause/resume/remove also act on its
  deployments at once.

Every schedule is validated before anything is written or registered: its cron expression (croniter, as Prefect
uses it) or interval (`90s`, `30m`, `6h`, `1d`, combinations like `1h30m`), its recipe and every `--set` key
(loaded through `load_recipe`), or its export format and ref. Invalid input raises ConfigError.
"""
from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipelines.config import read_yaml_mapping
from schemas.errors import ConfigError

REPO_SCHEDULES = Path(__file__).parent / "schedules.yaml"
LOCAL_FILE = "schedules.local.yaml"
_EVERY_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class ScheduleSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., pattern=r"^[a-z0-9][a-z0-9_-]*$", description="schedule (deployment) name")
    kind: Literal["build", "export"] = Field("build", description="build a recipe, or export a version")
    recipe: Optional[str] = Field(None, description="build: recipe name or YAML path")
    set: list[str] = Field(default_factory=list, description="build: recipe overrides key=value")
    ref: Optional[str] = Field(None, description="export: DATASET (latest version) or DATASET@N")
    format: Optional[str] = Field(None, description="export: sft or dpo (the version's method picks the export), "
                                                     "or a registered export name")
    out: Optional[str] = Field(None, description="export: output directory (one subdirectory per version)")
    jsonl: bool = Field(False, description="export: also write JSONL")
    cron: Optional[str] = Field(None, description="cron expression, e.g. '0 3 * * *'")
    every: Optional[str] = Field(None, description="interval, e.g. 6h, 30m, 90s, 1d")
    timezone: Optional[str] = Field(None, description="cron time zone (default UTC)")
    paused: bool = Field(False, description="registered but not running")
    description: str = Field("", description="free text")

    @property
    def flow_name(self) -> str:
        return "errata-build" if self.kind == "build" else "errata-export"

    @property
    def when(self) -> str:
        return f"cron '{self.cron}'" + (f" {self.timezone}" if self.timezone else "") if self.cron \
            else f"every {self.every}"

    @property
    def what(self) -> str:
        if self.kind == "build":
            return f"build {self.recipe}" + "".join(f" --set {s}" for s in self.set)
        return f"export {self.ref} as {self.format} to {self.out}"

    def parameters(self) -> dict[str, Any]:
        if self.kind == "build":
            return {"recipe": self.recipe, "overrides": list(self.set)}
        return {"ref": self.ref, "format": self.format, "out": self.out, "jsonl": self.jsonl}


def parse_every(text: str | int | float) -> float:
    """'90s' -> 90, '30m' -> 1800, '6h' -> 21600, '1h30m' -> 5400, '45' -> 45 (seconds)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        secs = float(text)
    else:
        s = str(text).strip().lower().replace(" ", "")
        if re.fullmatch(r"\d+(\.\d+)?", s):
            secs = float(s)
        elif s and _EVERY_RE.sub("", s) == "" and _EVERY_RE.search(s):
            secs = sum(float(n) * _UNITS[u] for n, u in _EVERY_RE.findall(s))
        else:
            raise ConfigError(f"invalid interval '{text}': use e.g. 90s, 30m, 6h, 1d or 1h30m")
    if secs < 1:
        raise ConfigError(f"invalid interval '{text}': must be at least 1 second")
    return secs


def check_cron(expr: str) -> None:
    from prefect._vendor.croniter import croniter
    if len(expr.split()) not in (5, 6) or not croniter.is_valid(expr):
        raise ConfigError(f"invalid cron expression '{expr}' (expected 5 fields, e.g. '0 3 * * *')")


def validate_spec(spec: ScheduleSpec) -> ScheduleSpec:
    """Check everything that can be checked before registering: timing, recipe and overrides, export args."""
    if bool(spec.cron) == bool(spec.every):
        raise ConfigError(f"schedule '{spec.name}': give exactly one of --cron or --every")
    try:
        if spec.cron:
            check_cron(spec.cron)
        else:
            parse_every(spec.every)
    except ConfigError as e:
        raise ConfigError(f"schedule '{spec.name}': {e}") from None
    if spec.cron and spec.timezone:
        import zoneinfo
        try:
            zoneinfo.ZoneInfo(spec.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"schedule '{spec.name}': unknown time zone '{spec.timezone}'") from None
    if spec.kind == "build":
        if not spec.recipe:
            raise ConfigError(f"schedule '{spec.name}': a build schedule needs --recipe")
        if spec.ref or spec.format or spec.out:
            raise ConfigError(f"schedule '{spec.name}': --export/--format/--out belong to export schedules")
        from pipelines.config import load_recipe
        try:
            load_recipe(spec.recipe, spec.set)
        except ConfigError as e:
            raise ConfigError(f"schedule '{spec.name}': {e}") from None
    else:
        if spec.recipe or spec.set:
            raise ConfigError(f"schedule '{spec.name}': --recipe/--set belong to build schedules")
        missing = [n for n in ("ref", "format", "out") if not getattr(spec, n)]
        if missing:
            raise ConfigError(f"schedule '{spec.name}': an export schedule needs "
                              + ", ".join(f"--{'export' if n == 'ref' else n}" for n in missing))
        from pipelines.catalog import parse_ref
        from pipelines.export import known_formats
        if spec.format not in known_formats():
            raise ConfigError(f"schedule '{spec.name}': unknown export format '{spec.format}' "
                              f"(known: {', '.join(known_formats())})")
        try:
            name, _ = parse_ref(spec.ref)
        except Exception as e:
            raise ConfigError(f"schedule '{spec.name}': {e}") from None
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise ConfigError(f"schedule '{spec.name}': bad dataset name in '{spec.ref}'")
    return spec


def add_schedule(data: dict, book: "ScheduleBook", replace: bool = False) -> tuple["ScheduleSpec", bool]:
    """Validate, record in the local schedule file, register on the configured server (if any).
    Nothing is written or registered when the input is invalid (ConfigError)."""
    spec = make_spec({k: v for k, v in data.items() if v is not None}, source=f"schedule '{data.get('name')}'")
    book.add(spec, replace=replace)
    return spec, apply_to_server(spec, spec.name, "add")


def make_spec(data: dict, source: str = "schedule") -> ScheduleSpec:
    try:
        spec = ScheduleSpec.model_validate(data)
    except ValidationError as e:
        msgs = "; ".join(f"{'.'.join(str(x) for x in err['loc']) or 'schedule'}: {err['msg']}"
                         for err in e.errors())
        raise ConfigError(f"{source}: {msgs}") from None
    return validate_spec(spec)


# --- files ----------------------------------------------------------------------------------------------------
def _read_yaml(path: Path) -> dict:
    if not path.exists():
        return {}
    return read_yaml_mapping(path, "expected a mapping with a 'schedules' list")


def load_file(path: Path) -> list[ScheduleSpec]:
    data = _read_yaml(path)
    items = data.get("schedules") or []
    if not isinstance(items, list):
        raise ConfigError(f"{path}: 'schedules' must be a list")
    specs, seen = [], set()
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ConfigError(f"{path}: schedule #{i + 1} is not a mapping")
        spec = make_spec(item, source=f"{path}: schedule '{item.get('name', i + 1)}'")
        if spec.name in seen:
            raise ConfigError(f"{path}: schedule '{spec.name}' defined twice")
        seen.add(spec.name)
        specs.append(spec)
    return specs


class ScheduleBook:
    """The repo file plus the local state file under the data root."""

    def __init__(self, data: str | None = None, repo_file: Path | str | None = REPO_SCHEDULES):
        root = data or os.environ.get("ERRATA_DATA") or "data"
        self.local_file = Path(root, LOCAL_FILE)
        self.repo_file = Path(repo_file) if repo_file else None

    def _local(self) -> dict:
        d = _read_yaml(self.local_file)
        d.setdefault("schedules", [])
        d.setdefault("paused", {})
        return d

    def _write_local(self, d: dict) -> None:
        self.local_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.local_file.with_suffix(".tmp")
        tmp.write_text("# errata schedules added with `errata schedule add` (and pause states). "
                       "Managed by errata.\n" + yaml.safe_dump(d, sort_keys=False))
        os.replace(tmp, self.local_file)

    def repo_specs(self) -> list[ScheduleSpec]:
        return load_file(self.repo_file) if self.repo_file else []

    def local_specs(self) -> list[ScheduleSpec]:
        return load_file(self.local_file)

    def all(self) -> list[tuple[ScheduleSpec, str]]:
        """Every schedule with its source ('repo' or 'local'), pause states applied."""
        paused = self._local()["paused"]
        out = []
        for spec, src in [(s, "repo") for s in self.repo_specs()] + [(s, "local") for s in self.local_specs()]:
            if spec.name in paused:
                spec = spec.model_copy(update={"paused": bool(paused[spec.name])})
            out.append((spec, src))
        return out

    def get(self, name: str) -> tuple[ScheduleSpec, str]:
        for spec, src in self.all():
            if spec.name == name:
                return spec, src
        raise ConfigError(f"no schedule named '{name}' (see `errata schedule list`)")

    def add(self, spec: ScheduleSpec, replace: bool = False) -> None:
        validate_spec(spec)
        if any(s.name == spec.name for s in self.repo_specs()):
            raise ConfigError(f"schedule '{spec.name}' is defined in {self.repo_file}; pick another name")
        d = self._local()
        exists = any(s.get("name") == spec.name for s in d["schedules"])
        if exists and not replace:
            raise ConfigError(f"schedule '{spec.name}' exists; remove it first or use --replace")
        d["schedules"] = [s for s in d["schedules"] if s.get("name") != spec.name]
        d["schedules"].append(spec.model_dump(exclude_defaults=True))
        d["paused"].pop(spec.name, None)
        self._write_local(d)

    def set_paused(self, name: str, paused: bool) -> ScheduleSpec:
        spec, _ = self.get(name)
        d = self._local()
        d["paused"][name] = paused
        self._write_local(d)
        return spec.model_copy(update={"paused": paused})

    def remove(self, name: str) -> ScheduleSpec:
        spec, src = self.get(name)
        if src == "repo":
            raise ConfigError(f"schedule '{name}' is defined in {self.repo_file}: delete it there "
                              f"(or `errata schedule pause {name}`)")
        d = self._local()
        d["schedules"] = [s for s in d["schedules"] if s.get("name") != name]
        d["paused"].pop(name, None)
        self._write_local(d)
        return spec

    def signature(self) -> tuple:
        """Changes when either file changes (serve polls it)."""
        def sig(p: Path | None):
            try:
                st = p.stat()  # type: ignore[union-attr]
                return (st.st_mtime_ns, st.st_size)
            except (OSError, AttributeError):
                return None
        return sig(self.repo_file), sig(self.local_file)


# --- Prefect deployments --------------------------------------------------------------------------------------
def _deployment_args(spec: ScheduleSpec):
    from prefect.deployments.runner import EntrypointType
    if spec.kind == "build":
        from flows.build import build_flow as fl
    else:
        from flows.export import export_flow as fl
    timing: dict[str, Any]
    if spec.cron:
        from prefect.schedules import Cron
        timing = {"schedule": Cron(spec.cron, timezone=spec.timezone or "UTC")}
    else:
        timing = {"interval": dt.timedelta(seconds=parse_every(spec.every))}
    return fl, dict(
        name=spec.name, paused=spec.paused, parameters=spec.parameters(), tags=["errata", f"schedule:{spec.name}"],
        description=spec.description or f"errata schedule: {spec.what}, {spec.when}",
        entrypoint_type=EntrypointType.MODULE_PATH, **timing)


def to_deployment(spec: ScheduleSpec):
    """The Prefect RunnerDeployment of a schedule (not yet registered). Sync callers only."""
    fl, kw = _deployment_args(spec)
    return fl.to_deployment(**kw)


async def ato_deployment(spec: ScheduleSpec):
    """`to_deployment` for code running in an event loop (Prefect dispatches on the caller's context)."""
    fl, kw = _deployment_args(spec)
    return await fl.ato_deployment(**kw)


def server_configured() -> bool:
    """A Prefect server is configured (PREFECT_API_URL, in the environment or in Prefect's settings)."""
    if os.environ.get("PREFECT_API_URL"):
        return True
    from prefect.settings import PREFECT_API_URL
    return bool(PREFECT_API_URL.value())


def server_deployment_states() -> dict[str, dict] | None:
    """{schedule name: {paused, next_run}} for errata deployments on the configured server, or None if no server
    is configured (never starts a temporary one)."""
    if not server_configured():
        return None
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (DeploymentFilter, DeploymentFilterId, DeploymentFilterTags,
                                                FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType)
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort
    out: dict[str, dict] = {}
    with get_client(sync_client=True) as client:
        deps = client.read_deployments(deployment_filter=DeploymentFilter(tags=DeploymentFilterTags(all_=["errata"])))
        for d in deps:
            nxt = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[d.id])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))),
                sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=1)
            out[d.name] = {"id": str(d.id), "paused": d.paused,
                           "next_run": nxt[0].expected_start_time if nxt else None}
    return out


def apply_to_server(spec: ScheduleSpec | None, name: str, action: str) -> bool:
    """Mirror a change on the configured server's deployment right away. Returns whether a server was there."""
    if not server_configured():
        return False
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    flows = [spec.flow_name] if spec else ["errata-build", "errata-export"]
    if action == "add":
        to_deployment(spec).apply()
        return True
    with get_client(sync_client=True) as client:
        for fl in flows:
            try:
                d = client.read_deployment_by_name(f"{fl}/{name}")
            except ObjectNotFound:
                continue
            if action == "pause":
                client.pause_deployment(d.id)
            elif action == "resume":
                client.resume_deployment(d.id)
            elif action == "remove":
                client.delete_deployment(d.id)
    return True

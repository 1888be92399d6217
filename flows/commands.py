"""Prefect-backed subcommands of the `errata` CLI: schedule, serve, runs. Thin: parse, call flows/, print.

    errata schedule add NAME --recipe R [--set KEY=VALUE ...] (--cron "0 3 * * *" [--timezone TZ] | --every 6h)
    errata schedule add NAME --export DATASET[@N] --format sft|dpo --out DIR [--jsonl] (--cron ... | --every ...)
    errata schedule list | pause NAME | resume NAME | remove NAME
    errata serve [--port P]
    errata runs [--limit N]
    errata runs show RUN_ID
"""
from __future__ import annotations

import json
import os


def _env(args) -> None:
    from flows._env import prefect_env
    prefect_env(args.data)


def _book(args):
    from flows.schedules import ScheduleBook
    return ScheduleBook(args.data)


def _table(cols, rows) -> None:
    from pipelines.console import print_table
    print_table(cols, rows)


def _when(t) -> str:
    if t is None:
        return ""
    return t.astimezone().strftime("%Y-%m-%d %H:%M:%S")


# --- schedule ---------------------------------------------------------------------------------------------------
def cmd_schedule_add(args) -> int:
    _env(args)
    from flows.schedules import add_schedule
    data = {"name": args.name, "kind": "export" if args.export else "build", "cron": args.cron,
            "every": args.every, "timezone": args.timezone, "paused": args.paused,
            "description": args.description or ""}
    if args.export:
        data.update(ref=args.export, format=args.format, out=os.path.abspath(args.out) if args.out else None,
                    jsonl=args.jsonl)
        if args.recipe or args.set:
            data.update(recipe=args.recipe, set=list(args.set or []))
    else:
        data.update(recipe=args.recipe, set=list(args.set or []))
        if args.format or args.out:
            data.update(format=args.format, out=args.out)
    spec, on_server = add_schedule(data, _book(args), replace=args.replace)
    print(f"added schedule {spec.name}: {spec.what}, {spec.when}{' (paused)' if spec.paused else ''}")
    print("registered on " + (f"the Prefect server at {_api()}" if on_server
                              else "`errata serve` (runs when it is running)"))
    return 0


def _api() -> str:
    import os
    from prefect.settings import PREFECT_API_URL
    return os.environ.get("PREFECT_API_URL") or str(PREFECT_API_URL.value())


def cmd_schedule_list(args) -> int:
    _env(args)
    from flows.schedules import server_deployment_states
    entries = _book(args).all()
    server = server_deployment_states()
    if not entries:
        print("no schedules (add one with `errata schedule add`, or in flows/schedules.yaml)")
        return 0
    rows = []
    for s, src in entries:
        st = (server or {}).get(s.name)
        state = "paused" if s.paused else "active"
        nxt = _when(st["next_run"]) if st and st.get("next_run") else ""
        reg = "" if server is None else ("yes" if st else "no")
        rows.append((s.name, src, s.kind, s.what, s.when, state, reg, nxt))
    _table(["name", "source", "kind", "what", "when", "state", "on_server", "next_run"], rows)
    if server is None:
        print("\n(no Prefect server running: `errata serve` registers and runs these)")
    return 0


def _set_paused(args, paused: bool) -> int:
    _env(args)
    from flows.schedules import apply_to_server
    spec = _book(args).set_paused(args.name, paused)
    apply_to_server(spec, spec.name, "pause" if paused else "resume")
    print(f"{'paused' if paused else 'resumed'} schedule {spec.name}")
    return 0


def cmd_schedule_pause(args) -> int:
    return _set_paused(args, True)


def cmd_schedule_resume(args) -> int:
    return _set_paused(args, False)


def cmd_schedule_remove(args) -> int:
    _env(args)
    from flows.schedules import apply_to_server
    spec = _book(args).remove(args.name)
    apply_to_server(spec, spec.name, "remove")
    print(f"removed schedule {spec.name}")
    return 0


# --- serve --------------------------------------------------------------------------------------------------------
def cmd_serve(args) -> int:
    from flows.serve import serve
    repo = None if args.no_repo_schedules else (args.schedules or "default")
    return serve(data=args.data, repo_file=repo, host=args.host, port=args.port, limit=args.limit)


# --- runs ---------------------------------------------------------------------------------------------------------
def _note(msg: str) -> None:
    """A run found Running whose process is gone, now marked Crashed (to stderr: stdout is the listing)."""
    import sys
    print(msg, file=sys.stderr)


def cmd_runs(args) -> int:
    _env(args)
    if getattr(args, "runs_cmd", None) == "show":
        return cmd_runs_show(args)
    from flows.runs import list_runs, short_error
    runs = list_runs(limit=args.limit, log=_note)
    if not runs:
        print("no errata flow runs yet")
        return 0
    rows = [(r.id[:8], r.flow.removeprefix("errata-"), r.state, r.recipe or "", _when(r.started),
             f"{r.seconds:.1f}s" if r.seconds is not None else "", r.version or "", short_error(r.error, 60))
            for r in runs]
    _table(["run", "flow", "state", "recipe", "started", "duration", "version", "error"], rows)
    return 0


def cmd_runs_show(args) -> int:
    from flows.runs import show_run
    r = show_run(args.run_id, log=_note)
    if args.json:
        d = {k: v for k, v in r.__dict__.items()}
        print(json.dumps(d, indent=2, default=str))
        return 0
    print(f"run       {r.id}  ({r.name})")
    print(f"flow      {r.flow}")
    print(f"state     {r.state}")
    print(f"recipe    {r.recipe or ''}")
    if r.schedule:
        print(f"schedule  {r.schedule}")
    print(f"started   {_when(r.started)}")
    print(f"duration  {f'{r.seconds:.1f} s' if r.seconds is not None else ''}"
          + (" (until its last sign of life)" if r.last_seen else ""))
    if r.last_seen:
        print(f"last seen {_when(r.last_seen)}")
    print(f"version   {r.version or ''}")
    print(f"tags      {', '.join(r.tags)}")
    params = {k: v for k, v in r.parameters.items() if k != "config"}
    if params:
        print(f"params    {json.dumps(params, default=str)}")
    if r.error:
        print(f"error     {r.error}")
    if r.tasks:
        print("tasks:")
        for t in r.tasks:
            print(f"  {t['name']:<24} {t['state']:<10} attempts={t['attempts']} {t['seconds']:.1f}s"
                  + (f"  {t['message']}" if t['message'] else ""))
    for a in r.artifacts:
        print(f"\n--- artifact {a['key']} ({a['type']}) ---\n{a['data']}")
    return 0


def register(sub) -> None:
    s = sub.add_parser("schedule", help="scheduled builds and exports (Prefect deployments)")
    ss = s.add_subparsers(dest="schedule_cmd", required=True)
    a = ss.add_parser("add", help="add a scheduled build (--recipe) or export (--export)",
                      description="Validated before anything is registered. Runs execute under `errata serve`.")
    a.add_argument("name", help="schedule name: lowercase letters, digits, - and _")
    a.add_argument("--recipe", help="build: recipe name or YAML path")
    a.add_argument("--set", action="append", metavar="KEY=VALUE", help="build: recipe override (repeatable)")
    a.add_argument("--export", metavar="DATASET[@N]", help="export: the dataset (latest version) or a version")
    a.add_argument("--format", help="export: sft, dpo, or a registered export name")
    a.add_argument("--out", help="export: output directory (a subdirectory per exported version)")
    a.add_argument("--jsonl", action="store_true", help="export: also write JSONL")
    when = a.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", help="cron expression, e.g. \"0 3 * * *\" (UTC unless --timezone)")
    when.add_argument("--every", help="interval: 90s, 30m, 6h, 1d, 1h30m")
    a.add_argument("--timezone", help="IANA time zone for --cron, e.g. Europe/Berlin")
    a.add_argument("--paused", action="store_true", help="add it paused")
    a.add_argument("--replace", action="store_true", help="replace an existing schedule of that name")
    a.add_argument("--description", help="free text")
    a.set_defaults(fn=cmd_schedule_add)
    ls = ss.add_parser("list", help="schedules, their state and next run")
    ls.set_defaults(fn=cmd_schedule_list)
    for name, fn, h in (("pause", cmd_schedule_pause, "stop scheduling runs"),
                        ("resume", cmd_schedule_resume, "schedule runs again"),
                        ("remove", cmd_schedule_remove, "delete a schedule added with `schedule add`")):
        p = ss.add_parser(name, help=h)
        p.add_argument("name")
        p.set_defaults(fn=fn)

    v = sub.add_parser("serve", help="run scheduled builds/exports (foreground; Ctrl-C stops)",
                       description="Serves every schedule as a Prefect deployment. Without PREFECT_API_URL it "
                                   "starts a local Prefect server (UI on the printed address) and stops it on exit.")
    v.add_argument("--host", default="127.0.0.1", help="local server host (when no PREFECT_API_URL)")
    v.add_argument("--port", type=int, help="local server port (default: a free one)")
    v.add_argument("--schedules", help="schedule file to serve instead of flows/schedules.yaml")
    v.add_argument("--no-repo-schedules", action="store_true", help="serve only `schedule add` schedules")
    v.add_argument("--limit", type=int, default=1, help="runs executed at once (default 1)")
    v.set_defaults(fn=cmd_serve)

    r = sub.add_parser("runs", help="recent build/export flow runs (Prefect run history)")
    r.add_argument("--limit", type=int, default=20)
    rs = r.add_subparsers(dest="runs_cmd")
    sh = rs.add_parser("show", help="one run: state, timings, tasks, error, artifacts")
    sh.add_argument("run_id", help="a run id or its first characters")
    sh.add_argument("--json", action="store_true")
    r.set_defaults(fn=cmd_runs)

"""The `errata` command line. Thin: parses arguments, calls pipelines/ (and flows/ for orchestration), prints."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from schemas.errors import ErrataError

EXAMPLE_SQL = ("SELECT count(*) AS attempts, count(*) FILTER (WHERE is_correct) AS correct, "
               "round(avg(is_correct::INT), 3) AS accuracy FROM {ds}.attempts WHERE drop_reason IS NULL")


def _root(args):
    from pipelines.config import data_root
    from pipelines.files import Root
    return Root(args.data or data_root())


def _catalog(args):
    from pipelines.catalog import Catalog
    return Catalog(_root(args))


# --- build ------------------------------------------------------------------------------------------------------
def cmd_build(args) -> int:
    from pipelines.config import data_root, load_recipe
    from pipelines.console import console, new_log_path, quiet_console
    overrides = list(args.set or [])
    if args.limit is not None:
        overrides.append(f"limit={args.limit}")
    if args.ray_address:
        overrides.append(f"execution.ray_address={args.ray_address}")
    if args.runner:
        overrides.append(f"execution.runner={args.runner}")
    if args.data:
        overrides.append(f"storage.root={args.data}")
    if args.allow_errors:
        overrides.append("execution.allow_errors=true")
    config = load_recipe(args.recipe, overrides)
    path = new_log_path(data_root(config), f"build-{config.dataset}")
    _interrupt_on_signals()
    with quiet_console(path, verbose=args.verbose):
        say = logging.getLogger("errata.build").info
        say(f"building {config.dataset} (method {config.method}); full log: {path}")
        try:
            if args.prefect:
                from flows.build import build_flow_run
                result = build_flow_run(config, progress=not args.no_progress, recipe=args.recipe)
            else:
                from pipelines.build import build
                result = build(config, progress=not args.no_progress, log=say)
        except ErrataError as e:
            print(f"error: {e}\nfull log: {path}\nto resume, run the same command again: finished shards and "
                  f"stages are kept", file=console())
            return 2
        except KeyboardInterrupt:
            print(f"interrupted; full log: {path}; run the same command again to resume", file=console())
            return 130
        except Exception as e:
            import traceback

            from schemas.errors import error_chain
            traceback.print_exc()    # into the log file
            inner = next((x for x in error_chain(e) if isinstance(x, ErrataError)), None)
            if inner is not None:    # errata's own error, wrapped by Ray or Prefect
                print(f"error: {inner}\nfull log: {path}\nto resume, run the same command again: finished "
                      f"shards and stages are kept", file=console())
                return 2
            print(f"error: {root_cause(e)}\nfull log (with the traceback): {path}\nto resume, run the same "
                  f"command again", file=console())
            return 1
        print_build_summary(result, path)
    return 0


def _interrupt_on_signals() -> None:
    """SIGTERM (`kill`, a scheduler, a container stop) stops a build the way Ctrl-C does: the engines, Ray and
    Prefect's temporary server are shut down, finished shards are kept. (Ray's own handler exits at once and
    left Prefect's server and two Ray agents running; start_ray keeps this handler.) Both signals also tell the
    in-process engines not to restart an engine that dies now: a terminal's Ctrl-C reaches vLLM's engine process
    too, and restarting it delayed the exit by a minute (two ~30 s starts)."""
    import signal

    from stages.engines.host import stop_restarting

    def interrupt(signum, frame):
        stop_restarting()
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)


def root_cause(exc: BaseException) -> str:
    """'Type: message' of the innermost exception that is not a wrapper (Ray's task errors, Prefect's)."""
    from schemas.errors import error_chain
    chain = [e for e in error_chain(exc) if not type(e).__name__.startswith(("Ray", "UserCode"))
             and type(e).__module__.split(".")[0] not in ("ray", "prefect")]
    e = chain[-1] if chain else exc
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[-1] if msg else ''}"[:500]


def print_build_summary(result, log_file: str | None = None) -> None:
    from pipelines.console import out, print_table
    o = out()
    m = result.manifest
    print(file=o)
    print(f"published {m.dataset}@{m.version}  (run {m.run_id}, {result.seconds:.1f} s"
          + (f", {result.resumed_shards} shards resumed" if result.resumed_shards else "") + ")", file=o)
    print(f"data: {result.path}", file=o)
    print("tables:  " + "  ".join(f"{t}={e.rows}" for t, e in m.tables.items()), file=o)
    if m.drops:
        print("dropped: " + "  ".join(f"{t}: " + " ".join(f"{r}={n}" for r, n in d.items())
                                      for t, d in m.drops.items()), file=o)
    if m.execution:
        print(f"runner:  {m.execution.get('runner')} ({m.execution.get('reason')})", file=o)
    for k, e in m.engines.items():
        dtype = f", {e['dtype']} ({e.get('dtype_reason', 'dtype set')})" if e.get("dtype") else ""
        b = e.get("batch") or {}
        batch = (f"; batch: {b['mean_running']} of {b['max_num_seqs']} sequences per step on average, "
                 f"{b['preempted']} preempted" if b.get("mean_running") is not None else "")
        print(f"engine:  {', '.join(e.get('roles', []))} -> {e.get('kind')} {e.get('model')}{dtype}, "
              f"started {e.get('starts', 0)}x{batch}", file=o)
    print("stages:", file=o)
    skip = ("in", "out", "seconds", "wall_seconds", "t_start", "t_end", "error_reasons", "counts", "tokens_per_s",
            "prompt_tokens", "completion_tokens")
    for name, c in m.stages.items():
        extra = " ".join([*(f"{k}={v}" for k, v in c.items() if k not in skip),
                          *(f"{k}={v}" for k, v in (c.get("counts") or {}).items() if k.startswith("skipped_"))])
        toks = (f" tokens={c['completion_tokens']} ({c.get('tokens_per_s', 0):.0f} tok/s)"
                if c.get("completion_tokens") else "")
        print(f"  {name:<9} in={c.get('in')} out={c.get('out')} {extra}{toks} "
              f"({c.get('wall_seconds', c.get('seconds', 0)):.1f} s)", file=o)
    if m.tokens:
        print("tokens:  " + "  ".join(f"{k}={v}" for k, v in m.tokens.items()), file=o)
    over = (m.error_budget or {}).get("over_budget") or []
    if over:
        fr = m.error_budget["stages"]
        print("errors:  published with --allow-errors although " + ", ".join(
            f"{s} had {fr[s]['fraction']:.0%} errors" for s in over)
            + f" (max_error_fraction {m.error_budget['max_error_fraction']:g})", file=o)
    for k, v in m.summary.items():
        print(f"{k}: {v}", file=o)
    if log_file:
        print(f"log:     {log_file}", file=o)
    if "attempts" in m.tables:
        from pipelines.sql import connect, fetch
        q = EXAMPLE_SQL.format(ds=m.dataset)
        cols, rows = fetch(connect(result.root), q)
        print(f"\nexample: errata sql \"{q}\"", file=o)
        print_table(cols, rows, o)


# --- look -------------------------------------------------------------------------------------------------------
def cmd_versions(args) -> int:
    from pipelines.console import print_table
    catalog = _catalog(args)
    names = [args.dataset] if args.dataset else catalog.datasets()
    rows = []
    for ds in names:
        vs = catalog.versions(ds)
        if args.dataset and not vs:
            from schemas.errors import VersionNotFound
            raise VersionNotFound(f"no published version of dataset '{ds}' under {catalog.root.root_url}")
        for v in vs:
            m = catalog.manifest(ds, v)
            rows.append((m.ref, m.created_at[:19], m.method, m.run_id, ", ".join(m.parents),
                         " ".join(f"{t}={e.rows}" for t, e in m.tables.items())))
    if not rows:
        print(f"no datasets under {catalog.root.root_url}")
        return 0
    print_table(["version", "created_at", "method", "run_id", "parents", "rows"], rows)
    return 0


def cmd_show(args) -> int:
    from schemas.registry import id_column
    catalog = _catalog(args)
    m = catalog.resolve(args.ref)
    if args.verify:
        problems = catalog.verify_version(m)
        for p in problems:
            print(p, file=sys.stderr)
        n = sum(len(t.files) for t in m.tables.values())
        print(f"{m.ref}: {n} files, " + (f"{len(problems)} problem(s)" if problems else "every checksum matches"))
        return 1 if problems else 0
    if args.id:
        from pipelines.sql import connect, fetch
        con = connect(catalog)
        schema = f"{m.dataset}_v{m.version}"
        for table in ([args.table] if args.table else list(m.tables)):
            col = id_column(table)
            if not col:
                continue
            cols, rows = fetch(con, f"SELECT * FROM \"{schema}\".\"{table}\" WHERE {col} = '{args.id.replace(chr(39), '')}'")
            for r in rows:
                print(f"# {m.ref} {table}")
                print(json.dumps(dict(zip(cols, r)), indent=2, default=str, ensure_ascii=False))
                return 0
        print(f"no row with id '{args.id}' in {m.ref}", file=sys.stderr)
        return 1
    if args.table:
        t = catalog.read_table(m, args.table).slice(0, args.limit).to_pylist()
        for r in t:
            print(json.dumps(r, default=str, ensure_ascii=False))
        return 0
    print(json.dumps(m.model_dump(mode="json", exclude={"recipe"}), indent=2))
    return 0


def cmd_sql(args) -> int:
    from pipelines.sql import SQLError, connect, query
    con = connect(_root(args))
    if args.query:
        rel = query(con, args.query)
        if args.json:
            cols = rel.columns
            for r in rel.fetchall():
                print(json.dumps(dict(zip(cols, r)), default=str, ensure_ascii=False))
        else:
            rel.show(max_rows=args.max_rows, max_width=200)
        return 0
    return _shell(con, query, SQLError)


def _shell(con, query, SQLError) -> int:
    try:
        import readline  # noqa: F401  (line editing and history)
    except ImportError:
        pass
    print("errata sql (DuckDB, read-only). Tables: <dataset>.<table> at latest, <dataset>_v<N>.<table> for "
          "older versions; errata_versions lists them. End statements with ';'. Ctrl-D quits.")
    buf = ""
    while True:
        try:
            line = input("errata> " if not buf else "   ...> ")
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            print()
            buf = ""
            continue
        buf += line + "\n"
        if not buf.strip().endswith(";"):
            continue
        q, buf = buf, ""
        try:
            query(con, q).show(max_width=200)
        except SQLError as e:
            print(f"error: {e}")


def cmd_export(args) -> int:
    from pipelines.export import export
    options = {"max_pairs_per_problem": args.max_pairs}
    if args.tokenizer:
        options["tokenizer"] = args.tokenizer
    if args.mix:
        options["mix"] = args.mix
    if args.eta is not None:
        options["eta"] = args.eta
    if getattr(args, "mask_errors", False):
        options["mask_errors"] = "true"
    for o in args.option or []:
        k, sep, v = o.partition("=")
        if not sep:
            from schemas.errors import ConfigError
            raise ConfigError(f"--option '{o}': expected KEY=VALUE")
        options[k.strip()] = v
    r = export(_root(args), args.ref, args.format, args.out, jsonl=args.jsonl, options=options)
    print(f"exported {r.rows} {r.format} rows ({r.export}) from {r.source}")
    for f in r.files:
        print(f"  {f}")
    print(f"load: datasets.load_dataset(\"parquet\", data_files=\"{args.out}/*.parquet\")")
    return 0


def cmd_eval(args) -> int:
    """Run a registered evaluation (`errata eval critique`); its results become a new version of --dataset."""
    from pipelines.console import console, new_log_path, quiet_console
    from pipelines.config import data_root
    from schemas.registry import get_evaluation
    run_eval = get_evaluation(args.what).run
    args.dataset = args.dataset or f"{args.what}_eval"
    overrides = list(args.set or [])
    if args.runner:
        overrides.append(f"execution.runner={args.runner}")
    path = new_log_path(args.data or data_root(), f"eval-{args.what}-{args.dataset}")
    _interrupt_on_signals()
    with quiet_console(path, verbose=args.verbose):
        say = logging.getLogger("errata.build").info
        say(f"evaluating ({args.what}) on {args.eval_data or args.version}; full log: {path}")
        try:
            result = run_eval(data=args.eval_data, version=args.version, dataset=args.dataset,
                              overrides=overrides, root=args.data, limit=args.limit,
                              progress=not args.no_progress, log=say)
        except ErrataError as e:
            print(f"error: {e}\nfull log: {path}", file=console())
            return 2
        print_build_summary(result, path)
    return 0


def cmd_diff(args) -> int:
    from pipelines.diff import diff_versions, render
    d = diff_versions(_catalog(args), args.a, args.b)
    print(json.dumps(d, indent=2, default=str) if args.json else render(d), end="" if not args.json else "\n")
    return 0


def cmd_view(args) -> int:
    from pipelines.viewer.app import create_app, is_loopback
    catalog = _catalog(args)
    path = "/"
    if args.ref:
        m = catalog.resolve(args.ref)
        path = f"/d/{m.dataset}/{m.version}/"
    local = is_loopback(args.host)
    if not local:
        print(f"warning: serving on {args.host}: anyone who can reach this machine on port {args.port} can read "
              f"every dataset under {catalog.root.root_url} (read-only). Use the default 127.0.0.1 unless you mean "
              f"it.", file=sys.stderr)
    app = create_app(catalog.root.root_url if not catalog.root.local else catalog.root.root, local_only=local)
    import uvicorn
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"errata viewer: http://{host}:{args.port}{path}  (data {catalog.root.root_url}; Ctrl-C stops)",
          flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def cmd_recipes(args) -> int:
    from pipelines.config import builtin_recipes, read_yaml_mapping
    from schemas.registry import methods
    print("methods (a recipe's `method:` selects its stages):")
    for name, m in sorted(methods().items()):
        print(f"  {name:<16} {m.description}  [stages: {' -> '.join(m.stage_names())}; roles: "
              f"{', '.join(m.roles)}]")
    print("recipes (errata build NAME):")
    for n, path in builtin_recipes().items():
        try:
            d = read_yaml_mapping(path, "")
        except ErrataError:
            d = {}
        print(f"  {n:<16} {d.get('method', 'sample_verify'):<14} {d.get('description', '')}  ({os.path.relpath(path)})")
    return 0


def cmd_prepare_model(args) -> int:
    from stages.engines.model_prep import ensure_embedded_model
    print(ensure_embedded_model(_root(args).models_dir))
    return 0


def add_flow_commands(sub) -> None:
    """Prefect-backed commands (schedules, serve, runs) are added by flows.commands when present."""
    try:
        from flows.commands import register
    except ImportError:
        return
    register(sub)


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="errata", description="Build, version, inspect and export "
                                                           "self-correction training data.")
    p.add_argument("--data", help="storage root (default: $ERRATA_DATA or ./data)")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="run a recipe and publish a new dataset version")
    b.add_argument("recipe", help="built-in recipe name (see `errata recipes`) or a YAML path")
    b.add_argument("--limit", type=int, help="use only the first N problems")
    b.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe setting (repeatable)")
    b.add_argument("--ray-address", help="run on this Ray cluster instead of a local ray.init")
    b.add_argument("--runner", choices=["auto", "ray", "local"],
                   help="auto (default: in process on a CPU-only box with 2 cores or fewer, else Ray), ray, or local "
                        "(in process)")
    b.add_argument("--no-progress", action="store_true", help="no progress bars or progress lines")
    b.add_argument("--allow-errors", action="store_true",
                   help="publish even when a stage's errors exceed execution.max_error_fraction (default 0.5)")
    b.add_argument("-v", "--verbose", action="store_true",
                   help="show everything the libraries say, live (default: only in the run's log file)")
    b.add_argument("--prefect", action=argparse.BooleanOptionalAction, default=True,
                   help="run as a Prefect flow (run history, retries; default); --no-prefect runs it directly")
    b.set_defaults(fn=cmd_build)

    v = sub.add_parser("versions", help="list published versions")
    v.add_argument("dataset", nargs="?")
    v.set_defaults(fn=cmd_versions)

    s = sub.add_parser("show", help="a version's manifest, a table's rows, or one row by id")
    s.add_argument("ref", metavar="DATASET[@VERSION]")
    s.add_argument("--table", help="problems, attempts, errors, ...")
    s.add_argument("--id", help="a row id (problem_id, attempt_id, error_id)")
    s.add_argument("--limit", type=int, default=5, help="rows to print with --table")
    s.add_argument("--verify", action="store_true",
                   help="re-hash every file of the version against its manifest's checksums")
    s.set_defaults(fn=cmd_show)

    q = sub.add_parser("sql", help="read-only DuckDB SQL over every dataset; a shell when no query is given")
    q.add_argument("query", nargs="?")
    q.add_argument("--json", action="store_true", help="print rows as JSON lines")
    q.add_argument("--max-rows", type=int, default=40)
    q.set_defaults(fn=cmd_sql)

    e = sub.add_parser("export", help="export SFT/DPO corpora in TRL's column conventions")
    e.add_argument("ref", metavar="DATASET[@VERSION]")
    e.add_argument("--format", required=True,
                   help="sft, dpo, sft-tokenized (the version's method picks the export), or a registered "
                        "export name")
    e.add_argument("--out", required=True, help="output directory")
    e.add_argument("--jsonl", action="store_true", help="also write JSONL")
    e.add_argument("--max-pairs", type=int, default=1, help="dpo: pairs per problem")
    e.add_argument("--tokenizer", metavar="MODEL", help="pre-tokenized exports (sft-tokenized): the tokenizer and "
                                                        "chat template to use (a model directory, hub id or "
                                                        "'embedded'); same as --option tokenizer=MODEL")
    e.add_argument("--mix", metavar="FILE", help="SFT exports that support it (agent_r): a general chat dataset "
                                                 "(JSONL/Parquet with `messages`) to mix in; same as --option "
                                                 "mix=FILE")
    e.add_argument("--eta", type=float, help="with --mix: the fraction of general rows in the output (default "
                                             "0.2); same as --option eta=X")
    e.add_argument("--mask-errors", action="store_true", help="revision exports (sft, sft-tokenized): loss false "
                                                               "(labels -100) on the erroneous prefix; same as "
                                                               "--option mask_errors=true")
    e.add_argument("--option", action="append", metavar="KEY=VALUE", help="an export's own option (repeatable)")
    e.set_defaults(fn=cmd_export)

    ev = sub.add_parser("eval", help="evaluate a model on a labelled set (critique: a critic on first-error "
                                     "labels); the results become a dataset version")
    ev.add_argument("what", metavar="NAME", help="the evaluation: critique (a critic scored on first-error labels: "
                                                 "ProcessBench's F1, parse rate, a random-step baseline)")
    ev.add_argument("--data", dest="eval_data", metavar="FILE",
                    help="the labelled file (critique: ProcessBench-format JSONL: problem, steps, label = 0-based "
                         "index of the earliest wrong step, -1 if none)")
    ev.add_argument("--version", metavar="DATASET[@N]", help="instead: a published version's labelled rows "
                                                              "(critique: paths with a known first wrong step)")
    ev.add_argument("--dataset", help="dataset the results are published to (default: <NAME>_eval)")
    ev.add_argument("--limit", type=int, help="score only the first N labelled rows")
    ev.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="the evaluated model and its stage, e.g. engines.critic.kind=openai, "
                         "engines.critic.model=M, critique.max_tokens=384, critique.constrain=off (repeatable)")
    ev.add_argument("--runner", choices=["auto", "ray", "local"], help="as for build")
    ev.add_argument("--no-progress", action="store_true", help="no progress bars or progress lines")
    ev.add_argument("-v", "--verbose", action="store_true", help="library logs live")
    ev.set_defaults(fn=cmd_eval)
    d = sub.add_parser("diff", help="compare two versions: counts and yields per stage, distributions, rows added, "
                                    "removed and changed by id")
    d.add_argument("a", metavar="A", help="DATASET@N (or DATASET: the latest)")
    d.add_argument("b", metavar="B", help="DATASET@M")
    d.add_argument("--json", action="store_true", help="the whole comparison as JSON")
    d.set_defaults(fn=cmd_diff)

    w = sub.add_parser("view", help="a local web page: datasets, versions, dataset cards, rows with filters, one "
                                    "example as the model saw it, diffs")
    w.add_argument("ref", nargs="?", metavar="DATASET[@VERSION]", help="open at this version")
    w.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    w.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only; "
                                                       "another address serves the network, with a warning)")
    w.set_defaults(fn=cmd_view)

    r = sub.add_parser("recipes", help="list methods and built-in recipes")
    r.set_defaults(fn=cmd_recipes)
    pm = sub.add_parser("prepare-model", help="convert the embedded model into data/models (idempotent)")
    pm.set_defaults(fn=cmd_prepare_model)
    add_flow_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from stages.engines.hardware import set_engine_env_defaults
    set_engine_env_defaults()
    args = make_parser().parse_args(argv)
    before = os.environ.get("ERRATA_DATA")
    if args.data:  # before anything imports Prefect: its home lives under the data root
        os.environ["ERRATA_DATA"] = args.data
    try:
        return args.fn(args) or 0
    except ErrataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:        # called in process (tests, a notebook): --data holds for this command only
        if args.data:
            if before is None:
                os.environ.pop("ERRATA_DATA", None)
            else:
                os.environ["ERRATA_DATA"] = before


if __name__ == "__main__":
    sys.exit(main())

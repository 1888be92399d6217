"""Prefect environment for every errata entry point. Import and call `prefect_env()` BEFORE importing prefect.

Prefect reads its settings from the environment once, when it is first imported. errata keeps Prefect's state
(the SQLite database of the temporary or local server, cached task results) project-local, under
`<data root>/prefect`, unless the user set PREFECT_HOME. Where errata's `serve` started a local server, it
leaves its address in `<PREFECT_HOME>/errata-server.json`, so other commands (`errata runs`, `errata schedule
pause`) talk to that server instead of starting a temporary one.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

DEFAULTS = {
    # The server's telemetry logs "database is locked" on SQLite.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # 20 s (Prefect's default) is close to what a 2-core machine needs to start the temporary server.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    # A flow run's heartbeat event (Prefect's minimum interval): when a killed build was last alive
    # (flows/lost_runs.py), and what a Prefect automation on a lasting server can watch.
    "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",
}
SERVER_FILE = "errata-server.json"


def prefect_env(data: str | None = None) -> Path:
    """Set PREFECT_HOME (if unset) to `<data root>/prefect` and the other defaults; return PREFECT_HOME.

    The data root is `data`, else $ERRATA_DATA, else ./data. Object-store roots (s3://...) cannot hold a SQLite
    database: Prefect's state then goes to ./data/prefect."""
    from pipelines.config import data_root
    root = data or data_root()
    if "://" in root:
        root = "data"
    if not os.environ.get("PREFECT_HOME"):
        os.environ["PREFECT_HOME"] = str(Path(root, "prefect").resolve())
    for k, v in DEFAULTS.items():
        os.environ.setdefault(k, v)
    home = Path(os.environ["PREFECT_HOME"]).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    if not os.environ.get("PREFECT_API_URL"):
        url = running_local_server(home)
        if url:
            os.environ["PREFECT_API_URL"] = url
    return home


def server_file(home: Path | None = None) -> Path:
    return Path(home or os.environ["PREFECT_HOME"]) / SERVER_FILE


def running_local_server(home: Path) -> str | None:
    """The API URL of a server started by `errata serve` on this PREFECT_HOME, if it is still up."""
    f = server_file(home)
    try:
        rec = json.loads(f.read_text())
        os.kill(int(rec["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return None
    import httpx
    try:
        if httpx.get(rec["url"].rstrip("/") + "/health", timeout=2).status_code == 200:
            return rec["url"]
    except httpx.HTTPError:
        pass
    return None


class _ShortErrataErrors(logging.Formatter):
    """Formats like `inner`, but without the traceback when the logged exception is (or wraps) an ErrataError."""

    def __init__(self, inner: logging.Formatter):
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        from schemas.errors import ErrataError, error_chain
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None or not any(isinstance(e, ErrataError) for e in error_chain(exc)):
            return self.inner.format(record)
        saved = record.exc_info, record.exc_text
        record.exc_info = record.exc_text = None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text = saved


def shorten_errata_tracebacks() -> None:
    """On the console, a task or flow that failed with errata's own error (bad input, engine failure, ...) logs
    one line, not Prefect's traceback; the CLI prints the error once more at the end. Only the console changes:
    the logs sent to the Prefect server (flow run history, `errata runs show`) keep the traceback, and any other
    exception keeps it on the console too. Call after importing prefect (which sets up its logging)."""
    from prefect.logging.handlers import PrefectConsoleHandler
    for logger in (logging.getLogger(), logging.getLogger("prefect")):
        for h in logger.handlers:
            if isinstance(h, PrefectConsoleHandler) and not isinstance(h.formatter, _ShortErrataErrors):
                h.setFormatter(_ShortErrataErrors(h.formatter or logging.Formatter()))

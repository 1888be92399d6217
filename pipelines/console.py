"""A quiet console: errata's progress, warnings and summary on the terminal; everything libraries say in a log file.

`quiet_console(log_path)` points this process's stdout and stderr *file descriptors* at the per-run log file, so
whatever anything prints goes there: Python logging (Prefect, Ray, vLLM), warnings, C-level messages (libtcmalloc,
oneDNN), and the output of every process started meanwhile (the Ray runtime and its workers, whose output Ray
forwards to this process, a temporary Prefect server). errata's own output goes to the terminal through saved copies
of the original descriptors: `console()` (stderr: progress, warnings, errors) and `out()` (stdout: summaries).
Loggers named errata.* show INFO on the console; stages.*, pipelines.* and flows.* show WARNING and up; all of them
also go to the file. With `verbose=True` nothing is redirected (everything shows live) and the log file still gets
Python's log records.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import sys
from pathlib import Path
from typing import IO, Iterator, Optional

_CONSOLE: Optional[IO[str]] = None
_OUT: Optional[IO[str]] = None
_LOG_PATH: Optional[str] = None
ERRATA_LOGGERS = {"errata": logging.INFO, "stages": logging.WARNING, "pipelines": logging.WARNING,
                  "flows": logging.WARNING}


def console() -> IO[str]:
    """Where errata's progress, warnings and errors go (the terminal, also in quiet mode)."""
    return _CONSOLE or sys.stderr


console_stream = console


def out() -> IO[str]:
    """Where errata's results go (summaries, tables)."""
    return _OUT or sys.stdout


def new_log_path(root: str, what: str) -> str:
    """<root>/logs/<what>-<UTC time>.log for a local root, else ./data/logs."""
    base = Path(root if "://" not in root else "data") / "logs"
    return str(base / f"{what}-{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M%S}.log")


def _fd(stream) -> int:
    try:
        return stream.fileno()
    except Exception:
        return -1


def _open(fd: int, opened: list) -> IO[str]:
    f = os.fdopen(fd, "w", buffering=1)
    opened.append(f)
    return f


class _Console(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
            prefix = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
            print(prefix + msg, file=console(), flush=True)
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def quiet_console(path: str, verbose: bool = False) -> Iterator[str]:
    global _CONSOLE, _OUT, _LOG_PATH
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    logf = open(path, "a", buffering=1)
    file_handler = logging.StreamHandler(logf)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(file_handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    handler = _Console()
    saved_levels = {}
    for name, level in ERRATA_LOGGERS.items():
        lg = logging.getLogger(name)
        saved_levels[name] = lg.level
        if lg.level == logging.NOTSET or lg.level > level:
            lg.setLevel(min(level, logging.INFO))
        h = _Console()
        h.setLevel(level)
        lg.addHandler(h)
    saved_fds: list[int] = []
    _LOG_PATH = path
    os.environ["ERRATA_LOG_FILE"] = path
    opened: list[IO[str]] = []
    try:
        if not verbose:
            sys.stdout.flush()
            sys.stderr.flush()
            saved_fds = [os.dup(1), os.dup(2)]
            # errata's own output: the terminal behind fd 1/2 (a copy made before the redirection), unless
            # sys.stdout/sys.stderr are not those descriptors (a test's capture), which are then kept as they are
            _OUT = sys.stdout if _fd(sys.stdout) != 1 else _open(os.dup(saved_fds[0]), opened)
            _CONSOLE = sys.stderr if _fd(sys.stderr) != 2 else _open(os.dup(saved_fds[1]), opened)
            os.dup2(logf.fileno(), 1)
            os.dup2(logf.fileno(), 2)
        yield path
    finally:
        if saved_fds:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved_fds[0], 1)
            os.dup2(saved_fds[1], 2)
            for fd in saved_fds:
                os.close(fd)
            for s in opened:
                try:
                    s.close()
                except Exception:
                    pass
        _OUT = _CONSOLE = None
        _LOG_PATH = None
        os.environ.pop("ERRATA_LOG_FILE", None)
        for name in ERRATA_LOGGERS:
            lg = logging.getLogger(name)
            for h in [h for h in lg.handlers if isinstance(h, _Console)]:
                lg.removeHandler(h)
            lg.setLevel(saved_levels[name])
        root.removeHandler(file_handler)
        root.setLevel(old_level)
        del handler
        logf.close()


def print_table(cols: list[str], rows: list[tuple], stream: Optional[IO[str]] = None) -> None:
    """A plain aligned text table (cells cut at 60 characters, newlines shown as \\n)."""
    stream = stream or out()
    cells = [[("" if v is None else str(v)).replace("\n", "\\n")[:60] for v in r] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)), file=stream)
    print("  ".join("-" * w for w in widths), file=stream)
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)), file=stream)

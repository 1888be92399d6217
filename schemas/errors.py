"""The error tree of errata. Every error a user can meet is one of these.

    ErrataError
    ├── ConfigError            bad recipe, unknown --set key, invalid value or schedule
    ├── InputError             bad task input: names file, line and field
    ├── EngineError            an LLM engine failed
    │   ├── TransientEngineError   worth retrying: engine start, HTTP 429/5xx, timeouts
    │   └── EngineUnavailable      an outage: the engine as a whole is gone and did not come back in time; the
    │                              shard fails (no error rows), a rerun resumes
    ├── StorageError           versioned storage
    │   └── VersionNotFound
    ├── ErrorBudgetExceeded    a stage's errors exceed execution.max_error_fraction: nothing published
    ├── StageError             a stage broke its contract (result count, undeclared column or table): a bug
    └── RowError               one row failed inside a stage; becomes an `errors` record, the run goes on
"""
from __future__ import annotations


class ErrataError(Exception):
    """Base of every errata error."""


class ConfigError(ErrataError):
    """A recipe, override or schedule is invalid."""


class InputError(ErrataError):
    """Task input is unusable. Carries the file, 1-based line (or row) and field."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 field: str | None = None):
        self.path, self.line, self.field = path, line, field
        where = ":".join(str(x) for x in (path, line) if x is not None)
        parts = [p for p in (where, f"field '{field}'" if field else None) if p]
        super().__init__(f"{', '.join(parts)}: {message}" if parts else message)


class EngineError(ErrataError):
    """An LLM engine failed in a way that retrying will not fix."""


class TransientEngineError(EngineError):
    """An LLM engine failed in a way that may pass on retry (start-up, 429, 5xx, timeout)."""


class EngineUnavailable(EngineError):
    """The engine as a whole is down (every request refused or reset, repeated 5xx, an in-process engine that died
    and could not be restarted) and did not come back within its outage timeout. Fails the shard, not its rows."""


class StorageError(ErrataError):
    """Versioned storage failed or was asked for something impossible."""


class VersionNotFound(StorageError):
    """No such dataset or version."""


class ErrorBudgetExceeded(ErrataError):
    """Too many of a stage's results are errors (execution.max_error_fraction): the build publishes nothing; the
    shards with errors are redone by a rerun (or `--allow-errors` publishes anyway)."""


class StageError(ErrataError):
    """A stage broke its contract: returned more or fewer results than rows, or set a column or wrote a table it
    does not declare. A bug in the stage, named in the message; it stops the build."""


class RowError(ErrataError):
    """One row failed inside a stage. `reason` is a short machine-readable tag."""

    def __init__(self, reason: str, message: str = "", raw: str | None = None):
        self.reason, self.raw = reason, raw
        super().__init__(f"{reason}: {message}" if message else reason)


def error_chain(exc: BaseException) -> list[BaseException]:
    """The exception and everything it wraps (__cause__, __context__, Ray's `.cause`)."""
    seen, todo, out = set(), [exc], []
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        out.append(e)
        todo += [e.__cause__, e.__context__]
        c = getattr(e, "cause", None)
        if isinstance(c, BaseException):
            todo.append(c)
    return out

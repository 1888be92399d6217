"""Verify stage: parse each attempt's final answer and check it against its problem's reference with math-verify.

A MapStage over `attempts` that also reads `problems` (for the reference answer). Row outcomes (columns
final_answer, answer_parse_ok, is_correct, reward, verifier):
- an answer was found (`stages.answers.extract_answer`) and checked: answer_parse_ok=True, is_correct True/False,
  reward 1.0/0.0, verifier='math_verify';
- no answer found: final_answer=None, answer_parse_ok=False, is_correct=None, reward=None (verifier is set on every
  row this stage looked at, so `verifier IS NULL` means "not verified yet").
  Unparseable never silently counts as wrong: the filter stage drops these with reason `no_answer`;
- the check ran past `VerifyConfig.timeout_s`: an `errors` record, reason `checker_timeout` (the row is kept as data);
  the check raised: reason `checker_error`; the checker process died: reason `checker_crashed`;
  no reference answer on the row: reason `no_reference`.

Timeouts. math-verify's own timeout uses `signal.alarm`, which only works in a main thread (Ray may call a stage
from another), so it is disabled here and the checks run in one persistent worker process instead (spawned in
`setup()`). A batch goes to the worker in chunks; the worker runs the checks one by one and answers each as soon
as it is done, so every check gets its own deadline: `timeout_s` after the previous answer (or the send). When a
deadline passes, the check that is running is the first unanswered one: the worker is killed (SIGKILL: a runaway
sympy computation cannot hang or leak) and a fresh one retries that check alone with 4x the deadline (on a busy
machine a niced Ray worker can be starved past a short deadline); only when that also runs out does the check
become a `checker_timeout` row. The fresh worker then takes the rest.

The check is injectable: any picklable module-level `fn(final_answer, reference_answer) -> bool`.
"""
from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import re
import threading
import weakref
from typing import Any, Callable, Optional

from pydantic import Field

from stages.answers import extract_answer, normalize_number
from stages.base import Failed, MapStage, StageContext, StageStats
from stages.options import Options

__all__ = ["VerifyStage", "math_verify_check", "CheckWorker"]

CheckFn = Callable[[str, str], bool]
_CHUNK = 256
_START_TIMEOUT_S = 120.0
_RETRY_FACTOR = 4.0   # a check that timed out is tried once more on a fresh worker with this many times the deadline


def _as_latex(ans: str) -> str:
    """Wrap a bare answer so math-verify's LaTeX extractor reads it whole ('1/2', '\\frac{1}{2}', '(3, \\pi)')."""
    s = normalize_number(ans.strip())
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(left) and s.endswith(right) and len(s) > len(left) + len(right):
            s = s[len(left):-len(right)].strip()
    if "\\boxed" in s:
        return s
    return "\\boxed{" + s + "}"


def _plain(s: str) -> str:
    s = re.sub(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}", r"\1", s)
    s = s.replace("$", "").replace("\\!", "").replace("\\,", "").replace("\\ ", "")
    return re.sub(r"\s+", "", s).strip(".").casefold()


def math_verify_check(answer: str, reference: str) -> bool:
    """True when `answer` equals `reference` mathematically (math-verify: 1,000 = 1000, 0.5 = 1/2, LaTeX);
    when math-verify cannot read one side, a normalized text comparison ('\\text{Evelyn}' = 'Evelyn')."""
    from math_verify import parse, verify

    gold = parse(_as_latex(reference), parsing_timeout=None)  # timeouts: ours, not signal.alarm
    pred = parse(_as_latex(answer), parsing_timeout=None)
    if gold and pred:
        if verify(gold, pred, timeout_seconds=None):
            return True
    return _plain(answer) == _plain(reference)


def _worker_main(conn, check_fn: CheckFn) -> None:  # pragma: no cover - runs in the child process
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    try:  # warm up imports and sympy/latex caches so the first real check is not charged for them
        math_verify_check("1", "1")
    except Exception:
        pass
    conn.send(("ready", os.getpid()))
    while True:
        try:
            batch = conn.recv()
        except (EOFError, OSError):
            return
        if batch is None:
            return
        for idx, answer, reference in batch:
            try:
                res = (idx, "ok", bool(check_fn(answer, reference)))
            except Exception as e:
                res = (idx, "error", f"{type(e).__name__}: {e}"[:500])
            conn.send(res)


def _kill(proc) -> None:
    if proc is not None and proc.is_alive():
        proc.kill()
        proc.join(5)


class CheckWorker:
    """One persistent checker process. `run(items, timeout_s)` -> {idx: (kind, value)} with kind in
    ok (value: bool), timeout, error, crashed (value: message)."""

    def __init__(self, check_fn: CheckFn = math_verify_check):
        self.check_fn = check_fn
        self.proc = None
        self.conn = None
        self.starts = 0
        self._lock = threading.Lock()
        self._finalizer = None

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        ctx = mp.get_context("spawn")  # no fork: the parent may hold threads (Ray, engines)
        parent, child = ctx.Pipe(duplex=True)
        proc = ctx.Process(target=_worker_main, args=(child, self.check_fn), daemon=True, name="errata-verify")
        proc.start()
        child.close()
        if not parent.poll(_START_TIMEOUT_S):
            _kill(proc)
            raise RuntimeError(f"verify worker did not start within {_START_TIMEOUT_S:.0f} s")
        try:
            msg = parent.recv()
        except EOFError:
            proc.join(5)
            raise RuntimeError(f"verify worker died while starting (exit code {proc.exitcode})") from None
        assert msg[0] == "ready", msg
        self.proc, self.conn = proc, parent
        self.starts += 1
        self._finalizer = weakref.finalize(self, _kill, proc)

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            self.conn.send(None)
            self.proc.join(2)
        except (OSError, BrokenPipeError):
            pass
        self._discard()

    def _discard(self) -> None:
        """Kill the worker (if still there) and forget it."""
        _kill(self.proc)
        try:
            self.conn.close()
        except OSError:
            pass
        if self._finalizer is not None:
            self._finalizer.detach()
        self.proc = self.conn = self._finalizer = None

    def _restart(self) -> None:
        self._discard()
        self.start()

    def run(self, items: list[tuple[int, str, str]], timeout_s: float) -> dict[int, tuple[str, Any]]:
        with self._lock:
            return self._run(items, timeout_s)

    def _run(self, items, timeout_s):
        results: dict[int, tuple[str, Any]] = {}
        todo = list(items)
        retried: set[int] = set()
        while todo:
            if self.proc is None or not self.proc.is_alive():
                self._restart() if self.proc is not None else self.start()
            chunk, todo = todo[:_CHUNK], todo[_CHUNK:]
            try:
                self.conn.send(chunk)
            except (OSError, BrokenPipeError):
                self._restart()
                self.conn.send(chunk)
            k = 0
            while k < len(chunk):
                idx = chunk[k][0]
                if self.conn.poll(timeout_s * (_RETRY_FACTOR if idx in retried else 1)):
                    try:
                        got_idx, kind, value = self.conn.recv()
                    except (EOFError, OSError):
                        code = self.proc.exitcode if self.proc is not None else None
                        results[idx] = ("crashed", f"checker process died (exit code {code}) during this check")
                        todo = chunk[k + 1:] + todo
                        self._restart()
                        break
                    assert got_idx == idx, (got_idx, idx)
                    results[idx] = (kind, value)
                    k += 1
                else:
                    if idx in retried:
                        results[idx] = ("timeout", f"check did not finish within {timeout_s:g} s, nor within "
                                                   f"{timeout_s * _RETRY_FACTOR:g} s on a fresh checker")
                        todo = chunk[k + 1:] + todo
                    else:   # a busy machine can starve a niced worker: one more try, alone, with a longer deadline
                        retried.add(idx)
                        todo = [chunk[k]] + chunk[k + 1:] + todo
                    self._restart()  # kill the runaway check; the rest go to a fresh worker
                    break
        return results


_REASONS = {"timeout": "checker_timeout", "error": "checker_error", "crashed": "checker_crashed"}


class VerifyConfig(Options):
    timeout_s: float = Field(5.0, gt=0, description="per-check timeout; a check over it becomes an error row "
                                                     "(reason checker_timeout)")
    only_unverified: bool = Field(False, description="check only rows no verifier has looked at yet (a second "
                                                     "verify after a stage that added rows)")


VERIFY_COLUMNS = ("final_answer", "answer_parse_ok", "is_correct", "reward", "verifier")   # what a verify stage fills


class VerifyStage(MapStage):
    """Checks final answers against reference answers; see the module doc for the row outcomes."""

    kind = "verify"
    description = "parse each final answer and check it against the reference (math-verify, per-check timeout)"
    config_class = VerifyConfig
    table = "attempts"
    reads = {"attempts": ("attempt_id", "problem_id", "completion"), "problems": ("problem_id", "reference_answer")}
    text_column = "completion"

    def __init__(self, config=None, name=None, context=None, check_fn: Optional[CheckFn] = None,
                 verifier_name: str = "math_verify"):
        super().__init__(config, name, context or StageContext())
        self.fills.setdefault(self.table, VERIFY_COLUMNS)
        self.check_fn = check_fn or math_verify_check
        self.verifier_name = verifier_name
        self._worker: Optional[CheckWorker] = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_worker"] = None  # a stage pickles into a Ray actor before setup; the worker is built there
        return state

    @property
    def worker(self) -> Optional[CheckWorker]:
        return self._worker

    def setup(self, engines=None) -> None:
        if self._worker is None:
            w = CheckWorker(self.check_fn)
            w.start()
            self._worker = w

    def teardown(self) -> None:
        if self._worker is not None:
            self._worker.stop()
            self._worker = None

    def describe(self) -> dict[str, Any]:
        try:
            from importlib.metadata import version
            mv = version("math-verify")
        except Exception:  # pragma: no cover
            mv = None
        fn = self.check_fn
        return {**super().describe(), "verifier": self.verifier_name, "math_verify_version": mv,
                "timeout_s": self.config.timeout_s, "check": f"{fn.__module__}.{getattr(fn, '__qualname__', repr(fn))}"}

    def check_answers(self, items: list[tuple[int, str, str]]) -> dict[int, tuple[str, Any]]:
        """Run (index, answer, reference) checks in the worker process; index -> (kind, value)."""
        if self._worker is None:
            self.setup()
        return self._worker.run(items, self.config.timeout_s)

    def process(self, rows, tables, stats: StageStats, shard):
        refs = {p["problem_id"]: p.get("reference_answer") for p in tables.get("problems", [])}
        out: list[dict | Failed] = []
        items: list[tuple[int, str, str]] = []
        for i, row in enumerate(rows):
            if self.config.only_unverified and row.get("verifier"):
                stats.count("already_verified")
                out.append(row)
                continue
            r = dict(row)
            ref = refs.get(r.get("problem_id"))
            ref = str(ref).strip() if ref is not None else ""
            if not ref:
                out.append(Failed("no_reference", "the row's problem has no reference answer"))
                continue
            ans = extract_answer(r.get(self.text_column) or "")
            r.update(final_answer=None if ans is None else str(ans), answer_parse_ok=ans is not None,
                     is_correct=None, reward=None, verifier=self.verifier_name)
            if ans is not None:
                items.append((i, str(ans), ref))
            out.append(r)
        if items:
            results = self.check_answers(items)
            for i, answer, ref in items:
                kind, value = results[i]
                if kind == "ok":
                    out[i].update(is_correct=value, reward=1.0 if value else 0.0, verifier=self.verifier_name)
                else:
                    raw = json.dumps({"final_answer": answer, "reference_answer": ref})
                    out[i] = Failed(_REASONS.get(kind, "checker_error"), str(value), raw_input=raw)
        return out

"""Progress a person can read: for each LLM stage, sequences done / total, output tokens/s and an ETA.

The build's engines count per stage (the stage's name is the tag of its requests): sequences planned and done, tokens,
shards seen. A ProgressMonitor thread polls them: in a terminal it draws one live bar per stage; when the output is
not a terminal (CI, `errata serve`) it logs one line per stage every ~10 s. A stage's total is exact once every shard
has sent its requests; before that it is extrapolated from the shards seen (shown with '~').
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Optional

log = logging.getLogger("errata.progress")


def _fmt_eta(s: Optional[float]) -> str:
    if s is None or s != s or s < 0:
        return "?"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def aggregate(per_engine: dict[str, dict]) -> dict[str, Any]:
    """Sum one tag's counters over the engines (replicas) that served it."""
    keys = ("planned_requests", "planned_sequences", "done_requests", "done_sequences", "failed_requests",
            "prompt_tokens", "completion_tokens")
    out: dict[str, Any] = {k: sum(p.get(k, 0) for p in per_engine.values()) for k in keys}
    shards: set = set()
    firsts = [p["first_submit"] for p in per_engine.values() if p.get("first_submit")]
    lasts = [p["last_done"] for p in per_engine.values() if p.get("last_done")]
    for p in per_engine.values():
        shards.update(p.get("shards") or [])
    out["shards"] = len(shards)
    out["first_submit"] = min(firsts) if firsts else None
    out["last_done"] = max(lasts) if lasts else None
    return out


def status_line(tag: str, a: dict[str, Any], shards_pending: int, now: float,
                live_tps: Optional[float] = None, down_s: Optional[float] = None) -> dict[str, Any]:
    """The numbers shown for one stage. `live_tps`: the engine's current output tokens/s (counted every engine
    step), when the engine reports it (vLLM in process); else the completion tokens of the finished requests (the
    usage figures an OpenAI-compatible server sends back) over the stage's time so far, up to its last finished
    request once every sequence is done. `down_s`: how long the stage's engine has been down (an outage), if it is."""
    done, planned = a["done_sequences"], a["planned_sequences"]
    exact = a["shards"] >= shards_pending or shards_pending <= 0
    total = planned if exact else int(round(planned / max(1, a["shards"]) * shards_pending))
    finished = exact and done >= total and a.get("last_done")
    end = a["last_done"] if finished else now
    elapsed = max(1e-6, end - a["first_submit"]) if a["first_submit"] else 0.0
    tps = live_tps if live_tps is not None else (a["completion_tokens"] / elapsed if elapsed else 0.0)
    rate = done / elapsed if elapsed else 0.0
    eta = (total - done) / rate if rate > 0 else None
    down = f", engine down for {down_s:.0f} s" if down_s is not None else ""
    text = (f"{tag}: {done}/{'' if exact else '~'}{total} sequences, {a['shards']}/{shards_pending} shards, "
            f"{tps:.0f} tok/s, ETA {_fmt_eta(eta) if done < total else '0m00s'}{down}")
    return {"tag": tag, "done": done, "total": total, "exact": exact, "tokens_per_s": tps, "eta_s": eta,
            "down_s": down_s, "text": text}


class ProgressMonitor:
    def __init__(self, engines: Any, plan: Any, interval: float = 0.5, log_every: float = 10.0,
                 stream: Any = None):
        self.engines, self.plan = engines, plan
        self.interval, self.log_every = interval, log_every
        from pipelines.console import console_stream
        self.stream = stream or console_stream()
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._bars: dict[str, Any] = {}
        self._pending: dict[str, int] = {}
        self._last_log = 0.0
        self._finished: set[str] = set()
        self._lock = threading.Lock()        # the poll thread and flush() both render
        self._live: dict[str, list[tuple[float, int]]] = {}   # engine -> recent (time, tokens generated)

    def start(self) -> "ProgressMonitor":
        self._thread = threading.Thread(target=self._loop, name="errata-progress", daemon=True)
        self._thread.start()
        return self

    def shard_done(self, result: dict) -> None:
        """Called by the build as each shard leaves a run (not needed for the numbers; kept for hooks)."""

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                with self._lock:
                    self.render(self.engines.progress())
            except Exception as e:  # progress must never break a build
                log.debug("progress poll failed: %s", e)

    def flush(self) -> None:
        """Show the stages that have just finished, now: the build calls this when a run of stages ends, so a stage's
        last progress line comes before the line that reports the stage done (not after the whole build)."""
        try:
            with self._lock:
                self.render(self.engines.progress(), finished_only=True)
        except Exception as e:  # progress must never break a build
            log.debug("progress flush failed: %s", e)

    def _shards_pending(self, tag: str) -> int:
        if tag not in self._pending:
            try:
                self._pending[tag] = len(self.plan.pending(tag))
            except Exception:
                self._pending[tag] = len(self.plan.shard_ids)
        return self._pending[tag]

    def _engine_rate(self, key: str, live: dict, window: float = 15.0) -> Optional[float]:
        if "generation_tokens" not in live:
            return None
        hist = self._live.setdefault(key, [])
        hist.append((live.get("at") or time.time(), int(live["generation_tokens"])))
        while len(hist) > 2 and hist[-1][0] - hist[0][0] > window:
            hist.pop(0)
        if len(hist) < 2 or hist[-1][0] <= hist[0][0]:
            return None
        return (hist[-1][1] - hist[0][1]) / (hist[-1][0] - hist[0][0])

    def render(self, progress: dict[str, dict], final: bool = False, finished_only: bool = False) -> list[dict]:
        """Draw (terminal) or print (otherwise) each stage's status. Printing happens every `log_every` seconds, at
        `final`, or with `finished_only` for the stages that reached their total since they were last shown."""
        now = time.time()
        progress = dict(progress)
        engines = progress.pop("__engine__", {})
        rates = {k: self._engine_rate(k, live) for k, live in engines.items()}
        lines = []
        for tag, per in sorted(progress.items()):
            known = [rates[k] for k in per if rates.get(k) is not None]
            downs = [engines[k]["down_s"] for k in per if (engines.get(k) or {}).get("down_s") is not None]
            lines.append(status_line(tag, aggregate(per), self._shards_pending(tag), now,
                                     sum(known) if known else None, max(downs) if downs else None))
        if self.tty:
            from tqdm import tqdm
            for ln in lines:
                bar = self._bars.get(ln["tag"])
                if bar is None:
                    import shutil
                    cols = shutil.get_terminal_size((0, 0)).columns
                    width = {"dynamic_ncols": True} if cols > 0 else {"ncols": 100}   # a pty may report width 0
                    bar = self._bars[ln["tag"]] = tqdm(total=ln["total"], desc=ln["tag"], unit="seq",
                                                       file=self.stream, position=len(self._bars), leave=True,
                                                       **width)
                bar.total = ln["total"]
                bar.n = ln["done"]
                down = f", engine down for {ln['down_s']:.0f} s" if ln["down_s"] is not None else ""
                bar.set_postfix_str(f"{ln['tokens_per_s']:.0f} tok/s{down}", refresh=False)
                bar.refresh()
        elif finished_only:
            for ln in lines:
                if ln["total"] and ln["done"] >= ln["total"] and ln["tag"] not in self._finished:
                    print(ln["text"], file=self.stream, flush=True)
                    self._finished.add(ln["tag"])
        elif final or now - self._last_log >= self.log_every:
            self._last_log = now
            for ln in lines:
                if ln["done"] < ln["total"] or ln["tag"] not in self._finished:
                    print(ln["text"], file=self.stream, flush=True)
                    if ln["done"] >= ln["total"]:
                        self._finished.add(ln["tag"])
        return lines

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            with self._lock:
                self.render(self.engines.progress(), final=True)
        except Exception:
            pass
        for bar in self._bars.values():
            bar.close()

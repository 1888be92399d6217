"""`errata serve`: the foreground process that executes scheduled builds and exports.

With PREFECT_API_URL set it serves against that server. Otherwise it starts a local `prefect server start`
(its own process group, a free port on 127.0.0.1, state in PREFECT_HOME = <data root>/prefect), waits for
/api/health, and serves. A temporary (ephemeral) Prefect server never schedules runs, which is why serve needs a
real one.

Stopping: Ctrl-C / SIGTERM ends every flow run in flight at once (its process tree: the build, its Ray, its engines;
the run's finished shards and stages stay in staging, so the next run of that schedule, or `errata build` with the
same recipe, resumes it), then the server; a watchdog makes sure serve is gone within `STOP_DEADLINE_S` even if
Prefect's own shutdown hangs. The server cannot outlive serve: it gets SIGTERM when serve dies, however it dies
(PR_SET_PDEATHSIG), and a server left by an earlier serve (recorded in PREFECT_HOME/errata-server.json) is stopped
by the next one. At its start, serve marks the runs whose process is gone (killed with kill -9, lost) Crashed
(flows/lost_runs.py).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional

from flows._env import prefect_env, server_file
from flows.children import die_with_parent
from schemas.errors import ErrataError

Log = Callable[[str], None]
STOP_DEADLINE_S = 8.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class LocalServer:
    """A `prefect server start` subprocess in its own process group."""

    def __init__(self, home: Path, host: str = "127.0.0.1", port: Optional[int] = None):
        self.home, self.host, self.port = Path(home), host, port
        self.proc: Optional[subprocess.Popen] = None
        self.started_s: Optional[float] = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 180.0, log: Log = print) -> "LocalServer":
        import httpx
        self.port = self.port or free_port(self.host)
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        env.update(PREFECT_HOME=str(self.home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
                   PREFECT_UI_API_URL=self.url)
        self.home.mkdir(parents=True, exist_ok=True)
        logf = open(self.home / "server.log", "ab")
        t0 = time.time()
        self.proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", self.host,
                                      "--port", str(self.port)], env=env, stdout=logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True,
                                     preexec_fn=die_with_parent())
        logf.close()
        log(f"starting a local Prefect server on {self.ui_url} (log: {self.home / 'server.log'})")
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise ErrataError(f"the local Prefect server exited with {self.proc.returncode}; "
                                  f"see {self.home / 'server.log'}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    self.started_s = round(time.time() - t0, 1)
                    log(f"Prefect server healthy after {self.started_s} s")
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise ErrataError(f"the local Prefect server was not healthy after {timeout:.0f} s; "
                          f"see {self.home / 'server.log'}")

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM the server's process group, SIGKILL what is left after `grace` seconds."""
        if not self.proc:
            return
        pgid = self.proc.pid
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
            if not _group_alive(pgid):
                break
        self.proc = None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _reap_children(grace: float = 3.0, spare: Optional[int] = None) -> None:
    """End every process this one started that is still running (flow-run subprocesses, their Ray and engines):
    SIGTERM, then SIGKILL after `grace` seconds. `spare` is a process group left alone (the server, stopped last)."""
    import psutil
    kids = []
    for p in psutil.Process().children(recursive=True):
        try:
            if spare is None or os.getpgid(p.pid) != spare:
                kids.append(p)
        except (psutil.Error, ProcessLookupError):
            pass
    for p in kids:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(kids, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass


def stop_stale_server(home: Path, log: Log = print) -> bool:
    """Stop a local server that an earlier `errata serve` of this PREFECT_HOME left running (its serve is gone).
    True if one was stopped."""
    import psutil
    f = server_file(home)
    try:
        rec = json.loads(f.read_text())
        serve_pid, server_pid = int(rec["pid"]), int(rec.get("server_pid") or 0)
    except (OSError, ValueError, KeyError):
        return False
    if psutil.pid_exists(serve_pid) and serve_pid != os.getpid():
        try:
            if "errata" in " ".join(psutil.Process(serve_pid).cmdline()):
                return False   # its serve still runs: not stale
        except psutil.Error:
            pass
    stopped = False
    if server_pid and psutil.pid_exists(server_pid):
        try:
            cmd = " ".join(psutil.Process(server_pid).cmdline())
        except psutil.Error:
            cmd = ""
        if "prefect" in cmd and "server" in cmd:
            log(f"stopping a Prefect server left by an earlier errata serve (pid {server_pid})")
            for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 2.0)):
                try:
                    os.killpg(server_pid, sig)
                except (ProcessLookupError, PermissionError):
                    break
                t0 = time.time()
                while time.time() - t0 < wait and _group_alive(server_pid):
                    time.sleep(0.2)
                if not _group_alive(server_pid):
                    break
            stopped = True
    try:
        f.unlink()
    except OSError:
        pass
    return stopped


class _Shutdown:
    """Ctrl-C / SIGTERM: end the runs in flight now, then let serve stop; after STOP_DEADLINE_S force the exit."""

    def __init__(self, log: Log):
        self.log = log
        self.server: Optional[LocalServer] = None
        self.sfile: Optional[Path] = None
        self.started = threading.Event()

    def __call__(self, signum, frame) -> None:
        if not self.started.is_set():
            self.started.set()
            self.log("stopping: ending the runs in flight (their finished work stays; the next run resumes it)")
            threading.Thread(target=self._watchdog, daemon=True).start()
            spare = self.server.proc.pid if self.server and self.server.proc else None
            threading.Thread(target=_reap_children, kwargs={"grace": 2.0, "spare": spare}, daemon=True).start()
        raise KeyboardInterrupt

    def _watchdog(self) -> None:
        time.sleep(STOP_DEADLINE_S)
        self.log(f"Prefect's shutdown did not finish within {STOP_DEADLINE_S:.0f} s: stopping everything now")
        _reap_children(grace=0.5)
        if self.server:
            self.server.stop(grace=1.0)
        if self.sfile is not None:
            try:
                self.sfile.unlink()
            except OSError:
                pass
        os._exit(0)


def serve(data: Optional[str] = None, repo_file: Optional[str | Path] = "default", host: str = "127.0.0.1",
          port: Optional[int] = None, poll_s: float = 5.0, limit: Optional[int] = 1, log: Log = print) -> int:
    """Serve every schedule (repo file + local file) until Ctrl-C / SIGTERM. Returns an exit code."""
    home = prefect_env(data)
    if data:
        os.environ["ERRATA_DATA"] = str(Path(data).resolve()) if "://" not in data else data
    elif not os.environ.get("ERRATA_DATA"):
        os.environ["ERRATA_DATA"] = str(Path("data").resolve())  # runs execute with the same root
    from flows.schedules import REPO_SCHEDULES, ScheduleBook
    book = ScheduleBook(os.environ["ERRATA_DATA"], REPO_SCHEDULES if repo_file == "default" else repo_file)
    specs = [s for s, _ in book.all()]  # validates everything before anything starts

    server: Optional[LocalServer] = None
    sfile = server_file(home)
    own_url = False
    shutdown = _Shutdown(log)
    old = {s: signal.signal(s, shutdown) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        if not os.environ.get("PREFECT_API_URL"):
            stop_stale_server(home, log)
            server = LocalServer(home, host, port)
            shutdown.server, shutdown.sfile = server, sfile
            server.start(log=log)
            os.environ["PREFECT_API_URL"] = server.url
            own_url = True
            sfile.write_text(json.dumps({"url": server.url, "ui": server.ui_url, "pid": os.getpid(),
                                         "server_pid": server.proc.pid}))
        url = os.environ["PREFECT_API_URL"]
        from prefect.settings import PREFECT_API_URL, temporary_settings
        with temporary_settings(updates={PREFECT_API_URL: url}):
            ui = server.ui_url if server else url.rsplit("/api", 1)[0]
            log(f"serving {len(specs)} schedule(s) against {url}; Prefect UI: {ui}; Ctrl-C stops")
            from flows.lost_runs import mark_lost_runs_quietly
            mark_lost_runs_quietly(log=log)     # runs of a serve or build killed earlier: Crashed, not Running
            for s in specs:
                log(f"  {s.name:<24} {s.what}, {s.when}{' (paused)' if s.paused else ''}")
            _run(book, specs, poll_s, limit, log, shutdown)
    except KeyboardInterrupt:
        if not shutdown.started.is_set():
            log("stopping")
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        _reap_children(grace=2.0, spare=server.proc.pid if server and server.proc else None)
        if server:
            server.stop(grace=4.0)
            log("local Prefect server stopped")
        if own_url:
            os.environ.pop("PREFECT_API_URL", None)
            try:
                sfile.unlink()
            except OSError:
                pass
    return 0


def _run(book, specs, poll_s: float, limit: Optional[int], log: Log, on_signal: Callable) -> None:
    import asyncio

    from prefect.runner import Runner

    from flows.schedules import ato_deployment

    async def main() -> None:
        runner = Runner(name="errata-serve", pause_on_shutdown=True, limit=limit)
        runner.handle_sigterm = lambda *a, **k: on_signal(signal.SIGTERM, None)   # Runner installs it on start
        served: dict[str, object] = {}
        for s in specs:
            await runner.aadd_deployment(await ato_deployment(s))
            served[s.name] = s
        sig = book.signature()

        async def watch() -> None:
            nonlocal sig
            while True:
                await asyncio.sleep(poll_s)
                if book.signature() == sig:
                    continue
                sig = book.signature()
                try:
                    now = {s.name: s for s, _ in book.all()}
                except ErrataError as e:
                    log(f"schedules not reloaded: {e}")
                    continue
                for name, s in now.items():
                    if served.get(name) != s:
                        await runner.aadd_deployment(await ato_deployment(s))
                        log(f"schedule {'updated' if name in served else 'added'}: {name} ({s.what}, {s.when})")
                for name in set(served) - set(now):
                    await _delete_deployment(served[name])
                    log(f"schedule removed: {name}")
                served.clear()
                served.update(now)

        watcher = asyncio.create_task(watch())
        try:
            await runner.start()
        finally:
            watcher.cancel()

    asyncio.run(main())


async def _delete_deployment(spec) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    async with get_client() as client:
        try:
            d = await client.read_deployment_by_name(f"{spec.flow_name}/{spec.name}")
            await client.delete_deployment(d.id)
        except ObjectNotFound:
            pass

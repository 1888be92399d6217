"""Prefect's temporary server for `errata build`, started by errata in a session of its own.

Without PREFECT_API_URL, Prefect starts a temporary API server (uvicorn) as a child of the build, in the build's
process group. A Ctrl-C in the terminal goes to the whole group, so the server died with the first Ctrl-C while the
flow still had to report its crash to it: the build then spent over a minute retrying the dead server and ended with
rc 1, Prefect's "Error logging to API" and an httpx ConnectError (measured from Ctrl-C to exit: 78 s during the
engine's start on the embedded model, 138 s mid-build on the fake engine; now 3 s on the fake engine). errata starts the
same server first, from the main thread, in its own session: a terminal's Ctrl-C reaches only the build, which reports
the interrupted run and stops the server on its way out (Prefect's atexit); a build killed outright takes the server
with it (PR_SET_PDEATHSIG). Prefect then finds its server running and uses it.
"""
from __future__ import annotations

import os
import subprocess
import threading
from typing import Any, Optional

from flows.children import die_with_parent


class _SubprocessApart:
    """What Prefect's server module sees as `subprocess`: the same module, except that Popen starts the child in a
    session of its own, tied to this process's life."""

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    @staticmethod
    def Popen(*args: Any, **kwargs: Any) -> subprocess.Popen:
        kwargs.setdefault("start_new_session", True)
        if threading.current_thread() is threading.main_thread():   # PDEATHSIG follows the starting thread
            kwargs.setdefault("preexec_fn", die_with_parent())
        return subprocess.Popen(*args, **kwargs)


def start_temporary_server() -> Optional[str]:
    """Start Prefect's temporary server apart from the build's process group, unless a server is configured
    (PREFECT_API_URL in the environment or Prefect's profile), the user turned Prefect's temporary server off, or
    it is already up. Returns its API URL, or None when Prefect will use another server (or none)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_ALLOW_EPHEMERAL_MODE
    if os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value() or not PREFECT_SERVER_ALLOW_EPHEMERAL_MODE.value():
        return None
    import prefect.server.api.server as server_module
    if not isinstance(server_module.subprocess, _SubprocessApart):
        server_module.subprocess = _SubprocessApart()
    server = server_module.SubprocessASGIServer()
    if not server.running:
        server.start()
    return server.api_url

"""Child processes that must not outlive errata: a server it starts dies with it, however errata dies."""
from __future__ import annotations

import ctypes
import signal
import sys
from typing import Callable, Optional

_PR_SET_PDEATHSIG = 1


def _libc() -> Optional[ctypes.CDLL]:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None


_LIBC = _libc()    # loaded here, in the parent: the child between fork and exec only makes one call


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGTERM this process when the thread that started it ends (the parent's main thread, where
    errata starts its servers): no orphaned server after a kill -9 of errata."""
    try:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def die_with_parent() -> Optional[Callable[[], None]]:
    """A `preexec_fn` for subprocess.Popen that ties the child's life to this process; None where Linux's
    PR_SET_PDEATHSIG is not available. Start the child from the main thread: the signal follows the thread."""
    return _die_with_parent if _LIBC is not None else None

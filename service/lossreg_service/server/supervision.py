"""A worker process dies with its supervisor.

``lossreg serve --workers N`` runs uvicorn's supervisor with N worker processes sharing the
listening socket. If the supervisor is killed (SIGKILL, the OOM killer) the workers would go on
serving unsupervised and holding the port, so a restarted server could not bind it. On Linux a
worker asks the kernel (``prctl(PR_SET_PDEATHSIG, SIGKILL)``) to be killed when its parent
dies; elsewhere a daemon thread polls the parent's pid once a second and exits likewise.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time

__all__ = ["die_with_supervisor"]

log = logging.getLogger("lossreg.server")

_PR_SET_PDEATHSIG = 1


def die_with_supervisor() -> bool:
    """In a worker process started by a supervisor, end when the supervisor ends.

    Returns True when this process has a supervisor (and is now bound to it).
    """
    parent = multiprocessing.parent_process()
    if parent is None or parent.pid is None:
        return False  # the main process (``--workers 1``, tests): nothing above to outlive
    if sys.platform.startswith("linux") and _pdeathsig():
        if os.getppid() != parent.pid:  # it died before the prctl call
            os._exit(1)
        return True
    threading.Thread(
        target=_watch, args=(parent.pid,), name="lossreg-supervisor-watch", daemon=True
    ).start()
    return True


def _pdeathsig() -> bool:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    log.warning("the supervisor (pid %d) is gone; this worker exits", parent_pid)
    os._exit(1)

"""Process utilities of the launchers (suite workers, local DDP ranks)."""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import time


def die_with_parent(parent_pid: int) -> None:
    """End this worker when the suite process is gone (e.g. SIGKILLed): the run in flight is lost, nothing is
    half-stored. Linux: the kernel sends SIGKILL at the parent's death (``PR_SET_PDEATHSIG``); elsewhere, and as
    a fallback, a thread polls the parent id."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # it died before the line above
        os._exit(3)

    def poll():
        while True:
            time.sleep(0.5)
            if os.getppid() != parent_pid:
                os._exit(3)

    threading.Thread(target=poll, daemon=True).start()

"""Keep freed tensor memory in the process instead of handing it back to the OS after every step.

A CPU training step allocates and frees the same large tensors (activations, gradients: tens of MB at batch
4096) every step. glibc's ``malloc`` serves blocks above its mmap threshold with fresh ``mmap`` calls and
returns the top of the heap to the OS above its trim threshold, so every step touches new pages and pays one
page fault per 4 KiB page: thousands of minor faults per Crocodile or ME-MMoE step (the documentation's
performance page gives the measured figures). Raising both thresholds keeps the
pages mapped and reused, so a steady-state step has no page faults at all (``mdl-bench perf`` reports the
effect). The price: the process keeps its peak heap mapped (RSS stays at the peak instead of shrinking
between steps); the peak itself does not change.

This is what jemalloc/tcmalloc (``LD_PRELOAD``) achieve, done with ``mallopt`` so that nothing needs to be
installed or set before the process starts. Elsewhere than glibc it does nothing, and ``MDL_BENCH_MALLOC=default``
in the environment keeps glibc's defaults (for a preloaded jemalloc/tcmalloc, or to measure the difference).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30  # blocks below 1 GiB come from the heap (glibc's default adapts up to 32 MiB only)
TRIM_THRESHOLD = (1 << 31) - 1  # never trim the heap top below 2 GiB free (an ``int`` is the largest accepted)

_state: dict[str, bool] = {}


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; True if they are (now) set."""
    if "done" in _state:
        return _state["done"]
    ok = False
    if sys.platform.startswith("linux") and os.environ.get("MDL_BENCH_MALLOC", "").lower() != "default":
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
                libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
        except (OSError, AttributeError):  # not glibc (musl has no mallopt): keep the default allocator
            ok = False
    _state["done"] = ok
    return ok

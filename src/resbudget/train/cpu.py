"""CPU-side tuning applied once per process when training on the CPU."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

NO_TUNING_ENV = "RESBUDGET_NO_MALLOPT"

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4
_SETTINGS = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1), (_M_TOP_PAD, 1 << 30))
_tuned: bool | None = None


def tune_allocator() -> bool:
    """Make glibc keep freed memory for reuse instead of handing it back to the kernel after every step.

    Training frees and re-allocates the same large activation buffers each step; with glibc's defaults those go
    through mmap/munmap (or heap trimming) every time, and the page faults show up as system time. This is what
    ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=... MALLOC_TOP_PAD_=1GiB`` do, set from inside the process. Returns
    whether it was applied: not off glibc (macOS, Windows, musl) or when ``RESBUDGET_NO_MALLOPT=1`` is set.
    """
    global _tuned
    if os.environ.get(NO_TUNING_ENV, "") not in ("", "0"):
        return False
    if _tuned is not None:
        return _tuned
    _tuned = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):
            return False
        mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        _tuned = all(mallopt(param, value) == 1 for param, value in _SETTINGS)
    return _tuned

"""How the process's C allocator treats freed memory, set once at the command line's edge.

A training step allocates and frees the same large activation and gradient buffers every step. glibc's malloc serves
buffers over its mmap threshold with fresh mappings and gives them back to the kernel when freed, so every step pays
for new pages again: system time and page faults rather than arithmetic. Told to serve everything from its heap and
never to trim it, malloc keeps the freed buffers and hands them out again. The price is a higher peak of resident
memory (the heap keeps its high-water mark). Set through ``mallopt`` for the rest of the process, before PyTorch
allocates anything large; elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

OPT_OUT = "RESBUDGET_KEEP_FREED_MEMORY"  # "0": leave the allocator as it is

# mallopt's parameters (glibc's malloc.h) and the values set
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
NEVER_TRIM = 2**31 - 1  # the largest value mallopt takes: a free top of the heap is handed back only above 2 GiB
TOP_PAD = 64 * 2**20  # each growth of the heap asks for this much more, so that growing is rare


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory for reuse (see the module's docstring). False where it did not: not
    Linux with glibc, or ``$RESBUDGET_KEEP_FREED_MEMORY`` is "0"."""
    if os.environ.get(OPT_OUT) == "0" or not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - glibc only: musl has a mallopt that ignores these
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, NEVER_TRIM),
                                                              (M_TOP_PAD, TOP_PAD)))

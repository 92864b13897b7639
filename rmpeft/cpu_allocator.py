"""CPU runs: keep freed memory inside the process, so that each step reuses pages instead of faulting
fresh ones in.

glibc's ``malloc`` hands freed blocks above its mmap threshold, and free heap tops above its trim
threshold, back to the kernel; the next step asks for the same sizes again and the kernel faults them
back in page by page, zero-filling each. For a forward of SmolLM2-135M on a 2-core CPU the element-wise
operations spent most of their time on those faults, about a quarter of an evaluation step. Fixing
the mmap threshold at its maximum (32 MiB on 64-bit) and trimming only above 2 GiB of free heap keeps the memory; the resident
set then stays at the run's peak, which it reaches in its first steps anyway. Blocks above 32 MiB are
still mapped and unmapped by glibc.

Written here because no library does it from inside a running interpreter: jemalloc or tcmalloc would
have to be preloaded (``LD_PRELOAD``) before Python starts. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024     # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit
NEVER_TRIM = 2**31 - 1                    # mallopt takes an int: 2 GiB of free heap top

_applied = False


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") else None


def keep_freed_memory() -> bool:
    """Set glibc's thresholds so that freed memory stays in the process. Idempotent; True where it applies."""
    global _applied
    if _applied:
        return True
    libc = _libc()
    if libc is None:
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1
    ok = libc.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM) == 1 and ok
    if ok:
        log.debug("glibc malloc: freed memory kept in the process (mmap threshold 32 MiB, no trimming)")
    _applied = ok
    return ok

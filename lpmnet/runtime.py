"""Process-wide settings for the command line and the workflow's jobs (not applied on import)."""

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_LARGE_HEAP_BYTES = 1 << 30


def keep_freed_memory_for_reuse():
    """Let glibc reuse freed blocks of up to 1 GiB instead of returning them to the system.

    By default glibc maps every block above its dynamic threshold (at most 32 MiB) fresh, and the kernel
    zero-fills it page by page. LPM-Net's inference keeps its temporaries below that on its own
    (lpmnet.methods.lpmnet.network._PASS_BYTES); the 2D methods' slice passes and training still allocate larger ones:
    with these thresholds MambaDFuse and ASFE-Fusion fuse 15-20 % faster (2 CPU cores). The price is a
    higher resident size between passes, which is why only our own processes (the ``lpmnet`` program
    and the workflow's jobs) do this. No effect outside glibc (returns False).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, _LARGE_HEAP_BYTES) == 1
        ok = libc.mallopt(_M_TRIM_THRESHOLD, _LARGE_HEAP_BYTES) == 1 and ok
    except (OSError, AttributeError):  # not glibc (e.g. musl): keep the allocator's defaults
        return False
    log.debug("glibc malloc thresholds raised to %d bytes: %s", _LARGE_HEAP_BYTES, ok)
    return ok


def release_freed_memory():
    """Hand the heap's free pages back to the system (glibc ``malloc_trim``); False where not glibc.

    With :func:`keep_freed_memory_for_reuse` a series of large passes (fusion tiles) fragments the heap,
    and the resident size grows from pass to pass (measured: +17 % by the second 96^3 pass). Trimming
    between passes keeps it at the first pass's level, which is what the jobs' ``mem_mb`` is sized for.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False

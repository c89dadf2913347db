"""The compiled CPU kernels of this process: the one extension module of :mod:`lpmnet.ops.build` (every
operation's kernel and the methods' own), loaded or built at first use, and the record of that load.

:func:`module` is what the operations' bindings call (``module(strict=True)`` raises
:class:`~lpmnet.errors.BackendUnavailableError` where the module cannot be built; ``strict=False`` gives
None, and the caller falls back to its pure-PyTorch code). A failed build is tried once per process and
logged once (logger ``lpmnet.ops.cpu``, WARNING).
"""

from __future__ import annotations

import logging
import threading
import time

from lpmnet.errors import BackendUnavailableError
from lpmnet.ops import build

__all__ = ["module", "cpu_kernel_info", "cpu_kernel_load"]

log = logging.getLogger(__name__)

_lock = threading.RLock()
_state = {"tried": False, "module": None, "error": None, "seconds": None, "origin": None}


def _load_cpu_kernel(openmp=None):
    module, _state["origin"] = build.load(openmp)
    return module


def _first_error_line(exc: BaseException) -> str:
    """The first compiler error line of a failed build (gcc/clang 'file:line:col: error: ...')."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for pattern in ("error:", "error"):
        for ln in lines:
            low = ln.lower()
            if pattern in low and not low.startswith("error building extension"):
                return ln
    return lines[0] if lines else type(exc).__name__


def module(strict: bool):
    """The compiled module, or None (strict=False) / BackendUnavailableError (strict=True)."""
    with _lock:
        if not _state["tried"]:
            _state["tried"] = True
            started = time.perf_counter()
            try:
                try:
                    _state["module"] = _load_cpu_kernel()
                except Exception as exc:
                    if not build.wants_openmp() or isinstance(exc, build.BuildLockTimeout):
                        raise
                    # e.g. a compiler without OpenMP support: a single-threaded kernel still
                    # beats the pure-torch scan.
                    log.warning("lpmnet.ops.cpu: building the C++ kernel with -fopenmp failed (%s); "
                                "retrying without OpenMP (single-threaded kernel)",
                                _first_error_line(exc))
                    _state["module"] = _load_cpu_kernel(openmp=False)
            except Exception as exc:  # compiler missing, build error, import error
                _state["error"] = _first_error_line(exc)
                log.warning(
                    "lpmnet.ops.cpu: building the C++ CPU selective-scan kernel failed; falling back "
                    "to the (slower) pure-torch scan. First compiler error: %s",
                    _state["error"],
                )
            # every attempt counts, a failed build too: a fusion leaves these seconds out of its own
            _state["seconds"] = time.perf_counter() - started
        loaded, error = _state["module"], _state["error"]
    if loaded is None and strict:
        raise BackendUnavailableError(
            "selective_scan backend='cpu' is unavailable: building the C++ kernels "
            f"(lpmnet.ops.build) failed ({error}). It needs a C++17 compiler (g++ or clang++) and "
            "ninja (`pip install ninja`); use backend='torch' or 'auto' to run without it."
        )
    return loaded


def error() -> str | None:
    """The first error line of this process's failed build, None when none failed (loads nothing)."""
    with _lock:
        return _state["error"]


def cpu_kernel_info() -> dict:
    """State of the C++ kernel: its module name, the capability, where it came from (prebuilt, cached,
    built), the seconds its load or build took, the build error (loads or builds it)."""
    module(strict=False)
    return {
        "name": getattr(_state["module"], "__name__", None),
        "capability": build.capability(),
        "available": _state["module"] is not None,
        "origin": _state["origin"],
        "seconds": _state["seconds"],
        "error": _state["error"],
    }


def cpu_kernel_load() -> dict | None:
    """``{"origin", "seconds"}`` of this process's attempt to load (or build) the kernel, origin None when it
    failed; None before any attempt (loads nothing)."""
    with _lock:
        return None if _state["seconds"] is None else {"origin": _state["origin"], "seconds": _state["seconds"]}

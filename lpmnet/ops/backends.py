"""Which implementation the operations run: the backends, mamba-ssm's optional CUDA packages, the choice for
a device, and a log line per choice.

Backends (``backend=`` of :func:`lpmnet.ops.selective_scan.selective_scan` and
:func:`lpmnet.ops.causal_conv1d.causal_conv1d`, ``scan_backend`` of the Mamba models):

* ``"cuda"``  - mamba-ssm's (and causal-conv1d's) fused kernels (importable, CUDA tensors).
* ``"cpu"``   - the project's C++ kernels (:mod:`lpmnet.ops.cpu`, built by :mod:`lpmnet.ops.build`).
* ``"torch"`` - pure PyTorch, any device.
* ``"auto"``  - cuda if possible, else cpu for CPU tensors, else torch.
"""

from __future__ import annotations

import logging
import threading

import torch

from lpmnet.errors import BackendUnavailableError
from lpmnet.ops import cpu

__all__ = ["BACKENDS", "available_backends", "resolve_backend"]

BACKENDS = ("auto", "cuda", "cpu", "torch")
INSTALL_HINT = (
    "install a CUDA build of torch, then `pip install --no-build-isolation mamba-ssm causal-conv1d`"
)

_lock = threading.RLock()
_logged: set = set()


def log_once(logger, key, msg, *args, level=logging.INFO):
    """``logger.log(level, msg, *args)`` the first time ``key`` is seen in this process."""
    with _lock:
        if key in _logged:
            return
        _logged.add(key)
    logger.log(level, msg, *args)


# --------------------------------------------------------------------------------------------
# Optional CUDA packages (imported lazily, result cached)
# --------------------------------------------------------------------------------------------

_optional: dict = {}


def import_optional(key):
    """Returns (function, None) or (None, reason) for 'mamba_ssm' / 'causal_conv1d'."""
    with _lock:
        if key in _optional:
            return _optional[key]
        try:
            if key == "mamba_ssm":
                from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as fn
            else:
                from causal_conv1d import causal_conv1d_fn as fn
            res = (fn, None)
        except Exception as exc:  # ImportError, or a broken CUDA extension (OSError, ...)
            res = (None, f"{type(exc).__name__}: {exc}".splitlines()[0])
        _optional[key] = res
        return res


def mamba_problems() -> list:
    """Why mamba-ssm's CUDA scan cannot run in this process (empty list: it can)."""
    problems = []
    if not torch.cuda.is_available():
        problems.append(
            "torch.cuda is not available (torch %s is a %s build)"
            % (torch.__version__, "CUDA" if torch.version.cuda else "CPU-only")
        )
    fn, why = import_optional("mamba_ssm")
    if fn is None:
        problems.append(f"mamba_ssm is not importable ({why})")
    return problems


def mamba_reason():
    """None when mamba-ssm's CUDA scan can run here, else why not (one line)."""
    problems = mamba_problems()
    return "; ".join(problems) if problems else None


# --------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------


def available_backends() -> list:
    """Concrete backends usable in this process ("cuda" needs a GPU and mamba-ssm).

    Note: this builds (or loads from the cache) the C++ CPU kernel.
    """
    names = []
    if mamba_reason() is None:
        names.append("cuda")
    if cpu.module(strict=False) is not None:
        names.append("cpu")
    names.append("torch")
    return names


def resolve_backend(backend: str = "auto", device="cpu") -> str:
    """Concrete backend ("cuda", "cpu" or "torch") for tensors on ``device``.

    An explicit backend that cannot run raises BackendUnavailableError.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown selective-scan backend {backend!r}; choose one of {BACKENDS}")
    dev = torch.device(device)
    if backend == "cuda":
        problems = []
        if dev.type != "cuda":
            problems.append(f"the tensors are on '{dev.type}', not on a CUDA device")
        problems += mamba_problems()
        if problems:
            raise BackendUnavailableError(
                "selective_scan backend='cuda' is unavailable: " + "; ".join(problems) + ". "
                f"To use mamba-ssm's fused CUDA kernels, {INSTALL_HINT}, and pass CUDA tensors; "
                "or use backend='auto' (it picks 'cpu' or 'torch' where 'cuda' cannot run)."
            )
        return "cuda"
    if backend == "cpu":
        if dev.type != "cpu":
            raise BackendUnavailableError(
                f"selective_scan backend='cpu' runs on CPU tensors only, got '{dev.type}'; "
                "use backend='auto', 'cuda' or 'torch'."
            )
        cpu.module(strict=True)
        return "cpu"
    if backend == "torch":
        return "torch"
    if dev.type == "cuda" and mamba_reason() is None:
        return "cuda"
    if dev.type == "cpu" and cpu.module(strict=False) is not None:
        return "cpu"
    return "torch"


def auto_note(name, device) -> str:
    """Why "auto" picked the slower ``name`` on ``device`` (empty where it did not)."""
    dev = torch.device(device)
    if name == "torch" and dev.type == "cuda":
        return f" ({mamba_reason()}; for mamba-ssm's fused kernels, {INSTALL_HINT})"
    if name == "torch" and dev.type == "cpu" and cpu.error():
        return f" (C++ kernel unavailable: {cpu.error()})"
    return ""

"""The compiled CPU kernels: built when the package is installed, else once per machine.

One extension module holds every kernel: the sources of :func:`sources` (``lpmnet/ops/csrc/*.cpp``, the
operations and the module's bindings, then ``lpmnet/methods/*/csrc/*.cpp``, the kernels specific to one
method), each of which registers its functions with the module (``lpmnet/ops/csrc/common.h``).

Prebuilt: ``pip install .`` (and ``make install``) compile one extension module per CPU capability that
PyTorch dispatches on (DEFAULT, AVX2 and AVX512 on x86-64; DEFAULT elsewhere) into the package,
``lpmnet/ops/_kernels_<capability>``. Each carries the key of what it was compiled from (:func:`kernel_key`:
the sources, the flags, torch's and Python's versions); a process loads the module of its capability when
the key matches, which takes milliseconds. The key covers every source and header of :func:`sources` and
:func:`headers`: editing any of them makes the prebuilt modules stale.

Just in time: where no prebuilt module fits (another capability, another torch in a conda environment, a
source being edited), :func:`load` compiles the module with ``torch.utils.cpp_extension`` into
``<torch extension cache>/lpmnet`` (``TORCH_EXTENSIONS_DIR`` moves it). A killed build must not block
the jobs after it: torch's own lock file has no timeout and outlives a killed holder. So every build of
one key holds an operating-system lock (``<name>.lock``, flock: the kernel releases it when the holder
dies, however it dies), compiles in a directory of its own and renames that into place once it succeeded.
A process that finds the module built loads it; one that finds the leftovers of a dead build removes
them and builds. Concurrent first users build once.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import logging
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)

PACKAGE = Path(__file__).resolve().parents[1]
#: Where the sources of the module are: the operations' (with the module's bindings) and each method's.
SOURCE_DIRS = ("ops/csrc", "methods/*/csrc")
#: The capabilities with a prebuilt module on x86-64 (torch.backends.cpu.get_cpu_capability()).
X86_CAPABILITIES = ("DEFAULT", "AVX2", "AVX512")
#: How long a process waits for another one's build of the same module before it gives up (a build takes
#: about a minute on 2 cores; the lock of a dead holder is released at once).
BUILD_LOCK_TIMEOUT_S = 1800


def sources() -> list[Path]:
    """The C++ sources compiled into the module: ``*.cpp`` of :data:`SOURCE_DIRS`, sorted in each.

    Their file names must differ: a just-in-time build names each object file after its source's."""
    found = [path for pattern in SOURCE_DIRS for path in sorted(PACKAGE.glob(f"{pattern}/*.cpp"))]
    names = [path.name for path in found]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise RuntimeError(f"CPU kernel sources with the same file name ({', '.join(duplicates)}): rename one")
    return found


def headers() -> list[Path]:
    """The headers the sources include (``*.h`` of :data:`SOURCE_DIRS`): part of the key, not compiled."""
    return [path for pattern in SOURCE_DIRS for path in sorted(PACKAGE.glob(f"{pattern}/*.h"))]


def capability() -> str:
    """The CPU capability PyTorch dispatches on in this process ("AVX512", "AVX2", "DEFAULT", ...)."""
    return str(torch.backends.cpu.get_cpu_capability())


def _x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def prebuilt_capabilities() -> tuple[str, ...]:
    return X86_CAPABILITIES if _x86() else ("DEFAULT",)


def wants_openmp() -> bool:
    # at::parallel_for is an inline `#pragma omp parallel` when ATen uses OpenMP: without -fopenmp the
    # kernel would silently run on one thread. (libgomp.so.1 is already loaded by torch, so the module
    # shares torch's OpenMP runtime and torch.set_num_threads.)
    return platform.system() == "Linux" and "parallel backend: OpenMP" in torch.__config__.parallel_info()


def build_flags(capability: str, openmp: bool) -> tuple[list[str], list[str]]:
    """(compiler flags, linker flags) of the module for ``capability``."""
    isa = []
    if _x86() and capability == "AVX512":
        isa = ["-mavx2", "-mfma", "-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq"]
    elif _x86() and capability == "AVX2":
        isa = ["-mavx2", "-mfma"]
    openmp_flags = ["-fopenmp"] if openmp else []
    return ["-O3", "-ffp-contract=fast", *isa, *openmp_flags], openmp_flags


def kernel_key(capability: str, openmp: bool) -> str:
    """What a module was compiled from: its sources and headers (their paths in the package and their
    contents), flags, torch and Python (12 hex digits)."""
    cflags, ldflags = build_flags(capability, openmp)
    key = hashlib.sha256()
    for path in [*sources(), *headers()]:
        data = path.read_bytes()
        key.update(f"{path.relative_to(PACKAGE).as_posix()} {len(data)}\n".encode())
        key.update(data)
    key.update(" ".join(cflags + ldflags).encode())
    key.update(torch.__version__.encode())
    key.update(f"{sys.implementation.cache_tag} {platform.machine()}".encode())
    return key.hexdigest()[:12]


def _key_flag(key: str) -> str:
    return f"-DLPMNET_KERNEL_KEY={key}"  # unquoted: the shell of a just-in-time build would eat quotes


def prebuilt_name(capability: str) -> str:
    return f"lpmnet.ops._kernels_{capability.lower()}"


def prebuilt_extensions():
    """The setuptools extensions of the prebuilt modules (setup.py)."""
    from torch.utils.cpp_extension import CppExtension

    openmp = wants_openmp()
    paths = [str(path.relative_to(PACKAGE.parent)) for path in sources()]  # setup.py's folder
    extensions = []
    for cap in prebuilt_capabilities():
        cflags, ldflags = build_flags(cap, openmp)
        extensions.append(CppExtension(prebuilt_name(cap), paths,
                                       extra_compile_args=[*cflags, _key_flag(kernel_key(cap, openmp))],
                                       extra_link_args=ldflags))
    return extensions


def load(openmp: bool | None = None):
    """``(module, origin)``: the kernel module of this CPU, ``origin`` "prebuilt" (installed with the
    package), "cached" (built before on this machine) or "built" (now).

    Raises whatever the build raises (no compiler, a compile error) or :class:`BuildLockTimeout` after
    waiting :data:`BUILD_LOCK_TIMEOUT_S` for another process's build.
    """
    cap = capability()
    openmp = wants_openmp() if openmp is None else openmp
    module = _prebuilt(cap, kernel_key(cap, openmp))
    if module is None:
        return just_in_time(cap, openmp)
    return module, "prebuilt"


def _prebuilt(cap, key):
    name = prebuilt_name(cap)
    try:
        module = importlib.import_module(name)
    except ImportError as err:  # not installed, or compiled against another torch (undefined symbols)
        log.info("no prebuilt CPU kernel %s can be loaded (%s)", name, err)
        return None
    if getattr(module, "kernel_key", None) != key:
        log.info("the prebuilt CPU kernel %s was compiled from another source or torch (key %s, this one %s)",
                 name, getattr(module, "kernel_key", None), key)
        return None
    log.info("loaded the prebuilt CPU kernel %s (%s)", name, module.__file__)
    return module


def build_root() -> Path:
    """Where just-in-time builds go: ``lpmnet`` in torch's extension cache (``TORCH_EXTENSIONS_DIR``, else the
    user's cache folder), as torch's own builds would."""
    from torch.utils.cpp_extension import get_default_build_root

    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()) / "lpmnet"


def _library(folder: Path, name: str) -> Path | None:
    return next((p for p in (folder / f"{name}.so", folder / f"{name}.pyd") if p.is_file()), None)


def _import_library(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildLockTimeout(RuntimeError):
    """Another process has held a kernel build's lock for :data:`BUILD_LOCK_TIMEOUT_S`."""


@contextlib.contextmanager
def _exclusive(lock_path: Path, timeout_s: float):
    """An flock on ``lock_path``, waited for at most ``timeout_s``. flock itself, not a library that falls
    back to a marker file where the file system lacks it: a marker outlives a killed holder. Where flock is
    not supported (OSError ENOLCK), the build fails with that error and the pure-torch scan runs."""
    import fcntl  # POSIX only, like the builds

    with open(lock_path, "a") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise BuildLockTimeout(f"waited {timeout_s:.0f} s for {lock_path}: another process has been "
                                           "building the CPU kernel for that long") from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def just_in_time(cap: str | None = None, openmp: bool | None = None):
    """``(module, origin)``: the kernel module for ``cap`` (this CPU's by default) from the extension cache,
    "cached", or compiled into it now, "built" (see the module's docstring for the locking)."""
    from torch.utils.cpp_extension import load as compile_and_load

    cap = capability() if cap is None else cap
    openmp = wants_openmp() if openmp is None else openmp
    key = kernel_key(cap, openmp)
    name = f"lpmnet_scan_cpu_{cap.lower()}_{key}"
    root = build_root()
    root.mkdir(parents=True, exist_ok=True)
    final = root / name
    with _exclusive(root / f"{name}.lock", BUILD_LOCK_TIMEOUT_S):
        library = _library(final, name)
        if library is not None:
            log.info("loaded the CPU kernel %s built before on this machine (%s)", name, library)
            return _import_library(name, library), "cached"
        for leftover in [*root.glob(f"{name}.build-*"), *([final] if final.exists() else [])]:
            log.warning("removing %s, left by a build of the CPU kernel that did not finish", leftover)
            shutil.rmtree(leftover, ignore_errors=True)
        attempt = root / f"{name}.build-{os.getpid()}"
        attempt.mkdir()
        log.info("building the CPU kernel %s (%s) in %s: once per machine, about a minute", name, cap, attempt)
        cflags, ldflags = build_flags(cap, openmp)
        try:
            module = compile_and_load(name=name, sources=[str(path) for path in sources()],
                                      extra_cflags=[*cflags, _key_flag(key)], extra_ldflags=ldflags,
                                      build_directory=str(attempt), verbose=False)
        except BaseException:
            shutil.rmtree(attempt, ignore_errors=True)
            raise
        os.rename(attempt, final)
        return module, "built"

"""The CPU kernels: prebuilt with the package, and a just-in-time build that no killed process can block.

The builds run in fresh processes with their own extension cache (``TORCH_EXTENSIONS_DIR``), as workflow
jobs do; each compiles the real kernel (about 35 s on 2 cores).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lpmnet.ops import build, cpu

BUILD = """
import json, logging, sys, time
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
from lpmnet.ops import build
started = time.perf_counter()
module, origin = build.just_in_time()
print(json.dumps({"origin": origin, "seconds": time.perf_counter() - started, "has_fwd": hasattr(module, "fwd")}))
"""


def start_build(cache):
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(cache)}
    return subprocess.Popen([sys.executable, "-c", BUILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=Path(__file__).resolve().parents[3], start_new_session=True)


def finish(process, timeout=600):
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1]), err


def test_the_installed_package_loads_its_prebuilt_kernel():
    if build.capability() not in build.prebuilt_capabilities():
        pytest.skip(f"no module is prebuilt for the CPU capability {build.capability()}")
    info = cpu.cpu_kernel_info()
    assert info["available"] and info["origin"] == "prebuilt", info
    assert info["name"] == build.prebuilt_name(build.capability()) and info["seconds"] < 5


@pytest.mark.slow
def test_a_build_killed_midway_blocks_nobody_and_processes_starting_together_build_once(tmp_path):
    first = start_build(tmp_path)
    root = tmp_path / "lpmnet"
    deadline = time.monotonic() + 120
    while not list(root.glob("*.build-*/build.ninja")):  # the compiler is running
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()[1][-2000:]
        time.sleep(0.2)
    time.sleep(3)
    os.killpg(first.pid, signal.SIGKILL)  # as scancel, a time limit or Ctrl-C end the job's processes
    first.wait()
    assert list(root.glob("*.lock")) and list(root.glob("*.build-*"))  # its lock file and half a build

    # Two processes start together after it (one real build serves both tests: each build is ~35 s).
    started = time.monotonic()
    finished = [finish(p) for p in [start_build(tmp_path) for _ in range(2)]]
    elapsed = time.monotonic() - started
    assert sorted(result["origin"] for result, _ in finished) == ["built", "cached"]
    assert all(result["has_fwd"] for result, _ in finished)
    built, log = next((result, log) for result, log in finished if result["origin"] == "built")
    waited = elapsed - built["seconds"]
    assert waited < 30, f"the builder spent {waited:.0f} s beside its own build (start-up and imports)"
    assert "did not finish" in log  # it removed the dead build's leftovers
    assert not list(root.glob("*.build-*"))
    third, _ = finish(start_build(tmp_path))
    assert third["origin"] == "cached" and third["seconds"] < 5

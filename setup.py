"""Compiles the CPU kernels into the package when it is installed (metadata: pyproject.toml).

One module per CPU capability (lpmnet.ops.build.prebuilt_extensions), so that no workflow job compiles;
``pip install`` needs torch at build time (the pinned one of pyproject.toml, or the environment's with
``--no-build-isolation``, as ``make install`` does). Each module is compiled from all the kernel sources
(lpmnet.ops.build.sources: lpmnet/ops/csrc/*.cpp and lpmnet/methods/*/csrc/*.cpp). The modules compile one
after the other (they share those sources, whose object files are written to one path per source), the
sources of each in parallel (ninja).
"""

import os
import sys

from setuptools import setup

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from torch.utils.cpp_extension import BuildExtension  # noqa: E402

from lpmnet.ops.build import prebuilt_extensions  # noqa: E402

setup(ext_modules=prebuilt_extensions(), cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)})

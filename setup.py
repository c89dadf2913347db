"""Compiles the CPU kernels into the package when it is installed (metadata: pyproject.toml).

One module per CPU capability (lpmnet.ops.build.prebuilt_extensions), so that no workflow job compiles;
``pip install`` needs torch at build time (the pinned one of pyproject.toml, or the environment's with
``--no-build-isolation``, as ``make install`` does). The modules compile one after the other: they share
one source, whose object file setuptools writes to one path.
"""

import os
import sys

from setuptools import setup

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from torch.utils.cpp_extension import BuildExtension  # noqa: E402

from lpmnet.ops.build import prebuilt_extensions  # noqa: E402

setup(ext_modules=prebuilt_extensions(), cmdclass={"build_ext": BuildExtension.with_options(use_ninja=False)})

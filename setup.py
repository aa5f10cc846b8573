"""Only here because setuptools cannot take ``cffi_modules`` from pyproject.toml.

All other metadata lives in pyproject.toml; this adds the C shim (pykvpd/_shim_build.py).
"""

from __future__ import annotations

from setuptools import setup

setup(cffi_modules=["pykvpd/_shim_build.py:ffibuilder"])

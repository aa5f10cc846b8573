"""cffi build script for the C shim (csrc/hv_kvp_shim.c) that pykvpd.transport drives.

Used by setuptools through ``cffi_modules`` (``pip install .`` / ``pip install -e .``) and, for
in-place development, run directly: ``python3 pykvpd/_shim_build.py`` leaves
``pykvpd/_hv_kvp_shim*.so`` next to the sources. The C file is compiled into the extension
itself, so its compile-time layout assertions run on every build.
"""

from __future__ import annotations

import os

from cffi import FFI

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC_DIR = os.path.join(ROOT, "csrc")  # absolute: cffi compiles from inside its tmpdir
SHIM_C = "csrc/hv_kvp_shim.c"  # relative to the project root, as setuptools wants

CDEF = """
#define HVKVP_READ_CAPACITY ...
int hvkvp_msg_size(void);
int hvkvp_open(const char *path);
long hvkvp_read(int fd, unsigned char *buf);
long hvkvp_write(int fd, const unsigned char *buf);
int hvkvp_poll(int fd, int timeout_ms);
int hvkvp_set_name(const char *name);
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "pykvpd._hv_kvp_shim",
    '#include "hv_kvp_shim.c"',
    include_dirs=[CSRC_DIR],
    depends=[SHIM_C],
)


def build(tmpdir: str = ROOT) -> str:
    """Compile into ``tmpdir`` (default: the source tree, where the .so is gitignored).

    Returns the path of the built library, ``<tmpdir>/pykvpd/_hv_kvp_shim*.so``.
    """
    return ffibuilder.compile(tmpdir=tmpdir, verbose=False)


if __name__ == "__main__":
    print(build())

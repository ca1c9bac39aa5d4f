"""Build the C core `densemllm._core` against oneDNN and OpenBLAS from PyPI wheels.

Why wheels and not Debian packages: bookworm ships oneDNN 2.6 (the old v2 C API)
and OpenBLAS 0.3.21, which does not recognise Sapphire Rapids and falls back to
generic kernels (41 GFLOP/s f32 on 2 cores against oneDNN's 266). The PyPI wheels
`onednn-devel-cpu-gomp` (oneDNN 3.2, GNU OpenMP, v3 C API) and `scipy-openblas32`
(current OpenBLAS, symbols prefixed `scipy_`) install anywhere pip works.

Environment switches:
  DENSEMLLM_PORTABLE=1   build without -march=native (generic x86-64-v3 code)
  DENSEMLLM_SANITIZE=1   build with AddressSanitizer + UBSan (see `make asan-test`)
  DENSEMLLM_DEBUG=1      -O0 -g
"""
import glob
import os
import sys
import sysconfig
from importlib import metadata

import numpy
from setuptools import Extension, setup


def _dist_file(dist_name, suffix):
    """Absolute path of the file of an installed distribution whose path ends with suffix."""
    dist = metadata.distribution(dist_name)
    for f in dist.files or []:
        if str(f).replace("\\", "/").endswith(suffix):
            return os.path.abspath(str(dist.locate_file(f)))
    raise RuntimeError(f"{dist_name}: no installed file ending in {suffix!r}")


def _onednn():
    header = _dist_file("onednn-devel-cpu-gomp", "include/oneapi/dnnl/dnnl.h")
    include = os.path.dirname(os.path.dirname(os.path.dirname(header)))
    lib = _dist_file("onednn-cpu-gomp", "libdnnl.so.3")
    return include, lib


def _openblas():
    import scipy_openblas32

    return scipy_openblas32.get_include_dir(), scipy_openblas32.get_lib_dir()


def _flag(name):
    return os.environ.get(name, "0") not in ("", "0", "false", "False")


dnnl_include, dnnl_lib = _onednn()
oblas_include, oblas_libdir = _openblas()

sources = sorted(glob.glob("csrc/**/*.c", recursive=True))
cflags = ["-std=c11", "-fopenmp", "-Wall", "-Wextra", "-Wno-unused-parameter",
          "-Wno-missing-field-initializers", "-Werror=implicit-function-declaration", "-fvisibility=hidden", "-D_GNU_SOURCE"]
ldflags = ["-fopenmp"]
if _flag("DENSEMLLM_DEBUG"):
    cflags += ["-O0", "-g"]
else:
    cflags += ["-O3", "-g1"]
if not _flag("DENSEMLLM_PORTABLE"):
    cflags += ["-march=native"]
else:
    cflags += ["-march=x86-64-v3"]
if _flag("DENSEMLLM_SANITIZE"):
    san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]
    cflags += san
    ldflags += san

# Runtime search path: relative entries for a normal install (site-packages/densemllm
# -> <prefix>/lib holds libdnnl.so.3; site-packages/scipy_openblas32/lib), absolute
# entries for the environment being built into (also covers editable installs).
platlib = sysconfig.get_paths()["platlib"]
rpaths = [
    "$ORIGIN/../../..",
    "$ORIGIN/../scipy_openblas32/lib",
    os.path.join(sys.prefix, "lib"),
    os.path.join(platlib, "scipy_openblas32", "lib"),
]

ext = Extension(
    "densemllm._core",
    sources=sources,
    include_dirs=["csrc", numpy.get_include(), dnnl_include, oblas_include],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    extra_compile_args=cflags,
    extra_link_args=ldflags + [dnnl_lib, "-L" + oblas_libdir, "-lscipy_openblas", "-lm"]
    + ["-Wl,-rpath," + p for p in rpaths],
    depends=sorted(glob.glob("csrc/**/*.h", recursive=True)),
)

setup(ext_modules=[ext])

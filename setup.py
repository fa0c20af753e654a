"""Build script: the Python packages always; the compiled extension `sigma_kernels._C` when possible.

The extension (sources in csrc/) is optional. It is skipped, with one line saying why, when
there are no sources, no C++ compiler, or SIGMA_NO_EXTENSION=1. The CUDA part (csrc/cuda/*.cu)
is added when torch has CUDA and nvcc is found, unless SIGMA_NO_CUDA=1.
Install with `pip install --no-build-isolation -e .` so the extension builds against the torch
that is already installed.
"""
import glob
import os
import shutil
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _say(msg):
    print(f"sigma setup: {msg}", file=sys.stderr)


def _truthy(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _extensions():
    if _truthy("SIGMA_NO_EXTENSION"):
        _say("SIGMA_NO_EXTENSION is set; installing the pure-Python package (reference backend)")
        return [], {}
    cpp = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    if not cpp:
        _say("no C++ sources in csrc/; installing the pure-Python package")
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except Exception as exc:  # torch must be importable to build (hence --no-build-isolation)
        _say(f"torch is not importable ({exc}); installing the pure-Python package")
        return [], {}
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None and shutil.which("g++") is None:
        _say("no C++ compiler found; installing the pure-Python package")
        return [], {}

    cxx_flags = ["-O3", "-std=c++20", "-fopenmp", "-DNDEBUG"]
    if os.uname().machine in ("x86_64", "AMD64"):
        # at::vec picks its AVX2 implementation only with CPU_CAPABILITY_AVX2 defined.
        cxx_flags += ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    # Keep a*b+c as two roundings unless the source asks for fma, so the kernels round like
    # the reference (argmax ties and hard targets depend on it).
    cxx_flags.append("-ffp-contract=off")
    extra = {"cxx": cxx_flags}
    sources = list(cpp)
    ext_cls = cpp_extension.CppExtension
    define_macros = []

    cu = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    want_cuda = cu and not _truthy("SIGMA_NO_CUDA") and torch.version.cuda is not None
    cuda_home = cpp_extension.CUDA_HOME
    if want_cuda and cuda_home is not None and not os.path.isfile(os.path.join(cuda_home, "include", "cuda_runtime.h")):
        # torch guesses CUDA_HOME from nvcc's path (e.g. /usr/local for /usr/local/bin/nvcc)
        _say(f"CUDA_HOME={cuda_home} has no include/cuda_runtime.h; building the CPU extension only "
             "(set CUDA_HOME to the CUDA toolkit, e.g. /usr/local/cuda, to build the CUDA part)")
        cuda_home = None
        want_cuda = False
    if want_cuda and cuda_home is not None:
        sources += cu
        ext_cls = cpp_extension.CUDAExtension
        # no --use_fast_math: the kernels must match the reference (expf/logf, IEEE rounding)
        extra["nvcc"] = ["-O3", "-std=c++20"]
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            # without a visible GPU torch would target every architecture (a long build)
            os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
            _say("no GPU visible and TORCH_CUDA_ARCH_LIST unset: building CUDA code for sm_90")
        define_macros.append(("SIGMA_WITH_CUDA", "1"))
        _say(f"building the CPU and CUDA extension ({len(sources)} sources)")
    else:
        if want_cuda:
            _say("nvcc not found (CUDA_HOME unset); building the CPU extension only")
        else:
            _say(f"building the CPU extension ({len(sources)} sources)")
    ext = ext_cls(
        name="sigma_kernels._C",
        sources=sources,
        include_dirs=[os.path.join(HERE, "csrc")],
        extra_compile_args=extra,
        extra_link_args=["-fopenmp"],
        define_macros=define_macros,
    )
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)

"""Build script for fastconv's compiled module ``fastconv._C``.

CPU kernels are always built. CUDA kernels are built when a real nvcc is found and either a GPU is
visible or ``FASTCONV_CUDA=1``; ``FASTCONV_CUDA=0`` turns them off. Everything CUDA needs (CUDA_HOME,
the CUDA library headers shipped in pip's ``nvidia`` packages, an architecture list when no GPU can be
queried) is found here, so no user has to set it by hand.
"""
import glob
import os
import shutil
import site
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
# Architectures compiled when no GPU is visible: Turing, Ampere, Hopper (CUDA 13 has no Volta), plus PTX.
DEFAULT_CUDA_ARCHS = "7.5;8.0;9.0+PTX"


def _find_cuda_home():
    """CUDA_HOME from the real nvcc: wrapper scripts on PATH (e.g. /usr/local/bin/nvcc) are skipped."""
    env = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if env and os.path.isfile(os.path.join(env, "bin", "nvcc")):
        return env
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.realpath(nvcc))
    candidates += ["/usr/local/cuda/bin/nvcc"] + sorted(glob.glob("/usr/local/cuda-*/bin/nvcc"), reverse=True)
    for path in candidates:
        home = os.path.dirname(os.path.dirname(path))
        # A real toolkit has its runtime headers next to bin/; a wrapper script's parent does not.
        if os.path.isfile(path) and os.path.isfile(os.path.join(home, "include", "cuda_runtime.h")):
            return home
    return None


def _pip_nvidia_include_dirs():
    """Include folders of pip's nvidia-* packages (cuBLAS, cuSPARSE, ... headers torch's headers use)."""
    dirs = []
    roots = list(site.getsitepackages()) + [site.getusersitepackages()] + sys.path
    for root in dict.fromkeys(roots):
        if not root or not os.path.isdir(os.path.join(root, "nvidia")):
            continue
        dirs += glob.glob(os.path.join(root, "nvidia", "*", "include"))
    return sorted(set(d for d in dirs if os.path.isdir(d)))


def _want_cuda(cuda_home):
    flag = os.environ.get("FASTCONV_CUDA", "").strip()
    if flag == "0":
        return False
    if cuda_home is None:
        if flag == "1":
            raise RuntimeError("FASTCONV_CUDA=1 but no CUDA toolkit (nvcc) was found; install it or set CUDA_HOME")
        return False
    if flag == "1":
        return True
    import torch

    return torch.cuda.is_available()


def _extension():
    cuda_home = _find_cuda_home()
    use_cuda = _want_cuda(cuda_home)
    if use_cuda:
        # torch.utils.cpp_extension reads CUDA_HOME when it is imported: set it before that.
        os.environ["CUDA_HOME"] = cuda_home
    import torch
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    if use_cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS
    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 1))

    if use_cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        # A visible GPU: build for exactly what it is.
        major, minor = torch.cuda.get_device_capability()
        os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
    _write_build_config(use_cuda)

    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    cxx_flags = ["-O3", "-fvisibility=hidden", "-ffp-contract=fast"]  # torch picks the C++ standard its headers need
    if sys.platform.startswith("linux"):
        # at::parallel_for is an OpenMP region compiled into the caller: without -fopenmp every kernel
        # runs on one thread. The library it needs (libgomp.so.1) is the one torch already loads.
        cxx_flags.append("-fopenmp")
    define_macros = [("Py_LIMITED_API", "0x030A0000")]
    include_dirs = [os.path.join(ROOT, "csrc")]
    # Link the shared libstdc++ that torch itself uses, even where the compiler is set up to link it
    # statically (-static-libstdc++): a second copy of the C++ runtime inside the extension keeps its own
    # locale tables, and then formatting a number into an error message prints garbage or crashes.
    link_args = ["-l:libstdc++.so.6", "-fopenmp"] if sys.platform.startswith("linux") else []
    if not use_cuda:
        return CppExtension(
            "fastconv._C", sources, include_dirs=include_dirs, define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_args, py_limited_api=True,
        )
    sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")) + glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
    toolkit_include = os.path.join(cuda_home, "include")
    if not os.path.isfile(os.path.join(toolkit_include, "cusparse.h")):
        include_dirs += _pip_nvidia_include_dirs()
    define_macros.append(("FASTCONV_WITH_CUDA", "1"))
    return CUDAExtension(
        "fastconv._C", sources, include_dirs=include_dirs, define_macros=define_macros,
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "--expt-relaxed-constexpr"]},
        extra_link_args=link_args, py_limited_api=True,
    )


def _write_build_config(use_cuda):
    """fastconv/_build_config.py records what was compiled, for `python -m fastconv`."""
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "") if use_cuda else ""
    with open(os.path.join(ROOT, "fastconv", "_build_config.py"), "w") as f:
        f.write("# Written by setup.py at build time.\n")
        f.write(f"WITH_CUDA = {bool(use_cuda)!r}\nCUDA_ARCHS = {archs!r}\n")


def _build_ext():
    from torch.utils.cpp_extension import BuildExtension

    return BuildExtension


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": _build_ext()},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)

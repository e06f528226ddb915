"""Run fastconv's CUDA kernels on the CPU, through a host emulation of CUDA, and test them there.

    python scripts/cuda_sim.py [pytest arguments]      # default: tests/test_cuda.py -q

Compiles csrc/ops.cpp and csrc/cuda/*.cu as C++ with FASTCONV_CUDA_SIM (csrc/cuda/cuda_sim.h stands in
for the CUDA runtime; kernels register for CPU instead of CUDA) into build/cuda_sim/, loads that library
in place of fastconv._C, and runs pytest: tests/test_cuda.py then exercises the CUDA kernels on CPU
tensors. Slow (every GPU thread is a coroutine), so the tests keep their shapes small. For development on
machines without a GPU; it does not replace running the tests on one.
"""
import os
import subprocess
import sys
import sysconfig
import types
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, "build", "cuda_sim")
LIBRARY = os.path.join(BUILD, "libfastconv_cuda_sim.so")


def _sources():
    cuda_dir = os.path.join(ROOT, "csrc", "cuda")
    return [os.path.join(ROOT, "csrc", "ops.cpp")] + sorted(
        os.path.join(cuda_dir, f) for f in os.listdir(cuda_dir) if f.endswith(".cu")
    )


def _headers():
    found = []
    for folder, _, files in os.walk(os.path.join(ROOT, "csrc")):
        found += [os.path.join(folder, f) for f in files if f.endswith((".h", ".cuh"))]
    return found


def build(jobs=os.cpu_count() or 1):
    import torch

    torch_include = os.path.join(os.path.dirname(torch.__file__), "include")
    os.makedirs(BUILD, exist_ok=True)
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    flags = ["-std=c++20", "-O1", "-fPIC", "-DFASTCONV_CUDA_SIM", f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
             "-Wno-unknown-pragmas", "-I" + os.path.join(ROOT, "csrc"), "-I" + sysconfig.get_paths()["include"]]
    flags += ["-I" + torch_include, "-I" + os.path.join(torch_include, "torch", "csrc", "api", "include")]
    newest_header = max(os.path.getmtime(h) for h in _headers())

    def compile_one(src):
        obj = os.path.join(BUILD, os.path.basename(src) + ".o")
        if os.path.exists(obj) and os.path.getmtime(obj) > max(os.path.getmtime(src), newest_header):
            return obj
        cmd = ["g++", "-x", "c++", *flags, "-c", src, "-o", obj]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"compiling {src} failed:\n{result.stderr[-8000:]}")
        return obj

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        objects = list(pool.map(compile_one, _sources()))
    if not os.path.exists(LIBRARY) or os.path.getmtime(LIBRARY) < max(os.path.getmtime(o) for o in objects):
        lib_dir = os.path.join(os.path.dirname(torch.__file__), "lib")
        cmd = ["g++", "-shared", *objects, "-o", LIBRARY, f"-L{lib_dir}", f"-Wl,-rpath,{lib_dir}",
               "-lc10", "-ltorch", "-ltorch_cpu"]
        subprocess.run(cmd, check=True)
    return LIBRARY


def load():
    """Loads the emulation build in place of fastconv._C; call before anything imports fastconv."""
    import torch

    if "fastconv" in sys.modules:
        raise RuntimeError("cuda_sim.load() must run before fastconv is imported")
    torch.ops.load_library(build())
    stub = types.ModuleType("fastconv._C")
    stub.CUDA_SIM = True  # tests/test_cuda.py checks this to run on CPU tensors
    sys.modules["fastconv._C"] = stub


def main(argv):
    load()
    import pytest

    os.chdir(ROOT)
    sys.path.insert(0, ROOT)
    return pytest.main(argv or ["-q", "tests/test_cuda.py"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

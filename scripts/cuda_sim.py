"""Run fastconv's CUDA kernels on the CPU, through a host emulation of CUDA, and test them there.

    python scripts/cuda_sim.py [--asan] [pytest arguments]      # default: tests/test_cuda.py -q

Compiles csrc/ops.cpp, csrc/autograd.cpp and csrc/cuda/*.cu as C++ with FASTCONV_CUDA_SIM (csrc/cuda/cuda_sim.h stands in
for the CUDA runtime; kernels register for CPU instead of CUDA) into build/cuda_sim/, loads that library
in place of fastconv._C, and runs pytest: tests/test_cuda.py then exercises the CUDA kernels on CPU
tensors. Slow (every GPU thread is a coroutine), so the tests keep their shapes small. For development on
machines without a GPU; it does not replace running the tests on one.

--asan builds with AddressSanitizer (into build/cuda_sim_asan/) and runs under it: a kernel that reads or
writes outside a tensor's allocation, or outside its shared memory, stops the run with a report.
"""
import os
import subprocess
import sys
import sysconfig
import types
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASAN_FLAGS = ["-fsanitize=address", "-fno-omit-frame-pointer"]


def _sources():
    cuda_dir = os.path.join(ROOT, "csrc", "cuda")
    return [os.path.join(ROOT, "csrc", "ops.cpp"), os.path.join(ROOT, "csrc", "autograd.cpp")] + sorted(
        os.path.join(cuda_dir, f) for f in os.listdir(cuda_dir) if f.endswith(".cu")
    )


def _headers():
    found = []
    for folder, _, files in os.walk(os.path.join(ROOT, "csrc")):
        found += [os.path.join(folder, f) for f in files if f.endswith((".h", ".cuh"))]
    return found


def build(asan=False, jobs=os.cpu_count() or 1):
    """Compiles what changed; returns the path of the library."""
    import torch

    build_dir = os.path.join(ROOT, "build", "cuda_sim_asan" if asan else "cuda_sim")
    library = os.path.join(build_dir, "libfastconv_cuda_sim.so")
    torch_include = os.path.join(os.path.dirname(torch.__file__), "include")
    os.makedirs(build_dir, exist_ok=True)
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    flags = ["-std=c++20", "-O1", "-fPIC", "-DFASTCONV_CUDA_SIM", f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
             "-Wno-unknown-pragmas", "-I" + os.path.join(ROOT, "csrc"), "-I" + sysconfig.get_paths()["include"]]
    flags += ASAN_FLAGS if asan else []
    flags += ["-I" + torch_include, "-I" + os.path.join(torch_include, "torch", "csrc", "api", "include")]
    newest_header = max(os.path.getmtime(h) for h in _headers())

    def compile_one(src):
        obj = os.path.join(build_dir, os.path.basename(src) + ".o")
        if os.path.exists(obj) and os.path.getmtime(obj) > max(os.path.getmtime(src), newest_header):
            return obj
        cmd = ["g++", "-x", "c++", *flags, "-c", src, "-o", obj]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"compiling {src} failed:\n{result.stderr[-8000:]}")
        return obj

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        objects = list(pool.map(compile_one, _sources()))
    if not os.path.exists(library) or os.path.getmtime(library) < max(os.path.getmtime(o) for o in objects):
        lib_dir = os.path.join(os.path.dirname(torch.__file__), "lib")
        cmd = ["g++", "-shared", *(ASAN_FLAGS if asan else []), *objects, "-o", library, f"-L{lib_dir}",
               f"-Wl,-rpath,{lib_dir}", "-lc10", "-ltorch", "-ltorch_cpu"]
        subprocess.run(cmd, check=True)
    return library


def load(asan=False):
    """Loads the emulation build in place of fastconv._C; call before anything imports fastconv."""
    import torch

    if "fastconv" in sys.modules:
        raise RuntimeError("cuda_sim.load() must run before fastconv is imported")
    torch.ops.load_library(build(asan))
    stub = types.ModuleType("fastconv._C")
    stub.CUDA_SIM = True  # tests/test_cuda.py checks this to run on CPU tensors
    sys.modules["fastconv._C"] = stub


def main(argv):
    asan = "--asan" in argv
    argv = [a for a in argv if a != "--asan"]
    if asan and "libasan" not in os.environ.get("LD_PRELOAD", ""):
        build(asan=True)  # before the restart: compiling does not need the sanitizer runtime
        # The sanitizer runtime must be loaded first: restart the interpreter with it preloaded.
        # libstdc++ too, or the sanitizer cannot intercept C++ exceptions thrown by torch's libraries.
        runtime = [subprocess.run(["gcc", f"-print-file-name={lib}"], capture_output=True, text=True).stdout.strip()
                   for lib in ("libasan.so", "libstdc++.so.6")]
        env = dict(os.environ, LD_PRELOAD=" ".join(runtime),
                   ASAN_OPTIONS="detect_leaks=0:detect_stack_use_after_return=0:allocator_may_return_null=1")
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), "--asan", *argv], env)
    load(asan)
    import pytest

    os.chdir(ROOT)
    sys.path.insert(0, ROOT)
    return pytest.main(argv or ["-q", "tests/test_cuda.py"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""What a benchmark ran on, and the reference rates its numbers are compared with.

- CPU peak: a short FMA loop (compiled with the system C compiler, run on as many threads as torch
  uses) when a compiler is available; otherwise derived from the detected instruction set, the
  thread count and the clock in /proc/cpuinfo. Each result says which it is.
- GPU peak: derived from the SM count, the clock and the per-SM rate of the architecture.
- Memory bandwidth: the GPU's from its memory clock and bus width; the CPU's is a measured copy.
- Load: how much CPU time other processes took while the run went on (a noisy-machine warning).
"""
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

# ----------------------------------------------------------------------------------------------
# CPU description
# ----------------------------------------------------------------------------------------------


def _cpuinfo_fields():
    """The first processor block of /proc/cpuinfo as a dict (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def _all_cpu_mhz():
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []
    return [float(line.split(":")[1]) for line in lines if line.startswith("cpu MHz")]


def cpu_model_name():
    fields = _cpuinfo_fields()
    return fields.get("model name") or platform.processor() or platform.machine()


def cpu_isa():
    """The widest FP32 FMA vector unit the CPU reports: "avx512", "avx2", or "baseline"."""
    flags = set(_cpuinfo_fields().get("flags", "").split())
    if "avx512f" in flags:
        return "avx512"
    if "avx2" in flags and "fma" in flags:
        return "avx2"
    return "baseline"


# Vector width in bytes, accumulator count and compiler flags per instruction set. The FMA loop keeps
# more independent accumulators than (FMA latency x FMA pipes) so it is throughput-bound, and few enough
# to stay in registers (32 zmm with AVX-512, 16 ymm with AVX2).
_ISA_FMA = {
    "avx512": {"vec_bytes": 64, "accumulators": 24, "cflags": ["-mavx512f", "-mfma"], "label": "AVX-512"},
    "avx2": {"vec_bytes": 32, "accumulators": 12, "cflags": ["-mavx2", "-mfma"], "label": "AVX2+FMA"},
    "baseline": {"vec_bytes": 16, "accumulators": 12, "cflags": [], "label": "128-bit SIMD"},
}
ASSUMED_FMA_PIPES = 2


def _fma_loop_source(vec_bytes, accumulators):
    names = [f"a{i}" for i in range(accumulators)]
    init = "\n".join(f"  vec {n} = splat((float){i} * 0.01f);" for i, n in enumerate(names))
    step = "\n".join(f"    {n} = {n} * mul + add;" for n in names)
    total = " + ".join(names)
    return f"""
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
typedef float vec __attribute__((vector_size({vec_bytes})));
#define LANES ({vec_bytes} / 4)
static long iterations;
static vec splat(float x) {{ vec v; for (int i = 0; i < LANES; i++) v[i] = x; return v; }}
static void *worker(void *result) {{
  vec mul = splat(0.9999999f), add = splat(1e-7f);
{init}
  for (long it = 0; it < iterations; it++) {{
{step}
    __asm__ volatile("" ::: "memory");
  }}
  vec sum = {total};
  float s = 0; for (int i = 0; i < LANES; i++) s += sum[i];
  *(float *)result = s;
  return NULL;
}}
int main(int argc, char **argv) {{
  int threads = atoi(argv[1]);
  iterations = atol(argv[2]);
  pthread_t ids[256]; float results[256];
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (int t = 0; t < threads; t++) pthread_create(&ids[t], NULL, worker, &results[t]);
  for (int t = 0; t < threads; t++) pthread_join(ids[t], NULL);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double seconds = (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec);
  double flops = 2.0 * LANES * {accumulators} * (double)iterations * threads;
  printf("%.6f %.1f %f\\n", seconds, flops / seconds / 1e9, results[0]);
  return 0;
}}
"""


def measure_cpu_peak(threads, seconds=0.25):
    """FP32 GFLOP/s of a register-resident FMA loop on `threads` threads, or None (no compiler, ...)."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not compiler or sys.platform != "linux":
        return None
    isa = cpu_isa()
    spec = _ISA_FMA[isa]
    with tempfile.TemporaryDirectory(prefix="fastconv-peak-") as tmp:
        src, exe = Path(tmp) / "fma.c", Path(tmp) / "fma"
        src.write_text(_fma_loop_source(spec["vec_bytes"], spec["accumulators"]))
        cmd = [compiler, "-O2", "-ffp-contract=fast", *spec["cflags"], "-pthread", str(src), "-o", str(exe)]
        try:
            subprocess.run(cmd, check=True, capture_output=True, timeout=60)

            def run(iterations):
                out = subprocess.run([str(exe), str(threads), str(iterations)], check=True, capture_output=True,
                                     text=True, timeout=60).stdout.split()
                return float(out[0]), float(out[1])

            elapsed, _ = run(2_000_000)
            iterations = max(1_000_000, int(2_000_000 * seconds / max(elapsed, 1e-4)))
            best = max(run(iterations)[1] for _ in range(3))
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            return None
    return {
        "gflops": best,
        "method": "measured",
        "detail": (f"measured: {spec['label']} FMA loop ({spec['accumulators']} independent accumulators), "
                   f"{threads} thread{'s' if threads > 1 else ''}, best of 3"),
    }


def cpu_clock_ghz():
    mhz = _all_cpu_mhz()
    if mhz:
        return max(mhz) / 1e3
    return None


def derived_cpu_peak(threads):
    """Peak from the instruction set, threads and clock, assuming two FMA pipes per core."""
    spec = _ISA_FMA[cpu_isa()]
    clock = cpu_clock_ghz()
    if clock is None:
        return None
    lanes = spec["vec_bytes"] // 4
    gflops = lanes * 2 * ASSUMED_FMA_PIPES * threads * clock
    return {
        "gflops": gflops,
        "method": "derived",
        "detail": (f"derived: {spec['label']} ({lanes} FP32 lanes) x {ASSUMED_FMA_PIPES} FMA pipes (assumed) x 2 flops "
                   f"x {threads} thread{'s' if threads != 1 else ''} x {clock:.2f} GHz (nominal clock, /proc/cpuinfo)"),
    }


def measure_copy_bandwidth(device, mib=256, repeats=5):
    """GB/s of a large tensor copy on `device`, counting the bytes read plus the bytes written."""
    numel = mib * 2**20 // 4
    src = torch.empty(numel, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        dst.copy_(src)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * numel * 4 / best / 1e9


# ----------------------------------------------------------------------------------------------
# GPU description
# ----------------------------------------------------------------------------------------------

# Dense FLOP per clock per SM: (FP32 on CUDA cores, TF32 on tensor cores, BF16 on tensor cores).
_SM_FLOP_PER_CLOCK = {
    (7, 0): (128, None, None),
    (7, 5): (128, None, None),
    (8, 0): (128, 1024, 2048),
    (8, 6): (256, 512, 1024),
    (8, 9): (256, 512, 1024),
    (9, 0): (256, 2048, 4096),
    (10, 0): (256, 4096, 8192),
}


def _nvidia_smi_max_clocks_mhz(device):
    """(SM clock, memory clock) maxima in MHz from nvidia-smi, or (0, 0) when it cannot say."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return 0, 0
    index = device.index if device.index is not None else torch.cuda.current_device()
    try:
        out = subprocess.run([smi, f"--id={index}", "--query-gpu=clocks.max.sm,clocks.max.mem",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20)
        sm, mem = (float(v) for v in out.stdout.strip().splitlines()[0].split(","))
        return sm, mem
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return 0, 0


def gpu_reference(device):
    """Peak GFLOP/s per precision and memory bandwidth of a CUDA device, derived from its properties.

    Newer CUDA releases stopped filling in the clock fields of the device properties; nvidia-smi's
    maximum clocks stand in for them then."""
    props = torch.cuda.get_device_properties(device)
    arch = (props.major, props.minor)
    clock_khz = getattr(props, "clock_rate", 0) or 0
    mem_khz = getattr(props, "memory_clock_rate", 0) or 0
    if not clock_khz or not mem_khz:
        sm_mhz, mem_mhz = _nvidia_smi_max_clocks_mhz(device)
        clock_khz = clock_khz or sm_mhz * 1e3
        mem_khz = mem_khz or mem_mhz * 1e3
    rates = _SM_FLOP_PER_CLOCK.get(arch)
    peaks = {}
    detail = []
    if rates and clock_khz:
        ghz = clock_khz / 1e6
        for key, rate in zip(("float32", "tf32", "bfloat16"), rates):
            if rate:
                peaks[key] = props.multi_processor_count * rate * ghz
        detail.append(f"derived: {props.multi_processor_count} SMs x per-SM dense rate of sm_{arch[0]}{arch[1]} "
                      f"(FP32 {rates[0]}, TF32 {rates[1]}, BF16 {rates[2]} flop/clock) x {ghz:.2f} GHz")
    else:
        detail.append(f"no peak known for sm_{arch[0]}{arch[1]}: % of peak left out")
    bus_bits = getattr(props, "memory_bus_width", 0) or 0
    if mem_khz and bus_bits:
        bandwidth = 2 * mem_khz * 1e3 * bus_bits / 8 / 1e9
        bandwidth_detail = f"derived: 2 x {mem_khz / 1e6:.2f} GHz memory clock x {bus_bits}-bit bus"
    else:
        bandwidth = measure_copy_bandwidth(device, mib=1024)
        bandwidth_detail = "measured: device-to-device copy of 1 GiB (read + write)"
    return {
        "name": props.name,
        "arch": f"sm_{arch[0]}{arch[1]}",
        "sms": props.multi_processor_count,
        "memory_gib": props.total_memory / 2**30,
        "peak_gflops": peaks,
        "peak_detail": "; ".join(detail),
        "bandwidth_gbps": bandwidth,
        "bandwidth_detail": bandwidth_detail,
    }


# ----------------------------------------------------------------------------------------------
# Load during the run
# ----------------------------------------------------------------------------------------------


def _proc_stat_seconds():
    """(busy, total) CPU seconds of the whole machine since boot, or None off Linux."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return (total - idle) / tick, total / tick


class LoadMonitor:
    """Share of the machine's CPU time that other processes used between start() and stop()."""

    def start(self):
        self._machine = _proc_stat_seconds()
        self._own = sum(os.times()[:2])
        self._load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        return self

    def stop(self):
        end = _proc_stat_seconds()
        own = sum(os.times()[:2]) - self._own
        result = {"load_average_at_start": self._load_start}
        if self._machine and end and end[1] > self._machine[1]:
            busy = end[0] - self._machine[0]
            total = end[1] - self._machine[1]
            result["other_processes_cpu_share"] = max(0.0, min(1.0, (busy - own) / total))
        return result


# ----------------------------------------------------------------------------------------------
# The whole description
# ----------------------------------------------------------------------------------------------


# glibc's malloc serves a large block from a fresh mmap (page faults on first touch: about 1-2 ms per
# 10 MB) until a free of such a block raises its threshold, and gives heap memory back to the system
# when the free top of the heap passes a second threshold. Both move with the allocation history, which
# in a comparison includes the other side's allocations: the same torch layer timed 6 ms or 18 ms
# depending on what fastconv had allocated and freed before it. Fixing both at the values a long-running
# process settles at (32 MiB, glibc's ceiling for the moving threshold, and twice that) gives every
# side the same allocator, whatever ran before; blocks of 32 MiB or more still come from mmap each call,
# as in any program, except fastconv's CPU outputs of that size, which come from its own block cache
# (csrc/cpu/fresh_output.cpp) as they would in any program that uses fastconv.
MALLOC_MMAP_THRESHOLD = 32 << 20
MALLOC_TRIM_THRESHOLD = 64 << 20


def steady_malloc():
    """Fix glibc malloc's mmap and trim thresholds (see above); a description, or None where the C
    library is not glibc (nothing is changed then)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    if not (mallopt(m_mmap_threshold, MALLOC_MMAP_THRESHOLD) and mallopt(m_trim_threshold, MALLOC_TRIM_THRESHOLD)):
        return None
    return (f"glibc malloc thresholds fixed: mmap {MALLOC_MMAP_THRESHOLD >> 20} MiB, trim "
            f"{MALLOC_TRIM_THRESHOLD >> 20} MiB (the same allocator for every side, whatever ran before; "
            f"fastconv's CPU outputs of 32 MiB or more come from its block cache)")


def _memory_gib():
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def _git_commit():
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10)
        # The committed reports are this runner's output, not code: a rerun over them is no local change.
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)benchmarks/results"], cwd=root, capture_output=True, text=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+local changes" if dirty else "")


def describe(device):
    """Everything about the machine and the software that goes in the report's header."""
    import fastconv

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": device.type,
        "cpu": cpu_model_name(),
        "cpu_isa": cpu_isa(),
        "logical_cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "memory_gib": _memory_gib(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "fastconv": fastconv.__version__,
        "fastconv_build": fastconv.build_info(),
        "git_commit": _git_commit(),
    }
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except ImportError:
        info["torchvision"] = None
    if device.type == "cuda":
        info["gpu_name"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def machine_label(info):
    """A one-line name of the machine for the report's title and every record."""
    if info["device"] == "cuda":
        return f"{info['gpu_name']} (CUDA {info['cuda']}), host {info['cpu']}"
    threads = f"{info['threads']} torch thread{'s' if info['threads'] != 1 else ''}"
    return f"{info['cpu']}, {info['logical_cpus']} logical CPUs, {info['cpu_isa']}, {threads}"

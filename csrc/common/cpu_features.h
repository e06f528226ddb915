// Runtime CPU-feature detection for choosing a kernel variant. Kernels compiled for a wider ISA are
// only ever called after these checks, so a build runs on any x86-64 CPU without illegal instructions.
// FASTCONV_CPU_ISA=baseline|avx2|avx512 forces a narrower path (used by tests to cover every variant).
#pragma once

#include <cstdlib>
#include <cstring>

namespace fastconv {

enum class CpuIsa { Baseline = 0, Avx2 = 1, Avx512 = 2 };

// The widest ISA that fastconv has kernels for in this build.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
constexpr CpuIsa kWidestCompiledIsa = CpuIsa::Avx512;
#else
constexpr CpuIsa kWidestCompiledIsa = CpuIsa::Baseline;
#endif

inline const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::Avx512: return "avx512";
    case CpuIsa::Avx2: return "avx2";
    default: return "baseline";
  }
}

inline CpuIsa detect_cpu_isa() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
    return CpuIsa::Avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return CpuIsa::Avx2;
#endif
  return CpuIsa::Baseline;
}

// The ISA the CPU kernels use: what the CPU supports, capped by the build and by FASTCONV_CPU_ISA.
inline CpuIsa active_cpu_isa() {
  static const CpuIsa isa = [] {
    CpuIsa best = detect_cpu_isa();
    if (static_cast<int>(best) > static_cast<int>(kWidestCompiledIsa)) best = kWidestCompiledIsa;
    if (const char* forced = std::getenv("FASTCONV_CPU_ISA")) {
      CpuIsa want = best;
      if (!std::strcmp(forced, "baseline")) want = CpuIsa::Baseline;
      else if (!std::strcmp(forced, "avx2")) want = CpuIsa::Avx2;
      else if (!std::strcmp(forced, "avx512")) want = CpuIsa::Avx512;
      if (static_cast<int>(want) < static_cast<int>(best)) best = want;
    }
    return best;
  }();
  return isa;
}

}  // namespace fastconv

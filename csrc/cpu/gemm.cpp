// Packed, cache-blocked matrix product (see gemm.h). The loop nest follows the usual recipe for
// register-blocked GEMM: a KC-deep slice of B is packed into NR-wide strips (kept in L1/L2 while it is
// reused), an MC-tall slice of A into MR-tall strips (kept in L2), and the micro-kernel sweeps the
// MR x NR tiles of C. Threads split the packing and the tiles of C; no two threads write one element of
// C and each element's k-sum runs in a fixed order, so the result does not depend on the thread count.
#include "cpu/gemm.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/cpu_features.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

// One copy of the micro-kernel per instruction set.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FASTCONV_ISA_NS isa_avx512
#define FASTCONV_ISA_TARGET __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")))
#define FASTCONV_VECTOR_BYTES 64
#include "cpu/gemm_microkernel.inc"
#undef FASTCONV_ISA_NS
#undef FASTCONV_ISA_TARGET
#undef FASTCONV_VECTOR_BYTES

#define FASTCONV_ISA_NS isa_avx2
#define FASTCONV_ISA_TARGET __attribute__((target("avx2,fma")))
#define FASTCONV_VECTOR_BYTES 32
#include "cpu/gemm_microkernel.inc"
#undef FASTCONV_ISA_NS
#undef FASTCONV_ISA_TARGET
#undef FASTCONV_VECTOR_BYTES
#define FASTCONV_HAVE_X86_KERNELS 1
#endif

#define FASTCONV_ISA_NS isa_baseline
#define FASTCONV_ISA_TARGET
#define FASTCONV_VECTOR_BYTES 16
#include "cpu/gemm_microkernel.inc"
#undef FASTCONV_ISA_NS
#undef FASTCONV_ISA_TARGET
#undef FASTCONV_VECTOR_BYTES

namespace fastconv::cpu {
namespace {

// Cache blocking: a KC x NR strip of B stays in L1 while the micro-kernel walks the A strips of an
// MC x KC panel held in L2.
constexpr int64_t KC = 256;
constexpr int64_t MC_ROWS_TARGET = 192;
constexpr int64_t NC = 4096;

#define FASTCONV_KERNEL_SET(ns, T, MR, NV)                                                                  \
  MicroKernels<T> {                                                                                       \
    MR, NV * ns::Vec<T>::kLanes, &ns::micro_kernel<T, MR, NV>, &ns::micro_kernel_conv<T, MR, NV>,        \
        &ns::micro_kernel_gather<T, MR, NV>, &ns::transpose_copy<T>, &ns::transpose_copy<T, true>,        \
        &ns::pack_a_strip<T, MR>, &ns::pack_b_strip<T, NV * ns::Vec<T>::kLanes>, ns::kDotRows, ns::kDotCols, \
        &ns::dot_rows<T>                                                                                  \
  }

// Register budgets: AVX-512 has 32 vector registers (12 x 2 accumulators + operands),
// AVX2 and the baseline 16 (6 x 2 and 4 x 2).
template <typename T>
MicroKernels<T> kernels_for_cpu() {
#ifdef FASTCONV_HAVE_X86_KERNELS
  switch (active_cpu_isa()) {
    case CpuIsa::Avx512: return FASTCONV_KERNEL_SET(isa_avx512, T, 12, 2);
    case CpuIsa::Avx2: return FASTCONV_KERNEL_SET(isa_avx2, T, 6, 2);
    default: break;
  }
#endif
  return FASTCONV_KERNEL_SET(isa_baseline, T, 4, 2);
}

template <typename T>
const MicroKernels<T>& kernels() {
  static const MicroKernels<T> set = kernels_for_cpu<T>();
  return set;
}

// An MR x NV-vector tile that only AVX-512 has (its 32 registers); elsewhere the same set as kernels().
template <typename T, int MR, int NV>
MicroKernels<T> avx512_tile_for_cpu() {
#ifdef FASTCONV_HAVE_X86_KERNELS
  if (active_cpu_isa() == CpuIsa::Avx512) return FASTCONV_KERNEL_SET(isa_avx512, T, MR, NV);
#endif
  return kernels_for_cpu<T>();
}

// AVX-512's 16 x 1 tile (see micro_kernels_for_width); elsewhere kernels().
template <typename T>
const MicroKernels<T>& narrow_kernels() {
  static const MicroKernels<T> set = avx512_tile_for_cpu<T, 16, 1>();
  return set;
}

// AVX-512's 6 x 4-vector tile (see micro_kernels_for_width); elsewhere kernels().
template <typename T>
const MicroKernels<T>& wide_kernels() {
  static const MicroKernels<T> set = avx512_tile_for_cpu<T, 6, 4>();
  return set;
}

// The tile set for a product of m rows: the 16 x 1 tile where m fills its 16 rows better than the 12 x 2
// tile's 12 (13 to 16 rows: MobileNetV2's 16-channel layers at 112x112, whose 12 x 2 tiles computed 24
// rows for 16: its 32 -> 16 1x1 forward at batch 8, 0.60-0.68 -> 0.54-0.58 ms, the input gradient of its
// 16 -> 96 expansion 2.0-2.1 -> 1.9-2.0 ms), else kernels().
template <typename T>
const MicroKernels<T>& kernels_for_rows(int64_t m) {
  const MicroKernels<T>& narrow = narrow_kernels<T>();
  const MicroKernels<T>& tall = kernels<T>();
  return m > tall.mr && m <= narrow.mr ? narrow : tall;
}

// B given by strides, packed with the instruction set's packing routine.
template <typename T>
struct StridedBPacker final : BPacker<T> {
  const T* b;
  int64_t row_stride, col_stride;
  void (*pack_strip)(int64_t, int64_t, const T*, int64_t, int64_t, T*);
  StridedBPacker(const T* b_, int64_t rs, int64_t cs, void (*fn)(int64_t, int64_t, const T*, int64_t, int64_t, T*))
      : b(b_), row_stride(rs), col_stride(cs), pack_strip(fn) {}
  void pack(int64_t p0, int64_t kc, int64_t j0, int64_t cols, int64_t nr, T* out) const override {
    (void)nr;
    pack_strip(kc, cols, b + p0 * row_stride + j0 * col_stride, row_stride, col_stride, out);
  }
};

// A product with more rows than one panel of A, whose k is one slice and whose packed B (k x n) fits
// 256 KiB of L2, with A's packed rows at most as large: C is written in one pass over all of A's rows
// (one panel), band by band (see gemm_impl). The 1-channel front ends of audio models (k = 10 taps,
// 512 rows, thousands of columns: 0.53 -> 0.29 ms at batch 1); on products of at most one panel of
// rows (MobileNetV2's 1x1 layers) the band order measured no faster.
bool short_k_gemm(int64_t m, int64_t n, int64_t k, int64_t mr, int64_t nr, int64_t element_size) {
  constexpr int64_t kL2Bytes = 256 << 10;
  return m > MC_ROWS_TARGET && k <= KC && k * round_up(std::min<int64_t>(n, NC), nr) * element_size <= kL2Bytes &&
         k * round_up(m, mr) * element_size <= kL2Bytes;
}

// Rows of A packed per panel (MC): all of them for a short-k product (short_k_gemm), else about
// MC_ROWS_TARGET, never more than the matrix has.
int64_t panel_rows(int64_t m, int64_t n, int64_t k, int64_t mr, int64_t nr, int64_t element_size) {
  const int64_t all = round_up(m, mr);
  if (short_k_gemm(m, n, k, mr, nr, element_size)) return all;
  return std::min<int64_t>(std::max<int64_t>(mr, MC_ROWS_TARGET / mr * mr), all);
}

template <typename T>
void gemm_impl(int64_t m, int64_t n, int64_t k, const T* a, int64_t a_rs, int64_t a_cs, const BPacker<T>& b_packer,
               T* c, int64_t ldc, bool accumulate, const MicroKernels<T>& ks) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    if (!accumulate)
      for (int64_t i = 0; i < m; ++i) std::fill(c + i * ldc, c + i * ldc + n, T(0));
    return;
  }
  const int64_t mr = ks.mr, nr = ks.nr;
  const int64_t kc_max = std::min<int64_t>(KC, k);
  const bool short_k = short_k_gemm(m, n, k, mr, nr, sizeof(T));
  const int64_t mc = panel_rows(m, n, k, mr, nr, sizeof(T));
  const int64_t nc = std::min<int64_t>(NC, (n + nr - 1) / nr * nr);
  // Packing buffers: 64-byte aligned so the micro-kernel's vector loads never split cache lines.
  // (new T[] without "()" leaves the buffers uninitialised: packing writes every element it reads.)
  std::unique_ptr<T[]> b_buf(new T[kc_max * nc + 64 / sizeof(T)]);
  std::unique_ptr<T[]> a_buf(new T[kc_max * mc + 64 / sizeof(T)]);
  T* b_packed = align_64(b_buf.get());
  T* a_packed = align_64(a_buf.get());

  for (int64_t jc = 0; jc < n; jc += nc) {
    const int64_t ncur = std::min(nc, n - jc);
    const int64_t n_strips = (ncur + nr - 1) / nr;
    for (int64_t pc = 0; pc < k; pc += KC) {
      const int64_t kc = std::min(KC, k - pc);
      const bool acc_here = accumulate || pc > 0;
      at::parallel_for(0, n_strips, 4, [&](int64_t s0, int64_t s1) {
        for (int64_t s = s0; s < s1; ++s) {
          const int64_t j = jc + s * nr;
          b_packer.pack(pc, kc, j, std::min(nr, n - j), nr, b_packed + s * kc * nr);
        }
      });
      for (int64_t ic = 0; ic < m; ic += mc) {
        const int64_t mcur = std::min(mc, m - ic);
        const int64_t m_strips = (mcur + mr - 1) / mr;
        at::parallel_for(0, m_strips, 4, [&](int64_t s0, int64_t s1) {
          for (int64_t s = s0; s < s1; ++s) {
            const int64_t i = ic + s * mr;
            ks.pack_a(kc, std::min(mr, m - i), a + i * a_rs + pc * a_cs, a_rs, a_cs, a_packed + s * kc * mr);
          }
        });
        // Tiles of C: split by B strip first so each thread keeps its B strip in L1. With a short k all
        // of B's strips stay in L2 and the time goes into writing C: each thread then sweeps whole bands
        // of mr rows left to right (mr write streams, not one per row of the panel).
        at::parallel_for(0, n_strips * m_strips, 1, [&](int64_t t0, int64_t t1) {
          alignas(64) T edge[16 * 64];  // scratch for partial tiles (mr * nr <= 16 * 64)
          for (int64_t t = t0; t < t1; ++t) {
            const int64_t sj = short_k ? t % n_strips : t / m_strips, si = short_k ? t / n_strips : t % m_strips;
            const int64_t i = ic + si * mr, j = jc + sj * nr;
            const int64_t rows = std::min(mr, m - i), cols = std::min(nr, n - j);
            const T* ap = a_packed + si * kc * mr;
            const T* bp = b_packed + sj * kc * nr;
            T* cp = c + i * ldc + j;
            if (rows == mr && cols == nr) {
              ks.micro(kc, ap, bp, cp, ldc, acc_here);
              continue;
            }
            ks.micro(kc, ap, bp, edge, nr, false);
            for (int64_t r = 0; r < rows; ++r)
              for (int64_t q = 0; q < cols; ++q)
                cp[r * ldc + q] = acc_here ? cp[r * ldc + q] + edge[r * nr + q] : edge[r * nr + q];
          }
        });
      }
    }
  }
}

}  // namespace

template <typename T>
void gemm(int64_t m, int64_t n, int64_t k, const T* a, int64_t a_row_stride, int64_t a_col_stride, const T* b,
          int64_t b_row_stride, int64_t b_col_stride, T* c, int64_t ldc, bool accumulate) {
  const MicroKernels<T>& ks = kernels_for_rows<T>(m);
  const StridedBPacker<T> packer(b, b_row_stride, b_col_stride, ks.pack_b);
  gemm_impl<T>(m, n, k, a, a_row_stride, a_col_stride, packer, c, ldc, accumulate, ks);
}

template <typename T>
void gemm_packed_b(int64_t m, int64_t n, int64_t k, const T* a, int64_t a_row_stride, int64_t a_col_stride,
                   const BPacker<T>& b, T* c, int64_t ldc, bool accumulate) {
  gemm_impl<T>(m, n, k, a, a_row_stride, a_col_stride, b, c, ldc, accumulate, kernels_for_rows<T>(m));
}

int64_t gemm_workspace_bytes(int64_t m, int64_t n, int64_t k, int64_t element_size) {
  const int64_t mr = element_size == 4 ? kernels_for_rows<float>(m).mr : kernels_for_rows<double>(m).mr;
  const int64_t nr = element_size == 4 ? kernels_for_rows<float>(m).nr : kernels_for_rows<double>(m).nr;
  const int64_t kc = std::min<int64_t>(KC, k);
  const int64_t mc = panel_rows(m, n, k, mr, nr, element_size);
  const int64_t nc = std::min<int64_t>(NC, round_up(n, nr));
  return (kc * nc + kc * mc) * element_size + 128;
}

template <typename T>
const MicroKernels<T>& micro_kernels() {
  return kernels<T>();
}
template const MicroKernels<float>& micro_kernels<float>();
template const MicroKernels<double>& micro_kernels<double>();

// Besides the 12 x 2 tile, AVX-512 has a 6 x 4 one (wide: half the broadcasts per multiply-add, for the
// direct convolution's 64-channel blocks) and a 16 x 1 one (narrow: for groups of at most one vector of
// output channels, ResNeXt's 16 per group, where the 12 x 2 tile would compute as many zero columns as
// real ones; its 16 rows also cover a tap's 16 input channels in one weight-gradient chunk, where 12 rows
// split them 12 + 4: ResNeXt-50 layer3's weight gradient at batch 8, 2.4-2.8 -> 1.55-1.75 ms).
template <typename T>
const MicroKernels<T>& micro_kernels_for_width(int64_t columns) {
  const MicroKernels<T>& wide = wide_kernels<T>();
  const MicroKernels<T>& narrow = narrow_kernels<T>();
  const MicroKernels<T>& tall = kernels<T>();
  if (columns <= narrow.nr && narrow.nr < tall.nr) return narrow;
  const auto waste = [&](const MicroKernels<T>& set) { return (columns + set.nr - 1) / set.nr * set.nr - columns; };
  return waste(wide) <= waste(tall) ? wide : tall;
}
template const MicroKernels<float>& micro_kernels_for_width<float>(int64_t);
template const MicroKernels<double>& micro_kernels_for_width<double>(int64_t);

template <typename T>
const MicroKernels<T>& micro_kernels_for_conv(int64_t columns, int64_t row_width) {
  static const MicroKernels<T> wide7 = avx512_tile_for_cpu<T, 7, 4>();
  const MicroKernels<T>& fitted = micro_kernels_for_width<T>(columns);
  return &fitted == &wide_kernels<T>() && wide7.mr == 7 && row_width % 7 == 0 ? wide7 : fitted;
}
template const MicroKernels<float>& micro_kernels_for_conv<float>(int64_t, int64_t);
template const MicroKernels<double>& micro_kernels_for_conv<double>(int64_t, int64_t);

template void gemm_packed_b<float>(int64_t, int64_t, int64_t, const float*, int64_t, int64_t, const BPacker<float>&,
                                   float*, int64_t, bool);
template void gemm_packed_b<double>(int64_t, int64_t, int64_t, const double*, int64_t, int64_t,
                                    const BPacker<double>&, double*, int64_t, bool);

template void gemm<float>(int64_t, int64_t, int64_t, const float*, int64_t, int64_t, const float*, int64_t, int64_t,
                          float*, int64_t, bool);
template void gemm<double>(int64_t, int64_t, int64_t, const double*, int64_t, int64_t, const double*, int64_t,
                           int64_t, double*, int64_t, bool);

}  // namespace fastconv::cpu

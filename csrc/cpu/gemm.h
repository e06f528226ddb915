// fastconv's own packed matrix product for the CPU convolution kernels.
//
//   C (m x n, row stride ldc)  =  A (m x k) * B (k x n)        (accumulate == false)
//   C                         +=  A * B                       (accumulate == true)
//
// A and B are read through element strides, so transposed operands cost nothing extra:
// A(i, p) = a[i * a_row_stride + p * a_col_stride], B(p, j) = b[p * b_row_stride + j * b_col_stride].
// The micro-kernel is compiled for AVX-512, AVX2+FMA and a portable baseline and picked at run time
// (common/cpu_features.h). Every element of C is summed over k in the same order whatever the thread
// count, so results are bitwise reproducible.
#pragma once

#include <cstdint>

#include "cpu/align.h"

namespace fastconv::cpu {

// Supplies packed strips of B: rows [p0, p0 + kc) x columns [j0, j0 + cols) as a kc x nr row-major
// block (nr >= cols), zero-filled beyond `cols`. Lets a caller build B on the fly (implicit im2col)
// instead of materialising it.
template <typename T>
struct BPacker {
  virtual ~BPacker() = default;
  virtual void pack(int64_t p0, int64_t kc, int64_t j0, int64_t cols, int64_t nr, T* out) const = 0;
};

// C = / += A * B with B produced by `b` (see BPacker).
template <typename T>
void gemm_packed_b(int64_t m, int64_t n, int64_t k, const T* a, int64_t a_row_stride, int64_t a_col_stride,
                   const BPacker<T>& b, T* c, int64_t ldc, bool accumulate);

// Bytes of packing buffers one gemm call of this size allocates.
int64_t gemm_workspace_bytes(int64_t m, int64_t n, int64_t k, int64_t element_size);

// The register-blocked kernels of the instruction set in use (common/cpu_features.h), for callers that
// drive them directly (the direct convolution). C tiles are MR x NR, NR a multiple of the vector width.
template <typename T>
struct MicroKernels {
  int mr, nr;
  // C(mr x nr) = / += A_packed(kc x mr, column-major strips) * B_packed(kc x nr)
  void (*micro)(int64_t kc, const T* a_packed, const T* b_packed, T* c, int64_t ldc, bool accumulate);
  // C(mr x nr) = (C with accumulate, else the bias row or 0) + A * B_packed, A read in place:
  // A(i, (t, ci)) = a_base[pixel_offsets[i] + tap_offsets[t] + ci]; bias: nr values or null. The taps are
  // 0 .. taps - 1, or tap_index[0 .. taps - 1]; edges (or null): per listed tap, bit 0 (1) skips the
  // tile's first (last) pixel, which reads only zeros there (micro_kernel_conv)
  void (*micro_conv)(int64_t taps, const int64_t* tap_index, const uint8_t* edges, int64_t channels,
                     const T* a_base, const int64_t* pixel_offsets, const int64_t* tap_offsets, const T* b_packed,
                     T* c, int64_t ldc, const T* bias, bool accumulate);
  // C(mr x nr, row stride nr) = / += A * B_packed(kc x nr), A's column p read in place: the mr elements at
  // a_base + col_offsets[p]
  void (*micro_gather)(int64_t kc, const T* a_base, const int64_t* col_offsets, const T* b_packed, T* c,
                       bool accumulate);
  // dst[col(j) + i] = src[i * src_stride + j] for i < rows, j < cols; col(j) = dst_cols ? dst_cols[j] : j * dst_stride
  void (*transpose)(int64_t rows, int64_t cols, const T* src, int64_t src_stride, T* dst, int64_t dst_stride,
                    const int64_t* dst_cols);
  // The same, writing full aligned vectors past the caches: for results larger than the caches that
  // nothing reads back soon
  void (*transpose_stream)(int64_t rows, int64_t cols, const T* src, int64_t src_stride, T* dst,
                           int64_t dst_stride, const int64_t* dst_cols);
  void (*pack_a)(int64_t kc, int64_t rows, const T* a, int64_t row_stride, int64_t col_stride, T* out);
  void (*pack_b)(int64_t kc, int64_t cols, const T* b, int64_t row_stride, int64_t col_stride, T* out);
  // c[i * ldc + j] = / += sum over q < count, p < k of a[q * a_step + i * lda + p] * b[q * b_step + b_rows[j] + p],
  // i < rows <= dot_rows_max, j < cols <= dot_cols_max: dot products of rows, both contiguous along p
  int dot_rows_max, dot_cols_max;
  void (*dot_rows)(int64_t k, int64_t count, const T* a, int64_t lda, int64_t a_step, int64_t rows, const T* b,
                   const int64_t* b_rows, int64_t b_step, int64_t cols, T* c, int64_t ldc, bool accumulate);
};

template <typename T>
const MicroKernels<T>& micro_kernels();

// The kernels of the instruction set in use whose NR wastes the fewest columns on a matrix `columns`
// wide (on AVX-512, a 6 x 64 tile where it fits as well as the 12 x 32 one of micro_kernels(), and a
// 16 x 16 one for at most 16 columns).
template <typename T>
const MicroKernels<T>& micro_kernels_for_width(int64_t columns);

// The kernels for a padded convolution's output tiles, `columns` output channels wide on rows of row_width
// pixels: micro_kernels_for_width's, but on AVX-512 a 7 x 64 tile in place of the 6 x 64 one where rows
// are whole numbers of 7 pixels (ResNet's 56, 28, 14 and 7), so that no tile spans two rows and each can
// leave out the padding beside its row (the direct convolution's blocked kernel).
template <typename T>
const MicroKernels<T>& micro_kernels_for_conv(int64_t columns, int64_t row_width);

template <typename T>
void gemm(int64_t m, int64_t n, int64_t k, const T* a, int64_t a_row_stride, int64_t a_col_stride, const T* b,
          int64_t b_row_stride, int64_t b_col_stride, T* c, int64_t ldc, bool accumulate);

}  // namespace fastconv::cpu

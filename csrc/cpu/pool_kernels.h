// Row kernels of CPU pooling, compiled once per instruction set.
//
// pool.cpp includes this file several times, each time inside `#pragma GCC target(...)` and with
// FASTCONV_POOL_ISA naming the namespace (avx512, avx2, baseline), after everything it uses has been
// declared; it has no include guard and includes nothing itself. Code here must not instantiate
// templates from outside (std::fill, std::vector, ...): an instantiation made here could be compiled
// for the wider instruction set and then shared with code that runs on CPUs without it.
//
// Every kernel works on a range [r0, r1) of rows, so that at::parallel_for can split the work.
// Forward: row r is output row oh = r % out_h of plane p = r / out_h. Within a row, the "interior"
// columns, whose windows lie wholly inside the input, go through vectorised loops along W; the few
// edge columns next to the padding use checked scalar loops. Every output cell sees its taps in
// torch's order (kernel row, then kernel column), so ties, NaNs and sums come out exactly as torch's.

namespace fastconv::cpu {
namespace {
namespace FASTCONV_POOL_ISA {

template <typename scalar_t>
inline void fill_row(scalar_t* row, int64_t n, scalar_t value) {
  for (int64_t j = 0; j < n; ++j) row[j] = value;
}

// A value replaces the running maximum if it is larger or NaN (torch's rule: a NaN wins, and the last
// NaN of the window gives the index; among equal values the first one wins). `|`, not `||`, keeps it
// branch-free.
template <typename scalar_t>
inline bool replaces_max(scalar_t v, scalar_t best) {
  return (v > best) | (v != v);
}

// ---------------------------------------------------------------------------------------------
// max pooling
// ---------------------------------------------------------------------------------------------

// The taps of output column ow that lie on input row `row` (an edge column: some taps are outside).
template <typename scalar_t, typename index_t>
inline void max_update_edge(const PoolGeometry& g, const scalar_t* row, int64_t row_index, int64_t ow,
                            scalar_t* best, index_t* best_index) {
  const int64_t w0 = ow * g.stride_w - g.pad_w;
  const OutputRange cols = taps_inside(w0, g.kernel_w, g.dil_w, g.in_w);
  for (int64_t kj = cols.lo; kj < cols.hi; ++kj) {
    const int64_t iw = w0 + kj * g.dil_w;
    if (replaces_max(row[iw], best[ow])) {
      best[ow] = row[iw];
      best_index[ow] = static_cast<index_t>(row_index + iw);
    }
  }
}

// One kernel row of taps for the interior columns j < n: best[j], best_index[j] take the tap
// src[j * stride + kj * dilation] (flat input index first_index + j * stride + kj * dilation) if it
// replaces them, for kj = 0 .. kernel - 1 in order. Plain loops that the compiler vectorises; index_t
// is int32 whenever indices fit, so that values and indices fill vectors of equal length.
template <typename scalar_t, typename index_t, int64_t kStride>
inline void max_update_interior_autovec(const scalar_t* __restrict src, index_t first_index, int64_t stride,
                                        int64_t kernel, int64_t dilation, int64_t n, scalar_t* __restrict best,
                                        index_t* __restrict best_index) {
  // Addresses are computed in int64 and index values in index_t: the build uses -fwrapv, under which
  // int32 address arithmetic is not affine and the loads would become gathers.
  const int64_t s = kStride > 0 ? kStride : stride;
  for (int64_t kj = 0; kj < kernel; ++kj) {
    const scalar_t* tap = src + kj * dilation;
    const index_t tap_index = first_index + static_cast<index_t>(kj * dilation);
    for (int64_t j = 0; j < n; ++j) {
      const scalar_t v = tap[j * s];
      const bool take = replaces_max(v, best[j]);
      best[j] = take ? v : best[j];
      best_index[j] = take ? tap_index + static_cast<index_t>(j * s) : best_index[j];
    }
  }
}

#if FASTCONV_POOL_VECTOR_EXTENSIONS
// One native vector (FASTCONV_POOL_VECTOR_BYTES) of values, and integer lanes of the same width
// (comparison masks, indices): int32 for float, int64 for double.
template <typename scalar_t>
struct Vec {
  using index_t = std::conditional_t<sizeof(scalar_t) == 4, int32_t, int64_t>;
  static constexpr int64_t kLanes = FASTCONV_POOL_VECTOR_BYTES / sizeof(scalar_t);
  typedef scalar_t V __attribute__((vector_size(FASTCONV_POOL_VECTOR_BYTES)));
  typedef index_t I __attribute__((vector_size(FASTCONV_POOL_VECTOR_BYTES)));

  template <size_t... lane>
  static I iota(std::index_sequence<lane...>) {
    return I{static_cast<index_t>(lane)...};
  }
  static I iota() { return iota(std::make_index_sequence<kLanes>()); }

  // p[0], p[2], ..., p[2 * (kLanes - 1)] out of lo = p[0 .. kLanes - 1] and hi = p[kLanes - 1 ..
  // 2 * kLanes - 2]: the taps of kLanes columns at stride 2, without reading past the last one.
  template <size_t... lane>
  static V even(V lo, V hi, std::index_sequence<lane...>) {
    return __builtin_shuffle(lo, hi, I{static_cast<index_t>(2 * lane < kLanes ? 2 * lane : 2 * lane + 1)...});
  }
  static V even(V lo, V hi) { return even(lo, hi, std::make_index_sequence<kLanes>()); }
};

template <typename V, typename T>
inline V load_vec(const T* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof(V));
  return v;
}
template <typename V, typename T>
inline void store_vec(T* p, const V& v) {
  __builtin_memcpy(p, &v, sizeof(V));
}

// The taps of kLanes consecutive output columns: p[l * stride] for lane l. Never reads past the last
// tap (the input may end right there).
template <typename scalar_t, int64_t kStride>
inline typename Vec<scalar_t>::V load_taps(const scalar_t* p, int64_t stride) {
  using L = Vec<scalar_t>;
  using V = typename L::V;
  if constexpr (kStride == 1) {
    return load_vec<V>(p);
  } else if constexpr (kStride == 2) {
    return L::even(load_vec<V>(p), load_vec<V>(p + L::kLanes - 1));
  } else {
    V v;
    for (int64_t l = 0; l < L::kLanes; ++l) v[l] = p[l * stride];
    return v;
  }
}

// The same update as max_update_interior_autovec with explicit vectors, for n >= kLanes: the
// running maximum of a block of columns stays in registers over the whole kernel row. The last block
// is moved back to end at n, overlapping the one before, instead of leaving a scalar remainder. That
// is exact: applying a tap twice changes nothing (a value never replaces itself, and a NaN replaces
// itself with the same index).
template <typename scalar_t, int64_t kStride>
inline void max_update_interior_simd(const scalar_t* src, typename Vec<scalar_t>::index_t first_index,
                                     int64_t stride, int64_t kernel, int64_t dilation, int64_t n, scalar_t* best,
                                     typename Vec<scalar_t>::index_t* best_index) {
  using L = Vec<scalar_t>;
  using V = typename L::V;
  using I = typename L::I;
  using index_t = typename L::index_t;
  const int64_t s = kStride > 0 ? kStride : stride;
  const I lane_offsets = L::iota() * static_cast<index_t>(s);
  auto block = [&](int64_t j) {
    V b = load_vec<V>(best + j);
    I bi = load_vec<I>(best_index + j);
    const I column_index = lane_offsets + static_cast<index_t>(first_index + j * s);
    for (int64_t kj = 0; kj < kernel; ++kj) {
      const V v = load_taps<scalar_t, kStride>(src + j * s + kj * dilation, s);
      const I take = (v > b) | (v != v);
      b = take ? v : b;
      bi = take ? column_index + static_cast<index_t>(kj * dilation) : bi;
    }
    store_vec(best + j, b);
    store_vec(best_index + j, bi);
  };
  int64_t j = 0;
  for (; j + L::kLanes <= n; j += L::kLanes) block(j);
  if (j < n) block(n - L::kLanes);
}
#endif  // FASTCONV_POOL_VECTOR_EXTENSIONS

template <typename scalar_t, typename index_t, int64_t kStride>
inline void max_update_interior(const scalar_t* src, index_t first_index, int64_t stride, int64_t kernel,
                                int64_t dilation, int64_t n, scalar_t* best, index_t* best_index) {
#if FASTCONV_POOL_VECTOR_EXTENSIONS
  if constexpr (std::is_same_v<index_t, typename Vec<scalar_t>::index_t>) {
    if (n >= Vec<scalar_t>::kLanes) {
      max_update_interior_simd<scalar_t, kStride>(src, first_index, stride, kernel, dilation, n, best, best_index);
      return;
    }
  }
#endif
  max_update_interior_autovec<scalar_t, index_t, kStride>(src, first_index, stride, kernel, dilation, n, best,
                                                          best_index);
}

// Starting point of every window: -inf, and the index torch reports when nothing beats it (the first
// tap inside the input, or past the end for a window with no tap inside).
template <typename scalar_t, typename index_t>
inline void max_init_row(const PoolGeometry& g, const OutputRange& interior, int64_t first_row,
                         scalar_t* __restrict best, index_t* __restrict best_index) {
  fill_row(best, g.out_w, -std::numeric_limits<scalar_t>::infinity());
  auto edge = [&](int64_t ow) {
    const int64_t w0 = ow * g.stride_w - g.pad_w;
    const int64_t kj = taps_inside(w0, g.kernel_w, g.dil_w, g.in_w).lo;
    best_index[ow] = static_cast<index_t>(first_row * g.in_w + w0 + kj * g.dil_w);
  };
  for (int64_t ow = 0; ow < interior.lo; ++ow) edge(ow);
  const int64_t first = first_row * g.in_w - g.pad_w, s = g.stride_w;
  for (int64_t ow = interior.lo; ow < interior.hi; ++ow) best_index[ow] = static_cast<index_t>(first + ow * s);
  for (int64_t ow = interior.hi; ow < g.out_w; ++ow) edge(ow);
}

// Rows r of (planes * out_h). Values go straight to the output; indices go to best_index_rows, which
// is either the int64 output itself (index_t == int64_t) or a scratch row of out_w narrower indices
// that is widened after each row.
template <typename scalar_t, typename index_t>
void max_pool_rows(const MaxPoolArgs<scalar_t>& a, int64_t r0, int64_t r1, index_t* narrow_scratch) {
  const PoolGeometry& g = *a.g;
  const OutputRange interior = a.interior;
  const int64_t n = interior.hi - interior.lo;
  constexpr bool kWide = std::is_same_v<index_t, int64_t>;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t p = r / g.out_h, oh = r % g.out_h;
    const scalar_t* plane = a.in + p * g.in_plane();
    scalar_t* best = a.out + r * g.out_w;
    int64_t* idx_row = a.idx + r * g.out_w;
    index_t* best_index = kWide ? reinterpret_cast<index_t*>(idx_row) : narrow_scratch;

    const int64_t h0 = oh * g.stride_h - g.pad_h;
    const OutputRange rows = taps_inside(h0, g.kernel_h, g.dil_h, g.in_h);
    max_init_row(g, interior, h0 + rows.lo * g.dil_h, best, best_index);
    for (int64_t ki = rows.lo; ki < rows.hi; ++ki) {
      const int64_t ih = h0 + ki * g.dil_h;
      const scalar_t* row = plane + ih * g.in_w;
      const int64_t row_index = ih * g.in_w;
      for (int64_t ow = 0; ow < interior.lo; ++ow) max_update_edge(g, row, row_index, ow, best, best_index);
      if (n > 0) {
        const int64_t iw = interior.lo * g.stride_w - g.pad_w;
        const index_t first = static_cast<index_t>(row_index + iw);
        scalar_t* b = best + interior.lo;
        index_t* bi = best_index + interior.lo;
        if (g.stride_w == 1)
          max_update_interior<scalar_t, index_t, 1>(row + iw, first, 1, g.kernel_w, g.dil_w, n, b, bi);
        else if (g.stride_w == 2)
          max_update_interior<scalar_t, index_t, 2>(row + iw, first, 2, g.kernel_w, g.dil_w, n, b, bi);
        else
          max_update_interior<scalar_t, index_t, 0>(row + iw, first, g.stride_w, g.kernel_w, g.dil_w, n, b, bi);
      }
      for (int64_t ow = interior.hi; ow < g.out_w; ++ow) max_update_edge(g, row, row_index, ow, best, best_index);
    }
    if constexpr (!kWide)
      for (int64_t ow = 0; ow < g.out_w; ++ow) idx_row[ow] = best_index[ow];
  }
}

#if FASTCONV_POOL_VECTOR_EXTENSIONS
// ---------------------------------------------------------------------------------------------
// channels-last input
// ---------------------------------------------------------------------------------------------
// Input laid out (N, H, W, C) in memory, output NCHW-contiguous like every other fastconv pooling
// output. Row r is (image n = r / out_h, output row oh = r % out_h). Each output pixel takes vectors
// of channels through its window's taps in torch's order, then writes each channel's result to its
// own plane. Needs channels >= kLanes; the last channel block moves back to end at `channels` and
// recomputes a few channels rather than leaving a remainder.

template <typename scalar_t, typename V>
inline void scatter_channels(const V& values, scalar_t* out, int64_t plane_stride) {
  for (int64_t l = 0; l < static_cast<int64_t>(sizeof(V) / sizeof(scalar_t)); ++l) out[l * plane_stride] = values[l];
}

template <typename scalar_t>
void max_pool_rows_channels_last(const MaxPoolArgs<scalar_t>& a, int64_t channels, int64_t r0, int64_t r1) {
  using L = Vec<scalar_t>;
  using V = typename L::V;
  using I = typename L::I;
  using index_t = typename L::index_t;
  const PoolGeometry& g = *a.g;
  const int64_t out_plane = g.out_plane();
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / g.out_h, oh = r % g.out_h;
    const scalar_t* image = a.in + n * g.in_plane() * channels;
    const int64_t h0 = oh * g.stride_h - g.pad_h;
    const OutputRange rows = taps_inside(h0, g.kernel_h, g.dil_h, g.in_h);
    const int64_t first_row = h0 + rows.lo * g.dil_h;
    for (int64_t ow = 0; ow < g.out_w; ++ow) {
      const int64_t w0 = ow * g.stride_w - g.pad_w;
      const OutputRange cols = taps_inside(w0, g.kernel_w, g.dil_w, g.in_w);
      const index_t start_index = static_cast<index_t>(first_row * g.in_w + w0 + cols.lo * g.dil_w);
      const int64_t out_offset = n * channels * out_plane + oh * g.out_w + ow;
      auto block = [&](int64_t c0) {
        V b = V{} - std::numeric_limits<scalar_t>::infinity();
        I bi = I{} + start_index;
        for (int64_t ki = rows.lo; ki < rows.hi; ++ki) {
          const int64_t ih = h0 + ki * g.dil_h;
          for (int64_t kj = cols.lo; kj < cols.hi; ++kj) {
            const int64_t iw = w0 + kj * g.dil_w;
            const V v = load_vec<V>(image + (ih * g.in_w + iw) * channels + c0);
            const I take = (v > b) | (v != v);
            b = take ? v : b;
            bi = take ? I{} + static_cast<index_t>(ih * g.in_w + iw) : bi;
          }
        }
        scatter_channels(b, a.out + out_offset + c0 * out_plane, out_plane);
        for (int64_t l = 0; l < L::kLanes; ++l) a.idx[out_offset + (c0 + l) * out_plane] = bi[l];
      };
      int64_t c0 = 0;
      for (; c0 + L::kLanes <= channels; c0 += L::kLanes) block(c0);
      if (c0 < channels) block(channels - L::kLanes);
    }
  }
}

template <typename scalar_t>
void avg_pool_rows_channels_last(const AvgPoolArgs<scalar_t>& a, int64_t channels, int64_t r0, int64_t r1) {
  using L = Vec<scalar_t>;
  using V = typename L::V;
  const PoolGeometry& g = *a.g;
  const int64_t out_plane = g.out_plane();
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / g.out_h, oh = r % g.out_h;
    const scalar_t* image = a.in + n * g.in_plane() * channels;
    const int64_t h0 = oh * g.stride_h - g.pad_h;
    const OutputRange rows = taps_inside(h0, g.kernel_h, 1, g.in_h);
    for (int64_t ow = 0; ow < g.out_w; ++ow) {
      const int64_t w0 = ow * g.stride_w - g.pad_w;
      const OutputRange cols = taps_inside(w0, g.kernel_w, 1, g.in_w);
      const scalar_t divisor = a.divisors[oh * g.out_w + ow];
      const int64_t out_offset = n * channels * out_plane + oh * g.out_w + ow;
      auto block = [&](int64_t c0) {
        V sum = V{};
        for (int64_t ki = rows.lo; ki < rows.hi; ++ki)
          for (int64_t kj = cols.lo; kj < cols.hi; ++kj)
            sum += load_vec<V>(image + ((h0 + ki) * g.in_w + w0 + kj) * channels + c0);
        scatter_channels(sum / divisor, a.out + out_offset + c0 * out_plane, out_plane);
      };
      int64_t c0 = 0;
      for (; c0 + L::kLanes <= channels; c0 += L::kLanes) block(c0);
      if (c0 < channels) block(channels - L::kLanes);
    }
  }
}
#endif  // FASTCONV_POOL_VECTOR_EXTENSIONS

// ---------------------------------------------------------------------------------------------
// average pooling
// ---------------------------------------------------------------------------------------------

// out[j] += the taps src[j * stride + kj], kj = 0 .. kernel - 1, added in order. With the kernel width
// fixed at compile time (kKernel > 0) the running sum stays in a register.
template <typename scalar_t, int64_t kStride, int64_t kKernel>
inline void add_row_taps(const scalar_t* __restrict src, int64_t stride, int64_t kernel, int64_t n,
                         scalar_t* __restrict out) {
  const int64_t s = kStride > 0 ? kStride : stride;
  if constexpr (kKernel > 0) {
    for (int64_t j = 0; j < n; ++j) {
      scalar_t sum = out[j];
      for (int64_t kj = 0; kj < kKernel; ++kj) sum += src[j * s + kj];
      out[j] = sum;
    }
  } else {
    for (int64_t kj = 0; kj < kernel; ++kj)
      for (int64_t j = 0; j < n; ++j) out[j] += src[j * s + kj];
  }
}

template <typename scalar_t, int64_t kStride>
inline void add_row_taps_for_kernel(const scalar_t* src, int64_t stride, int64_t kernel, int64_t n, scalar_t* out) {
  if (kernel == 2) add_row_taps<scalar_t, kStride, 2>(src, stride, 2, n, out);
  else if (kernel == 3) add_row_taps<scalar_t, kStride, 3>(src, stride, 3, n, out);
  else add_row_taps<scalar_t, kStride, 0>(src, stride, kernel, n, out);
}

template <typename scalar_t>
inline void avg_add_edge(const PoolGeometry& g, const scalar_t* row, int64_t ow, scalar_t* out) {
  const int64_t w0 = ow * g.stride_w - g.pad_w;
  const OutputRange cols = taps_inside(w0, g.kernel_w, 1, g.in_w);
  for (int64_t kj = cols.lo; kj < cols.hi; ++kj) out[ow] += row[w0 + kj];
}

// Sums each window in torch's order (kernel row, then kernel column), then divides.
template <typename scalar_t>
void avg_pool_rows(const AvgPoolArgs<scalar_t>& a, int64_t r0, int64_t r1) {
  const PoolGeometry& g = *a.g;
  const OutputRange interior = a.interior;
  const int64_t n = interior.hi - interior.lo, out_w = g.out_w;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t p = r / g.out_h, oh = r % g.out_h;
    const scalar_t* plane = a.in + p * g.in_plane();
    scalar_t* __restrict out = a.out + r * out_w;
    const int64_t h0 = oh * g.stride_h - g.pad_h;
    const OutputRange rows = taps_inside(h0, g.kernel_h, 1, g.in_h);
    fill_row(out, out_w, scalar_t(0));
    for (int64_t ki = rows.lo; ki < rows.hi; ++ki) {
      const scalar_t* row = plane + (h0 + ki) * g.in_w;
      for (int64_t ow = 0; ow < interior.lo; ++ow) avg_add_edge(g, row, ow, out);
      if (n > 0) {
        const scalar_t* src = row + interior.lo * g.stride_w - g.pad_w;
        scalar_t* dst = out + interior.lo;
        if (g.stride_w == 1) add_row_taps_for_kernel<scalar_t, 1>(src, 1, g.kernel_w, n, dst);
        else if (g.stride_w == 2) add_row_taps_for_kernel<scalar_t, 2>(src, 2, g.kernel_w, n, dst);
        else add_row_taps<scalar_t, 0, 0>(src, g.stride_w, g.kernel_w, n, dst);
      }
      for (int64_t ow = interior.hi; ow < out_w; ++ow) avg_add_edge(g, row, ow, out);
    }
    const scalar_t* __restrict divisors = a.divisors + oh * out_w;
    for (int64_t ow = 0; ow < out_w; ++ow) out[ow] /= divisors[ow];
  }
}

// Adaptive average pooling. Output row oh: first the column sums of its input rows (a vectorised pass
// along W into column_sums, in_w values of scratch), then each output cell adds up the column sums of
// its columns and divides by its height and then its width, as torch does.
template <typename scalar_t>
void adaptive_avg_rows(const AdaptiveAvgArgs<scalar_t>& a, int64_t r0, int64_t r1, scalar_t* column_sums) {
  const PoolGeometry& g = *a.g;
  const AdaptiveWindowView win = a.win;
  scalar_t* __restrict sums = column_sums;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t p = r / g.out_h, oh = r % g.out_h;
    const scalar_t* plane = a.in + p * g.in_plane();
    fill_row(sums, g.in_w, scalar_t(0));
    for (int64_t ih = win.h0[oh]; ih < win.h1[oh]; ++ih)
      add_row_taps<scalar_t, 1, 1>(plane + ih * g.in_w, 1, 1, g.in_w, sums);
    const int64_t kh = win.h1[oh] - win.h0[oh];
    for (int64_t ow = 0; ow < g.out_w; ++ow) {
      scalar_t sum = 0;
      for (int64_t iw = win.w0[ow]; iw < win.w1[ow]; ++iw) sum += sums[iw];
      a.out[r * g.out_w + ow] = sum / kh / (win.w1[ow] - win.w0[ow]);
    }
  }
}

// Gradient of windowed average pooling. Row r is input-gradient row ih = r % in_h of plane
// p = r / in_h, owned by one thread: it visits the output rows whose windows read row ih in ascending
// order (readers_h) and adds each output cell's already divided gradient to the elements of its window
// on this row. Interior columns run kernel column by kernel column from the last to the first, which
// keeps each element's terms in ascending output-column order: every element gets its terms in
// ascending output order, as from torch's sequential scatter.
template <typename scalar_t>
inline void avg_backward_add_edge(const PoolGeometry& g, scalar_t go, int64_t ow, scalar_t* gi) {
  const int64_t w0 = ow * g.stride_w - g.pad_w;
  const OutputRange cols = taps_inside(w0, g.kernel_w, 1, g.in_w);
  for (int64_t kj = cols.lo; kj < cols.hi; ++kj) gi[w0 + kj] += go;
}

template <typename scalar_t>
void avg_pool_backward_rows(const AvgBackwardArgs<scalar_t>& a, int64_t r0, int64_t r1) {
  const PoolGeometry& g = *a.g;
  const OutputRange interior = a.interior;
  const int64_t n = interior.hi - interior.lo, s = g.stride_w;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t p = r / g.in_h, ih = r % g.in_h;
    scalar_t* __restrict gi = a.grad_in + r * g.in_w;
    fill_row(gi, g.in_w, scalar_t(0));
    for (const int64_t* oh = a.readers_h.begin(ih); oh != a.readers_h.end(ih); ++oh) {
      const scalar_t* __restrict go = a.scaled_grad_out + p * g.out_plane() + *oh * g.out_w;
      for (int64_t ow = 0; ow < interior.lo; ++ow) avg_backward_add_edge(g, go[ow], ow, gi);
      for (int64_t kj = g.kernel_w - 1; kj >= 0 && n > 0; --kj) {
        scalar_t* dst = gi + interior.lo * s - g.pad_w + kj;
        const scalar_t* src = go + interior.lo;
        if (s == 1) {
          for (int64_t j = 0; j < n; ++j) dst[j] += src[j];
        } else {
          for (int64_t j = 0; j < n; ++j) dst[j * s] += src[j];
        }
      }
      for (int64_t ow = interior.hi; ow < g.out_w; ++ow) avg_backward_add_edge(g, go[ow], ow, gi);
    }
  }
}

}  // namespace FASTCONV_POOL_ISA
}  // namespace
}  // namespace fastconv::cpu

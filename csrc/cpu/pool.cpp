// Max, average and adaptive pooling on CPU, forward and backward.
//
// Every op works on planes: the input is made NCHW-contiguous and viewed as (planes, H, W); threads
// split the work over (plane, row) pairs with at::parallel_for.
//
// Forward kernels build one output row at a time. Within a row, the columns whose whole window lies
// inside the input ("interior") are updated tap by tap with a branch-free loop along W that the
// compiler vectorises; the few edge columns next to the padding use a checked loop. Every output cell
// still sees its taps in torch's order (kernel row, then kernel column), so ties, NaNs and sums come
// out exactly as torch's.
//
// Backward kernels gather: each input-gradient element is summed by one thread, over the output
// cells whose window reads it, in ascending output order. That is deterministic (no atomics) and adds
// the same terms in the same order as torch's sequential scatter.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <tuple>
#include <vector>

#include "common/shapes.h"

namespace fastconv::cpu {
namespace {

// Work items smaller than this many inner-loop steps are not worth a thread of their own.
constexpr int64_t kMinStepsPerTask = 1 << 14;

int64_t grain_for(int64_t steps_per_item) {
  return std::max<int64_t>(1, kMinStepsPerTask / std::max<int64_t>(1, steps_per_item));
}

// ---------------------------------------------------------------------------------------------
// Window geometry along one axis
// ---------------------------------------------------------------------------------------------

// Output columns [lo, hi) whose every tap (0 .. span, span = dilation * (kernel - 1)) reads a real
// input column; the columns outside it touch padding or run past the end (ceil mode).
OutputRange interior_outputs(int64_t out, int64_t in, int64_t stride, int64_t pad, int64_t span) {
  const int64_t lo = valid_output_range(out, in, stride, pad, 0).lo;
  const int64_t hi = valid_output_range(out, in, stride, pad, span).hi;
  return {lo, std::max(lo, hi)};
}

// Kernel taps k in [lo, hi) of a window starting at `start` (step `dilation`) that land in [0, in).
OutputRange taps_inside(int64_t start, int64_t kernel, int64_t dilation, int64_t in) {
  const int64_t lo = start < 0 ? (-start + dilation - 1) / dilation : 0;
  const int64_t hi = start >= in ? 0 : std::min(kernel, (in - start + dilation - 1) / dilation);
  return {lo, std::max(lo, hi)};
}

// For every input position along one axis, the output positions whose window reads it, ascending
// (compressed rows: outputs_of(i) = outputs[offsets[i] .. offsets[i + 1])). Built once per call and
// shared by all planes, it turns every backward kernel into a gather.
struct AxisReaders {
  std::vector<int64_t> offsets, outputs;

  template <typename ForEachRead>  // for_each_read(o, visit) calls visit(i) for each input i that o reads
  static AxisReaders build(int64_t in, int64_t out, ForEachRead for_each_read) {
    AxisReaders r;
    r.offsets.assign(in + 1, 0);
    for (int64_t o = 0; o < out; ++o) for_each_read(o, [&](int64_t i) { ++r.offsets[i + 1]; });
    for (int64_t i = 0; i < in; ++i) r.offsets[i + 1] += r.offsets[i];
    r.outputs.resize(r.offsets[in]);
    std::vector<int64_t> fill(r.offsets.begin(), r.offsets.end() - 1);
    for (int64_t o = 0; o < out; ++o) for_each_read(o, [&](int64_t i) { r.outputs[fill[i]++] = o; });
    return r;
  }

  static AxisReaders windowed(int64_t in, int64_t out, int64_t kernel, int64_t stride, int64_t pad, int64_t dilation) {
    return build(in, out, [&](int64_t o, auto visit) {
      const int64_t start = o * stride - pad;
      const OutputRange k = taps_inside(start, kernel, dilation, in);
      for (int64_t t = k.lo; t < k.hi; ++t) visit(start + t * dilation);
    });
  }

  static AxisReaders adaptive(int64_t in, int64_t out) {
    return build(in, out, [&](int64_t o, auto visit) {
      for (int64_t i = adaptive_start(o, out, in); i < adaptive_end(o, out, in); ++i) visit(i);
    });
  }

  const int64_t* begin(int64_t i) const { return outputs.data() + offsets[i]; }
  const int64_t* end(int64_t i) const { return outputs.data() + offsets[i + 1]; }
};

// A value replaces the running maximum if it is larger or NaN (torch's rule: a NaN wins, and the last
// NaN of the window gives the index; among equal values the first one wins).
template <typename scalar_t>
inline bool replaces_max(scalar_t v, scalar_t best) {
  return v > best || v != v;
}

// ---------------------------------------------------------------------------------------------
// max_pool2d
// ---------------------------------------------------------------------------------------------

// Updates out[j], idx[j] (j < n) with the tap src[j * stride], whose flat input index is
// first_index + j * stride. Branch-free so that it vectorises; kStride > 0 fixes the stride at compile
// time for the common cases.
template <typename scalar_t, int64_t kStride>
inline void max_update_run(const scalar_t* src, int64_t first_index, int64_t stride, int64_t n, scalar_t* out,
                           int64_t* idx) {
  const int64_t s = kStride > 0 ? kStride : stride;
  for (int64_t j = 0; j < n; ++j) {
    const scalar_t v = src[j * s];
    const bool take = replaces_max(v, out[j]);
    out[j] = take ? v : out[j];
    idx[j] = take ? first_index + j * s : idx[j];
  }
}

template <typename scalar_t>
void max_pool_row(const PoolGeometry& g, const OutputRange& interior, const scalar_t* plane, int64_t oh,
                  scalar_t* out, int64_t* idx) {
  const int64_t h0 = oh * g.stride_h - g.pad_h;
  const OutputRange rows = taps_inside(h0, g.kernel_h, g.dil_h, g.in_h);
  // torch's index for a window with no tap inside the input: its first row and column at or after 0.
  const int64_t first_row = h0 + rows.lo * g.dil_h;
  for (int64_t ow = 0; ow < g.out_w; ++ow) {
    const int64_t w0 = ow * g.stride_w - g.pad_w;
    out[ow] = -std::numeric_limits<scalar_t>::infinity();
    idx[ow] = first_row * g.in_w + w0 + taps_inside(w0, g.kernel_w, g.dil_w, g.in_w).lo * g.dil_w;
  }
  auto edge_column = [&](const scalar_t* row, int64_t row_index, int64_t ow) {
    const int64_t w0 = ow * g.stride_w - g.pad_w;
    const OutputRange cols = taps_inside(w0, g.kernel_w, g.dil_w, g.in_w);
    for (int64_t kj = cols.lo; kj < cols.hi; ++kj) {
      const int64_t iw = w0 + kj * g.dil_w;
      if (replaces_max(row[iw], out[ow])) {
        out[ow] = row[iw];
        idx[ow] = row_index + iw;
      }
    }
  };
  const int64_t n = interior.hi - interior.lo;
  for (int64_t ki = rows.lo; ki < rows.hi; ++ki) {
    const int64_t ih = h0 + ki * g.dil_h;
    const scalar_t* row = plane + ih * g.in_w;
    const int64_t row_index = ih * g.in_w;
    for (int64_t ow = 0; ow < interior.lo; ++ow) edge_column(row, row_index, ow);
    for (int64_t kj = 0; kj < g.kernel_w && n > 0; ++kj) {
      const int64_t iw = interior.lo * g.stride_w - g.pad_w + kj * g.dil_w;
      scalar_t* o = out + interior.lo;
      int64_t* x = idx + interior.lo;
      if (g.stride_w == 1) max_update_run<scalar_t, 1>(row + iw, row_index + iw, 1, n, o, x);
      else if (g.stride_w == 2) max_update_run<scalar_t, 2>(row + iw, row_index + iw, 2, n, o, x);
      else max_update_run<scalar_t, 0>(row + iw, row_index + iw, g.stride_w, n, o, x);
    }
    for (int64_t ow = interior.hi; ow < g.out_w; ++ow) edge_column(row, row_index, ow);
  }
}

template <typename scalar_t>
void max_pool_forward_kernel(const PoolGeometry& g, const scalar_t* in, scalar_t* out, int64_t* idx) {
  const OutputRange interior =
      interior_outputs(g.out_w, g.in_w, g.stride_w, g.pad_w, g.dil_w * (g.kernel_w - 1));
  at::parallel_for(0, g.planes * g.out_h, grain_for(g.out_w * g.kernel_h * g.kernel_w), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t p = r / g.out_h, oh = r % g.out_h;
      max_pool_row(g, interior, in + p * g.in_plane(), oh, out + r * g.out_w, idx + r * g.out_w);
    }
  });
}

// Gradient of max pooling (windowed or adaptive): input element i of a plane collects grad_output
// of every output cell that reads it and chose it as its maximum.
template <typename scalar_t>
void max_pool_backward_kernel(const PoolGeometry& g, const AxisReaders& readers_h, const AxisReaders& readers_w,
                              const scalar_t* grad_out, const int64_t* idx, scalar_t* grad_in) {
  at::parallel_for(0, g.planes * g.in_h, grain_for(g.in_w * 4), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t p = r / g.in_h, ih = r % g.in_h;
      const scalar_t* go = grad_out + p * g.out_plane();
      const int64_t* ix = idx + p * g.out_plane();
      scalar_t* gi = grad_in + r * g.in_w;
      for (int64_t iw = 0; iw < g.in_w; ++iw) {
        const int64_t target = ih * g.in_w + iw;
        scalar_t acc = 0;
        for (const int64_t* oh = readers_h.begin(ih); oh != readers_h.end(ih); ++oh) {
          const int64_t row = *oh * g.out_w;
          for (const int64_t* ow = readers_w.begin(iw); ow != readers_w.end(iw); ++ow)
            if (ix[row + *ow] == target) acc += go[row + *ow];
        }
        gi[iw] = acc;
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// avg_pool2d
// ---------------------------------------------------------------------------------------------

struct AvgOptions {
  bool count_include_pad = true;
  std::optional<int64_t> divisor_override;
};

// Divisor of every output cell, as torch defines it: divisor_override if given; else the window size,
// clipped to the padded input (count_include_pad) or to the input itself. It factors into a row part
// and a column part. A window with no input element gets 0 (its output is 0).
struct AvgDivisors {
  std::vector<int64_t> padded_h, padded_w, real_h, real_w;

  static void axis(int64_t out, int64_t in, int64_t kernel, int64_t stride, int64_t pad, std::vector<int64_t>& padded,
                   std::vector<int64_t>& real) {
    padded.resize(out);
    real.resize(out);
    for (int64_t o = 0; o < out; ++o) {
      const int64_t start = o * stride - pad;
      const int64_t end = std::min(start + kernel, in + pad);
      padded[o] = end - start;
      real[o] = std::max<int64_t>(0, std::min(end, in) - std::max<int64_t>(start, 0));
    }
  }

  AvgDivisors(const PoolGeometry& g) {
    axis(g.out_h, g.in_h, g.kernel_h, g.stride_h, g.pad_h, padded_h, real_h);
    axis(g.out_w, g.in_w, g.kernel_w, g.stride_w, g.pad_w, padded_w, real_w);
  }

  bool empty(int64_t oh, int64_t ow) const { return real_h[oh] == 0 || real_w[ow] == 0; }
  int64_t at(const AvgOptions& opt, int64_t oh, int64_t ow) const {
    if (opt.divisor_override.has_value()) return *opt.divisor_override;
    return opt.count_include_pad ? padded_h[oh] * padded_w[ow] : real_h[oh] * real_w[ow];
  }
};

template <typename scalar_t, int64_t kStride>
inline void add_run(const scalar_t* src, int64_t stride, int64_t n, scalar_t* out) {
  const int64_t s = kStride > 0 ? kStride : stride;
  for (int64_t j = 0; j < n; ++j) out[j] += src[j * s];
}

template <typename scalar_t>
void avg_pool_row(const PoolGeometry& g, const AvgOptions& opt, const AvgDivisors& div, const OutputRange& interior,
                  const scalar_t* plane, int64_t oh, scalar_t* out) {
  const int64_t h0 = oh * g.stride_h - g.pad_h;
  const OutputRange rows = taps_inside(h0, g.kernel_h, 1, g.in_h);
  std::fill(out, out + g.out_w, scalar_t(0));
  auto edge_column = [&](const scalar_t* row, int64_t ow) {
    const int64_t w0 = ow * g.stride_w - g.pad_w;
    const OutputRange cols = taps_inside(w0, g.kernel_w, 1, g.in_w);
    for (int64_t kj = cols.lo; kj < cols.hi; ++kj) out[ow] += row[w0 + kj];
  };
  const int64_t n = interior.hi - interior.lo;
  for (int64_t ki = rows.lo; ki < rows.hi; ++ki) {
    const scalar_t* row = plane + (h0 + ki) * g.in_w;
    for (int64_t ow = 0; ow < interior.lo; ++ow) edge_column(row, ow);
    for (int64_t kj = 0; kj < g.kernel_w && n > 0; ++kj) {
      const scalar_t* src = row + interior.lo * g.stride_w - g.pad_w + kj;
      if (g.stride_w == 1) add_run<scalar_t, 1>(src, 1, n, out + interior.lo);
      else if (g.stride_w == 2) add_run<scalar_t, 2>(src, 2, n, out + interior.lo);
      else add_run<scalar_t, 0>(src, g.stride_w, n, out + interior.lo);
    }
    for (int64_t ow = interior.hi; ow < g.out_w; ++ow) edge_column(row, ow);
  }
  for (int64_t ow = 0; ow < g.out_w; ++ow)
    out[ow] = div.empty(oh, ow) ? scalar_t(0) : out[ow] / static_cast<scalar_t>(div.at(opt, oh, ow));
}

template <typename scalar_t>
void avg_pool_forward_kernel(const PoolGeometry& g, const AvgOptions& opt, const scalar_t* in, scalar_t* out) {
  const AvgDivisors div(g);
  const OutputRange interior = interior_outputs(g.out_w, g.in_w, g.stride_w, g.pad_w, g.kernel_w - 1);
  at::parallel_for(0, g.planes * g.out_h, grain_for(g.out_w * g.kernel_h * g.kernel_w), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t p = r / g.out_h, oh = r % g.out_h;
      avg_pool_row(g, opt, div, interior, in + p * g.in_plane(), oh, out + r * g.out_w);
    }
  });
}

// Gradient of an average (windowed or adaptive): every input element sums the output gradients of the
// windows that contain it, each already divided by its window's divisor (`scaled_grad_out`).
template <typename scalar_t>
void avg_pool_backward_gather(const PoolGeometry& g, const AxisReaders& readers_h, const AxisReaders& readers_w,
                              const scalar_t* scaled_grad_out, scalar_t* grad_in) {
  at::parallel_for(0, g.planes * g.in_h, grain_for(g.in_w * 4), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t p = r / g.in_h, ih = r % g.in_h;
      const scalar_t* go = scaled_grad_out + p * g.out_plane();
      scalar_t* gi = grad_in + r * g.in_w;
      for (int64_t iw = 0; iw < g.in_w; ++iw) {
        scalar_t acc = 0;
        for (const int64_t* oh = readers_h.begin(ih); oh != readers_h.end(ih); ++oh) {
          const scalar_t* go_row = go + *oh * g.out_w;
          for (const int64_t* ow = readers_w.begin(iw); ow != readers_w.end(iw); ++ow) acc += go_row[*ow];
        }
        gi[iw] = acc;
      }
    }
  });
}

// grad_output / divisor for every output cell (torch divides before scattering; so do we).
template <typename scalar_t, typename DivisorFn>
void scale_grad_output(const PoolGeometry& g, const scalar_t* grad_out, scalar_t* scaled, DivisorFn divide) {
  at::parallel_for(0, g.planes * g.out_h, grain_for(g.out_w), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t oh = r % g.out_h;
      for (int64_t ow = 0; ow < g.out_w; ++ow) scaled[r * g.out_w + ow] = divide(grad_out[r * g.out_w + ow], oh, ow);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Adaptive pooling
// ---------------------------------------------------------------------------------------------

struct AdaptiveWindows {
  std::vector<int64_t> h0, h1, w0, w1;
  explicit AdaptiveWindows(const PoolGeometry& g) : h0(g.out_h), h1(g.out_h), w0(g.out_w), w1(g.out_w) {
    for (int64_t o = 0; o < g.out_h; ++o) {
      h0[o] = adaptive_start(o, g.out_h, g.in_h);
      h1[o] = adaptive_end(o, g.out_h, g.in_h);
    }
    for (int64_t o = 0; o < g.out_w; ++o) {
      w0[o] = adaptive_start(o, g.out_w, g.in_w);
      w1[o] = adaptive_end(o, g.out_w, g.in_w);
    }
  }
};

template <typename scalar_t>
void adaptive_avg_forward_kernel(const PoolGeometry& g, const scalar_t* in, scalar_t* out) {
  const AdaptiveWindows win(g);
  const int64_t cells_h = (g.in_h + g.out_h - 1) / g.out_h + 1, cells_w = (g.in_w + g.out_w - 1) / g.out_w + 1;
  at::parallel_for(0, g.planes * g.out_h, grain_for(g.out_w * cells_h * cells_w), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t p = r / g.out_h, oh = r % g.out_h;
      const scalar_t* plane = in + p * g.in_plane();
      const int64_t kh = win.h1[oh] - win.h0[oh];
      for (int64_t ow = 0; ow < g.out_w; ++ow) {
        const int64_t kw = win.w1[ow] - win.w0[ow];
        scalar_t sum = 0;
        for (int64_t ih = win.h0[oh]; ih < win.h1[oh]; ++ih) {
          const scalar_t* row = plane + ih * g.in_w;
          for (int64_t iw = win.w0[ow]; iw < win.w1[ow]; ++iw) sum += row[iw];
        }
        out[r * g.out_w + ow] = sum / kh / kw;
      }
    }
  });
}

template <typename scalar_t>
void adaptive_max_forward_kernel(const PoolGeometry& g, const scalar_t* in, scalar_t* out, int64_t* idx) {
  const AdaptiveWindows win(g);
  const int64_t cells_h = (g.in_h + g.out_h - 1) / g.out_h + 1, cells_w = (g.in_w + g.out_w - 1) / g.out_w + 1;
  at::parallel_for(0, g.planes * g.out_h, grain_for(g.out_w * cells_h * cells_w), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t p = r / g.out_h, oh = r % g.out_h;
      const scalar_t* plane = in + p * g.in_plane();
      for (int64_t ow = 0; ow < g.out_w; ++ow) {
        scalar_t best = -std::numeric_limits<scalar_t>::infinity();
        int64_t best_index = win.h0[oh] * g.in_w + win.w0[ow];
        for (int64_t ih = win.h0[oh]; ih < win.h1[oh]; ++ih) {
          const scalar_t* row = plane + ih * g.in_w;
          for (int64_t iw = win.w0[ow]; iw < win.w1[ow]; ++iw) {
            if (replaces_max(row[iw], best)) {
              best = row[iw];
              best_index = ih * g.in_w + iw;
            }
          }
        }
        out[r * g.out_w + ow] = best;
        idx[r * g.out_w + ow] = best_index;
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Op entry points
// ---------------------------------------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor> max_pool2d_cpu(const at::Tensor& input, c10::IntArrayRef kernel_size,
                                                  c10::IntArrayRef stride, c10::IntArrayRef padding,
                                                  c10::IntArrayRef dilation, bool ceil_mode) {
  const PoolGeometry g = check_pool2d("max_pool2d", input, kernel_size, stride, padding, dilation, ceil_mode, true);
  check_float_dtype("max_pool2d", input, /*allow_reduced_precision=*/false);
  const std::vector<int64_t> sizes = pool_output_sizes(input, g);
  at::Tensor out = at::empty(sizes, input.options());
  at::Tensor indices = at::empty(sizes, input.options().dtype(at::kLong));
  if (g.planes == 0) return {out, indices};
  const at::Tensor input_c = input.contiguous();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "max_pool2d", [&] {
    max_pool_forward_kernel<scalar_t>(g, input_c.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
                                      indices.mutable_data_ptr<int64_t>());
  });
  return {out, indices};
}

at::Tensor max_pool2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& indices,
                                   c10::IntArrayRef kernel_size, c10::IntArrayRef stride, c10::IntArrayRef padding,
                                   c10::IntArrayRef dilation, bool ceil_mode) {
  const PoolGeometry g =
      check_pool2d("max_pool2d_backward", input, kernel_size, stride, padding, dilation, ceil_mode, true);
  check_float_dtype("max_pool2d_backward", input, false);
  check_pool_grad_output("max_pool2d_backward", input, g, grad_output, &indices);
  at::Tensor grad_input = at::empty(input.sizes(), input.options());
  if (g.planes == 0) return grad_input;
  const at::Tensor grad_output_c = grad_output.contiguous();
  const at::Tensor indices_c = indices.contiguous();
  const AxisReaders readers_h = AxisReaders::windowed(g.in_h, g.out_h, g.kernel_h, g.stride_h, g.pad_h, g.dil_h);
  const AxisReaders readers_w = AxisReaders::windowed(g.in_w, g.out_w, g.kernel_w, g.stride_w, g.pad_w, g.dil_w);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "max_pool2d_backward", [&] {
    max_pool_backward_kernel<scalar_t>(g, readers_h, readers_w, grad_output_c.const_data_ptr<scalar_t>(),
                                       indices_c.const_data_ptr<int64_t>(), grad_input.mutable_data_ptr<scalar_t>());
  });
  return grad_input;
}

AvgOptions avg_options(const char* op, bool count_include_pad, std::optional<int64_t> divisor_override) {
  TORCH_CHECK(!divisor_override.has_value() || *divisor_override != 0, op,
              ": divisor_override must be non-zero, but got divisor_override=0");
  return {count_include_pad, divisor_override};
}

at::Tensor avg_pool2d_cpu(const at::Tensor& input, c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
                          c10::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                          std::optional<int64_t> divisor_override) {
  const PoolGeometry g = check_pool2d("avg_pool2d", input, kernel_size, stride, padding, {1, 1}, ceil_mode, false);
  check_float_dtype("avg_pool2d", input, false);
  const AvgOptions opt = avg_options("avg_pool2d", count_include_pad, divisor_override);
  at::Tensor out = at::empty(pool_output_sizes(input, g), input.options());
  if (g.planes == 0) return out;
  const at::Tensor input_c = input.contiguous();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "avg_pool2d", [&] {
    avg_pool_forward_kernel<scalar_t>(g, opt, input_c.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

at::Tensor avg_pool2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                   c10::IntArrayRef kernel_size, c10::IntArrayRef stride, c10::IntArrayRef padding,
                                   bool ceil_mode, bool count_include_pad, std::optional<int64_t> divisor_override) {
  const PoolGeometry g = check_pool2d("avg_pool2d_backward", input, kernel_size, stride, padding, {1, 1}, ceil_mode, false);
  check_float_dtype("avg_pool2d_backward", input, false);
  check_pool_grad_output("avg_pool2d_backward", input, g, grad_output, nullptr);
  const AvgOptions opt = avg_options("avg_pool2d_backward", count_include_pad, divisor_override);
  at::Tensor grad_input = at::empty(input.sizes(), input.options());
  if (g.planes == 0) return grad_input;
  const at::Tensor grad_output_c = grad_output.contiguous();
  at::Tensor scaled = at::empty(grad_output_c.sizes(), grad_output_c.options());
  const AvgDivisors div(g);
  const AxisReaders readers_h = AxisReaders::windowed(g.in_h, g.out_h, g.kernel_h, g.stride_h, g.pad_h, 1);
  const AxisReaders readers_w = AxisReaders::windowed(g.in_w, g.out_w, g.kernel_w, g.stride_w, g.pad_w, 1);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "avg_pool2d_backward", [&] {
    scale_grad_output<scalar_t>(g, grad_output_c.const_data_ptr<scalar_t>(), scaled.mutable_data_ptr<scalar_t>(),
                                [&](scalar_t go, int64_t oh, int64_t ow) {
                                  return div.empty(oh, ow) ? scalar_t(0) : go / static_cast<scalar_t>(div.at(opt, oh, ow));
                                });
    avg_pool_backward_gather<scalar_t>(g, readers_h, readers_w, scaled.const_data_ptr<scalar_t>(),
                                       grad_input.mutable_data_ptr<scalar_t>());
  });
  return grad_input;
}

at::Tensor adaptive_avg_pool2d_cpu(const at::Tensor& input, c10::IntArrayRef output_size) {
  const PoolGeometry g = check_adaptive_pool2d("adaptive_avg_pool2d", input, output_size, /*max_pool=*/false);
  check_float_dtype("adaptive_avg_pool2d", input, false);
  at::Tensor out = at::empty(pool_output_sizes(input, g), input.options());
  if (out.numel() == 0) return out;
  const at::Tensor input_c = input.contiguous();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "adaptive_avg_pool2d", [&] {
    adaptive_avg_forward_kernel<scalar_t>(g, input_c.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

// The output size of an adaptive pooling backward call is the size of grad_output.
PoolGeometry adaptive_backward_geometry(const char* op, const at::Tensor& grad_output, const at::Tensor& input,
                                        bool max_pool) {
  TORCH_CHECK(grad_output.dim() == input.dim(), op, ": expected grad_output with as many dims as input (",
              input.dim(), "), but got grad_output of size ", to_str(grad_output.sizes()));
  const int64_t dims = grad_output.dim();
  return check_adaptive_pool2d(op, input, {grad_output.size(dims - 2), grad_output.size(dims - 1)}, max_pool);
}

at::Tensor adaptive_avg_pool2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input) {
  const char* op = "adaptive_avg_pool2d_backward";
  const PoolGeometry g = adaptive_backward_geometry(op, grad_output, input, false);
  check_float_dtype(op, input, false);
  check_pool_grad_output(op, input, g, grad_output, nullptr);
  at::Tensor grad_input = at::empty(input.sizes(), input.options());
  if (grad_input.numel() == 0) return grad_input;
  const at::Tensor grad_output_c = grad_output.contiguous();
  at::Tensor scaled = at::empty(grad_output_c.sizes(), grad_output_c.options());
  const AdaptiveWindows win(g);
  const AxisReaders readers_h = AxisReaders::adaptive(g.in_h, g.out_h);
  const AxisReaders readers_w = AxisReaders::adaptive(g.in_w, g.out_w);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "adaptive_avg_pool2d_backward", [&] {
    scale_grad_output<scalar_t>(g, grad_output_c.const_data_ptr<scalar_t>(), scaled.mutable_data_ptr<scalar_t>(),
                                [&](scalar_t go, int64_t oh, int64_t ow) {
                                  return go / (win.h1[oh] - win.h0[oh]) / (win.w1[ow] - win.w0[ow]);
                                });
    avg_pool_backward_gather<scalar_t>(g, readers_h, readers_w, scaled.const_data_ptr<scalar_t>(),
                                       grad_input.mutable_data_ptr<scalar_t>());
  });
  return grad_input;
}

std::tuple<at::Tensor, at::Tensor> adaptive_max_pool2d_cpu(const at::Tensor& input, c10::IntArrayRef output_size) {
  const PoolGeometry g = check_adaptive_pool2d("adaptive_max_pool2d", input, output_size, /*max_pool=*/true);
  check_float_dtype("adaptive_max_pool2d", input, false);
  const std::vector<int64_t> sizes = pool_output_sizes(input, g);
  at::Tensor out = at::empty(sizes, input.options());
  at::Tensor indices = at::empty(sizes, input.options().dtype(at::kLong));
  if (out.numel() == 0) return {out, indices};
  const at::Tensor input_c = input.contiguous();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "adaptive_max_pool2d", [&] {
    adaptive_max_forward_kernel<scalar_t>(g, input_c.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
                                          indices.mutable_data_ptr<int64_t>());
  });
  return {out, indices};
}

at::Tensor adaptive_max_pool2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                            const at::Tensor& indices) {
  const char* op = "adaptive_max_pool2d_backward";
  const PoolGeometry g = adaptive_backward_geometry(op, grad_output, input, true);
  check_float_dtype(op, input, false);
  check_pool_grad_output(op, input, g, grad_output, &indices);
  at::Tensor grad_input = at::empty(input.sizes(), input.options());
  if (grad_input.numel() == 0) return grad_input;
  const at::Tensor grad_output_c = grad_output.contiguous();
  const at::Tensor indices_c = indices.contiguous();
  const AxisReaders readers_h = AxisReaders::adaptive(g.in_h, g.out_h);
  const AxisReaders readers_w = AxisReaders::adaptive(g.in_w, g.out_w);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "adaptive_max_pool2d_backward", [&] {
    max_pool_backward_kernel<scalar_t>(g, readers_h, readers_w, grad_output_c.const_data_ptr<scalar_t>(),
                                       indices_c.const_data_ptr<int64_t>(), grad_input.mutable_data_ptr<scalar_t>());
  });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, CPU, m) {
  m.impl("max_pool2d", &max_pool2d_cpu);
  m.impl("max_pool2d_backward", &max_pool2d_backward_cpu);
  m.impl("avg_pool2d", &avg_pool2d_cpu);
  m.impl("avg_pool2d_backward", &avg_pool2d_backward_cpu);
  m.impl("adaptive_avg_pool2d", &adaptive_avg_pool2d_cpu);
  m.impl("adaptive_avg_pool2d_backward", &adaptive_avg_pool2d_backward_cpu);
  m.impl("adaptive_max_pool2d", &adaptive_max_pool2d_cpu);
  m.impl("adaptive_max_pool2d_backward", &adaptive_max_pool2d_backward_cpu);
}

}  // namespace fastconv::cpu

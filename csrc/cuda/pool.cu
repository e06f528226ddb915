// Pooling on CUDA: max, avg, adaptive avg and adaptive max, forward and backward, over the last two
// dims of a contiguous (N, C, H, W) or (C, H, W) tensor (1-D pooling arrives with H == 1).
//
// Forward kernels: one thread per output element. Backward kernels are gather-style: one thread per
// input element visits, in a fixed order, the output windows that can contain it and sums their
// gradient (for max pooling, only where the stored index points at this element). No atomics, so the
// backward pass is deterministic. Semantics follow torch: NaN in a max window wins (the last NaN), the
// max index starts at the window's first in-bounds element, avg windows are clipped at the padded edge
// for count_include_pad, adaptive windows cover [floor(i*in/out), ceil((i+1)*in/out)).
#include <torch/library.h>

#include <optional>

#include "common/shapes.h"
#include "cuda/cuda_utils.cuh"

namespace fastconv::cuda {
namespace {

// ---------------------------------------------------------------------------------------------
// Window arithmetic shared by forward and backward kernels
// ---------------------------------------------------------------------------------------------

// Output positions [lo, hi) whose window (start o*stride - pad, `span` long) contains input position i.
template <typename index_t>
__device__ __forceinline__ void windows_containing(index_t i, index_t pad, index_t stride, index_t span,
                                                   index_t out_size, index_t& lo, index_t& hi) {
  // o*stride - pad <= i  and  i <= o*stride - pad + span - 1
  lo = i + pad < span ? 0 : (i + pad - span) / stride + 1;
  hi = std::min<index_t>((i + pad) / stride + 1, out_size);
}

// Adaptive windows: output cell o covers input [floor(o*in/out), ceil((o+1)*in/out)). 64-bit products.
__device__ __forceinline__ int64_t adaptive_begin(int64_t o, int64_t out, int64_t in) { return (o * in) / out; }
__device__ __forceinline__ int64_t adaptive_end(int64_t o, int64_t out, int64_t in) {
  return ((o + 1) * in + out - 1) / out;
}
// Output cells [lo, hi) whose adaptive window contains input position i.
__device__ __forceinline__ void adaptive_windows_containing(int64_t i, int64_t in, int64_t out, int64_t& lo,
                                                            int64_t& hi) {
  lo = (i * out) / in;
  hi = std::min<int64_t>(((i + 1) * out + in - 1) / in, out);
}

// Divisor of avg pooling window (oh, ow): torch's rule, the window clipped at the padded edge for
// count_include_pad, at the input edge otherwise; divisor_override replaces both.
struct AvgDivisorRule {
  bool count_include_pad;
  bool has_divisor_override;
  int64_t divisor_override;
};

template <typename index_t>
__device__ __forceinline__ index_t avg_window_divisor(index_t oh, index_t ow, const PoolGeometry& g,
                                                      AvgDivisorRule rule) {
  if (rule.has_divisor_override) return static_cast<index_t>(rule.divisor_override);
  const index_t in_h = g.in_h, in_w = g.in_w;
  index_t h0 = oh * static_cast<index_t>(g.stride_h) - static_cast<index_t>(g.pad_h);
  index_t w0 = ow * static_cast<index_t>(g.stride_w) - static_cast<index_t>(g.pad_w);
  index_t h1 = std::min<index_t>(h0 + static_cast<index_t>(g.kernel_h), in_h + static_cast<index_t>(g.pad_h));
  index_t w1 = std::min<index_t>(w0 + static_cast<index_t>(g.kernel_w), in_w + static_cast<index_t>(g.pad_w));
  if (rule.count_include_pad) return (h1 - h0) * (w1 - w0);
  h0 = std::max<index_t>(h0, 0);
  w0 = std::max<index_t>(w0, 0);
  h1 = std::min<index_t>(h1, in_h);
  w1 = std::min<index_t>(w1, in_w);
  return (h1 - h0) * (w1 - w0);
}

// ---------------------------------------------------------------------------------------------
// Max pooling
// ---------------------------------------------------------------------------------------------

template <typename scalar_t, typename index_t>
__global__ void max_pool2d_forward_kernel(const scalar_t* __restrict__ input, scalar_t* __restrict__ output,
                                          int64_t* __restrict__ indices, PoolGeometry g) {
  using acc_t = acc_type<scalar_t>;
  const index_t in_h = g.in_h, in_w = g.in_w, out_h = g.out_h, out_w = g.out_w;
  const index_t dil_h = g.dil_h, dil_w = g.dil_w;
  const index_t out_plane = out_h * out_w;
  const index_t total = static_cast<index_t>(g.planes) * out_plane;
  FASTCONV_KERNEL_LOOP(index_t, i, total) {
    const index_t p = i / out_plane, oh = (i % out_plane) / out_w, ow = i % out_w;
    index_t h0 = oh * static_cast<index_t>(g.stride_h) - static_cast<index_t>(g.pad_h);
    index_t w0 = ow * static_cast<index_t>(g.stride_w) - static_cast<index_t>(g.pad_w);
    const index_t h1 = std::min<index_t>(h0 + (static_cast<index_t>(g.kernel_h) - 1) * dil_h + 1, in_h);
    const index_t w1 = std::min<index_t>(w0 + (static_cast<index_t>(g.kernel_w) - 1) * dil_w + 1, in_w);
    // First tap inside the input (padding never wins).
    if (h0 < 0) h0 += ceil_div<index_t>(-h0, dil_h) * dil_h;
    if (w0 < 0) w0 += ceil_div<index_t>(-w0, dil_w) * dil_w;
    const scalar_t* plane = input + static_cast<int64_t>(p) * in_h * in_w;
    acc_t best = -std::numeric_limits<acc_t>::infinity();
    index_t best_index = h0 * in_w + w0;
    for (index_t h = h0; h < h1; h += dil_h) {
      for (index_t w = w0; w < w1; w += dil_w) {
        const acc_t v = static_cast<acc_t>(plane[h * in_w + w]);
        if (v > best || at::_isnan(v)) {
          best = v;
          best_index = h * in_w + w;
        }
      }
    }
    output[i] = static_cast<scalar_t>(best);
    if (indices != nullptr) indices[i] = best_index;  // null: the values alone (max_pool2d_values)
  }
}

// Adaptive max pooling forward: same selection rule over the adaptive window.
template <typename scalar_t, typename index_t>
__global__ void adaptive_max_pool2d_forward_kernel(const scalar_t* __restrict__ input, scalar_t* __restrict__ output,
                                                   int64_t* __restrict__ indices, PoolGeometry g) {
  using acc_t = acc_type<scalar_t>;
  const index_t out_plane = static_cast<index_t>(g.out_h * g.out_w);
  const index_t total = static_cast<index_t>(g.planes) * out_plane;
  FASTCONV_KERNEL_LOOP(index_t, i, total) {
    const index_t p = i / out_plane;
    const int64_t oh = (i % out_plane) / g.out_w, ow = i % g.out_w;
    const int64_t h0 = adaptive_begin(oh, g.out_h, g.in_h), h1 = adaptive_end(oh, g.out_h, g.in_h);
    const int64_t w0 = adaptive_begin(ow, g.out_w, g.in_w), w1 = adaptive_end(ow, g.out_w, g.in_w);
    const scalar_t* plane = input + static_cast<int64_t>(p) * g.in_h * g.in_w;
    acc_t best = -std::numeric_limits<acc_t>::infinity();
    int64_t best_index = h0 * g.in_w + w0;
    for (int64_t h = h0; h < h1; ++h) {
      for (int64_t w = w0; w < w1; ++w) {
        const acc_t v = static_cast<acc_t>(plane[h * g.in_w + w]);
        if (v > best || at::_isnan(v)) {
          best = v;
          best_index = h * g.in_w + w;
        }
      }
    }
    output[i] = static_cast<scalar_t>(best);
    indices[i] = best_index;
  }
}

// Max pooling backward (windowed): each input element sums the gradient of the windows that chose it.
template <typename scalar_t, typename index_t>
__global__ void max_pool2d_backward_kernel(const scalar_t* __restrict__ grad_output,
                                           const int64_t* __restrict__ indices, scalar_t* __restrict__ grad_input,
                                           PoolGeometry g) {
  using acc_t = acc_type<scalar_t>;
  const index_t in_h = g.in_h, in_w = g.in_w, out_h = g.out_h, out_w = g.out_w;
  const index_t in_plane = in_h * in_w, out_plane = out_h * out_w;
  const index_t span_h = (static_cast<index_t>(g.kernel_h) - 1) * static_cast<index_t>(g.dil_h) + 1;
  const index_t span_w = (static_cast<index_t>(g.kernel_w) - 1) * static_cast<index_t>(g.dil_w) + 1;
  const index_t total = static_cast<index_t>(g.planes) * in_plane;
  FASTCONV_KERNEL_LOOP(index_t, i, total) {
    const index_t p = i / in_plane, pos = i % in_plane, ih = pos / in_w, iw = pos % in_w;
    index_t oh0, oh1, ow0, ow1;
    windows_containing<index_t>(ih, g.pad_h, g.stride_h, span_h, out_h, oh0, oh1);
    windows_containing<index_t>(iw, g.pad_w, g.stride_w, span_w, out_w, ow0, ow1);
    const int64_t* idx = indices + static_cast<int64_t>(p) * out_plane;
    const scalar_t* grad = grad_output + static_cast<int64_t>(p) * out_plane;
    acc_t sum = 0;
    for (index_t oh = oh0; oh < oh1; ++oh)
      for (index_t ow = ow0; ow < ow1; ++ow)
        if (idx[oh * out_w + ow] == pos) sum += static_cast<acc_t>(grad[oh * out_w + ow]);
    grad_input[i] = static_cast<scalar_t>(sum);
  }
}

template <typename scalar_t, typename index_t>
__global__ void adaptive_max_pool2d_backward_kernel(const scalar_t* __restrict__ grad_output,
                                                    const int64_t* __restrict__ indices,
                                                    scalar_t* __restrict__ grad_input, PoolGeometry g) {
  using acc_t = acc_type<scalar_t>;
  const index_t in_plane = static_cast<index_t>(g.in_h * g.in_w);
  const index_t out_plane = static_cast<index_t>(g.out_h * g.out_w);
  const index_t total = static_cast<index_t>(g.planes) * in_plane;
  FASTCONV_KERNEL_LOOP(index_t, i, total) {
    const index_t p = i / in_plane, pos = i % in_plane;
    const int64_t ih = pos / g.in_w, iw = pos % g.in_w;
    int64_t oh0, oh1, ow0, ow1;
    adaptive_windows_containing(ih, g.in_h, g.out_h, oh0, oh1);
    adaptive_windows_containing(iw, g.in_w, g.out_w, ow0, ow1);
    const int64_t* idx = indices + static_cast<int64_t>(p) * out_plane;
    const scalar_t* grad = grad_output + static_cast<int64_t>(p) * out_plane;
    acc_t sum = 0;
    for (int64_t oh = oh0; oh < oh1; ++oh)
      for (int64_t ow = ow0; ow < ow1; ++ow)
        if (idx[oh * g.out_w + ow] == pos) sum += static_cast<acc_t>(grad[oh * g.out_w + ow]);
    grad_input[i] = static_cast<scalar_t>(sum);
  }
}

// ---------------------------------------------------------------------------------------------
// Average pooling
// ---------------------------------------------------------------------------------------------

template <typename scalar_t, typename index_t>
__global__ void avg_pool2d_forward_kernel(const scalar_t* __restrict__ input, scalar_t* __restrict__ output,
                                          PoolGeometry g, AvgDivisorRule rule) {
  using acc_t = acc_type<scalar_t>;
  const index_t in_h = g.in_h, in_w = g.in_w, out_w = g.out_w;
  const index_t out_plane = static_cast<index_t>(g.out_h) * out_w;
  const index_t total = static_cast<index_t>(g.planes) * out_plane;
  FASTCONV_KERNEL_LOOP(index_t, i, total) {
    const index_t p = i / out_plane, oh = (i % out_plane) / out_w, ow = i % out_w;
    const index_t h0 = std::max<index_t>(oh * static_cast<index_t>(g.stride_h) - static_cast<index_t>(g.pad_h), 0);
    const index_t w0 = std::max<index_t>(ow * static_cast<index_t>(g.stride_w) - static_cast<index_t>(g.pad_w), 0);
    const index_t h1 = std::min<index_t>(
        oh * static_cast<index_t>(g.stride_h) - static_cast<index_t>(g.pad_h) + static_cast<index_t>(g.kernel_h), in_h);
    const index_t w1 = std::min<index_t>(
        ow * static_cast<index_t>(g.stride_w) - static_cast<index_t>(g.pad_w) + static_cast<index_t>(g.kernel_w), in_w);
    if (h0 >= h1 || w0 >= w1) {  // a window entirely in the padding
      output[i] = static_cast<scalar_t>(0);
      continue;
    }
    const scalar_t* plane = input + static_cast<int64_t>(p) * in_h * in_w;
    acc_t sum = 0;
    for (index_t h = h0; h < h1; ++h)
      for (index_t w = w0; w < w1; ++w) sum += static_cast<acc_t>(plane[h * in_w + w]);
    output[i] = static_cast<scalar_t>(sum / static_cast<acc_t>(avg_window_divisor<index_t>(oh, ow, g, rule)));
  }
}

template <typename scalar_t, typename index_t>
__global__ void avg_pool2d_backward_kernel(const scalar_t* __restrict__ grad_output, scalar_t* __restrict__ grad_input,
                                           PoolGeometry g, AvgDivisorRule rule) {
  using acc_t = acc_type<scalar_t>;
  const index_t in_h = g.in_h, in_w = g.in_w, out_h = g.out_h, out_w = g.out_w;
  const index_t in_plane = in_h * in_w, out_plane = out_h * out_w;
  const index_t total = static_cast<index_t>(g.planes) * in_plane;
  FASTCONV_KERNEL_LOOP(index_t, i, total) {
    const index_t p = i / in_plane, ih = (i % in_plane) / in_w, iw = i % in_w;
    index_t oh0, oh1, ow0, ow1;
    windows_containing<index_t>(ih, g.pad_h, g.stride_h, g.kernel_h, out_h, oh0, oh1);
    windows_containing<index_t>(iw, g.pad_w, g.stride_w, g.kernel_w, out_w, ow0, ow1);
    const scalar_t* grad = grad_output + static_cast<int64_t>(p) * out_plane;
    acc_t sum = 0;
    for (index_t oh = oh0; oh < oh1; ++oh)
      for (index_t ow = ow0; ow < ow1; ++ow)
        sum += static_cast<acc_t>(grad[oh * out_w + ow]) /
               static_cast<acc_t>(avg_window_divisor<index_t>(oh, ow, g, rule));
    grad_input[i] = static_cast<scalar_t>(sum);
  }
}

template <typename scalar_t, typename index_t>
__global__ void adaptive_avg_pool2d_forward_kernel(const scalar_t* __restrict__ input, scalar_t* __restrict__ output,
                                                   PoolGeometry g) {
  using acc_t = acc_type<scalar_t>;
  const index_t out_plane = static_cast<index_t>(g.out_h * g.out_w);
  const index_t total = static_cast<index_t>(g.planes) * out_plane;
  FASTCONV_KERNEL_LOOP(index_t, i, total) {
    const index_t p = i / out_plane;
    const int64_t oh = (i % out_plane) / g.out_w, ow = i % g.out_w;
    const int64_t h0 = adaptive_begin(oh, g.out_h, g.in_h), h1 = adaptive_end(oh, g.out_h, g.in_h);
    const int64_t w0 = adaptive_begin(ow, g.out_w, g.in_w), w1 = adaptive_end(ow, g.out_w, g.in_w);
    const scalar_t* plane = input + static_cast<int64_t>(p) * g.in_h * g.in_w;
    acc_t sum = 0;
    for (int64_t h = h0; h < h1; ++h)
      for (int64_t w = w0; w < w1; ++w) sum += static_cast<acc_t>(plane[h * g.in_w + w]);
    output[i] = static_cast<scalar_t>(sum / static_cast<acc_t>((h1 - h0) * (w1 - w0)));
  }
}

template <typename scalar_t, typename index_t>
__global__ void adaptive_avg_pool2d_backward_kernel(const scalar_t* __restrict__ grad_output,
                                                    scalar_t* __restrict__ grad_input, PoolGeometry g) {
  using acc_t = acc_type<scalar_t>;
  const index_t in_plane = static_cast<index_t>(g.in_h * g.in_w);
  const index_t out_plane = static_cast<index_t>(g.out_h * g.out_w);
  const index_t total = static_cast<index_t>(g.planes) * in_plane;
  FASTCONV_KERNEL_LOOP(index_t, i, total) {
    const index_t p = i / in_plane;
    const int64_t ih = (i % in_plane) / g.in_w, iw = i % g.in_w;
    int64_t oh0, oh1, ow0, ow1;
    adaptive_windows_containing(ih, g.in_h, g.out_h, oh0, oh1);
    adaptive_windows_containing(iw, g.in_w, g.out_w, ow0, ow1);
    const scalar_t* grad = grad_output + static_cast<int64_t>(p) * out_plane;
    acc_t sum = 0;
    for (int64_t oh = oh0; oh < oh1; ++oh) {
      const int64_t rows = adaptive_end(oh, g.out_h, g.in_h) - adaptive_begin(oh, g.out_h, g.in_h);
      for (int64_t ow = ow0; ow < ow1; ++ow) {
        const int64_t cols = adaptive_end(ow, g.out_w, g.in_w) - adaptive_begin(ow, g.out_w, g.in_w);
        sum += static_cast<acc_t>(grad[oh * g.out_w + ow]) / static_cast<acc_t>(rows * cols);
      }
    }
    grad_input[i] = static_cast<scalar_t>(sum);
  }
}

// ---------------------------------------------------------------------------------------------
// Host side: checks, layout, launch
// ---------------------------------------------------------------------------------------------

void check_pool_dtype(const char* op, const at::Tensor& input) { check_float_dtype(op, input, true); }

// The output size of an adaptive pooling backward call is the size of grad_output.
PoolGeometry adaptive_backward_geometry(const char* op, const at::Tensor& grad_output, const at::Tensor& input,
                                        bool max_pool) {
  TORCH_CHECK(grad_output.dim() == input.dim(), op, ": expected grad_output with as many dims as input (",
              input.dim(), "), but got grad_output of size ", to_str(grad_output.sizes()));
  const int64_t dims = grad_output.dim();
  return check_adaptive_pool2d(op, input, {grad_output.size(dims - 2), grad_output.size(dims - 1)}, max_pool);
}

bool small_problem(const at::Tensor& input, const PoolGeometry& g) {
  return fits_int32({input.numel(), g.planes * g.out_h * g.out_w});
}

// Max pooling's values and, with_indices, their indices (an empty tensor otherwise).
std::tuple<at::Tensor, at::Tensor> max_pool2d_on_device(const char* op, bool with_indices, const at::Tensor& input,
                                                        c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
                                                        c10::IntArrayRef padding, c10::IntArrayRef dilation,
                                                        bool ceil_mode) {
  const PoolGeometry g = check_pool2d(op, input, kernel_size, stride, padding, dilation, ceil_mode, true);
  check_pool_dtype(op, input);
  const DeviceGuard guard(input.device());
  const at::Tensor input_c = input.contiguous();
  const std::vector<int64_t> sizes = pool_output_sizes(input, g);
  at::Tensor output = at::empty(sizes, input.options());
  at::Tensor indices = at::empty(with_indices ? sizes : std::vector<int64_t>{0}, input.options().dtype(at::kLong));
  FASTCONV_DISPATCH_FLOAT_TYPES(input.scalar_type(), "max_pool2d_cuda", [&] {
    dispatch_index_type(small_problem(input, g), [&](auto index_tag) {
      using index_t = decltype(index_tag);
      launch_kernel(max_pool2d_forward_kernel<scalar_t, index_t>, grid_for(output.numel()), kThreads, 0,
                    input_c.const_data_ptr<scalar_t>(), output.mutable_data_ptr<scalar_t>(),
                    with_indices ? indices.mutable_data_ptr<int64_t>() : nullptr, g);
    });
  });
  return {output, indices};
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_cuda(const at::Tensor& input, c10::IntArrayRef kernel_size,
                                                   c10::IntArrayRef stride, c10::IntArrayRef padding,
                                                   c10::IntArrayRef dilation, bool ceil_mode) {
  return max_pool2d_on_device("max_pool2d", /*with_indices=*/true, input, kernel_size, stride, padding, dilation,
                              ceil_mode);
}

at::Tensor max_pool2d_values_cuda(const at::Tensor& input, c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
                                  c10::IntArrayRef padding, c10::IntArrayRef dilation, bool ceil_mode) {
  return std::get<0>(max_pool2d_on_device("max_pool2d_values", /*with_indices=*/false, input, kernel_size, stride,
                                          padding, dilation, ceil_mode));
}

at::Tensor max_pool2d_backward_cuda(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& indices,
                                    c10::IntArrayRef kernel_size, c10::IntArrayRef stride, c10::IntArrayRef padding,
                                    c10::IntArrayRef dilation, bool ceil_mode) {
  const char* op = "max_pool2d_backward";
  const PoolGeometry g = check_pool2d(op, input, kernel_size, stride, padding, dilation, ceil_mode, true);
  check_pool_dtype(op, input);
  check_pool_grad_output(op, input, g, grad_output, &indices);
  const DeviceGuard guard(input.device());
  const at::Tensor grad_output_c = grad_output.contiguous();
  const at::Tensor indices_c = indices.contiguous();
  at::Tensor grad_input = at::empty(input.sizes(), input.options());
  FASTCONV_DISPATCH_FLOAT_TYPES(input.scalar_type(), "max_pool2d_backward_cuda", [&] {
    dispatch_index_type(small_problem(input, g), [&](auto index_tag) {
      using index_t = decltype(index_tag);
      launch_kernel(max_pool2d_backward_kernel<scalar_t, index_t>, grid_for(grad_input.numel()), kThreads, 0,
                    grad_output_c.const_data_ptr<scalar_t>(), indices_c.const_data_ptr<int64_t>(),
                    grad_input.mutable_data_ptr<scalar_t>(), g);
    });
  });
  return grad_input;
}

AvgDivisorRule avg_divisor_rule(const char* op, bool count_include_pad, std::optional<int64_t> divisor_override) {
  TORCH_CHECK(!divisor_override.has_value() || *divisor_override != 0, op,
              ": divisor_override must be non-zero, but got divisor_override=0");
  return {count_include_pad, divisor_override.has_value(), divisor_override.value_or(1)};
}

at::Tensor avg_pool2d_cuda(const at::Tensor& input, c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
                           c10::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                           std::optional<int64_t> divisor_override) {
  const int64_t no_dilation[2] = {1, 1};
  const PoolGeometry g =
      check_pool2d("avg_pool2d", input, kernel_size, stride, padding, no_dilation, ceil_mode, false);
  check_pool_dtype("avg_pool2d", input);
  const AvgDivisorRule rule = avg_divisor_rule("avg_pool2d", count_include_pad, divisor_override);
  const DeviceGuard guard(input.device());
  const at::Tensor input_c = input.contiguous();
  at::Tensor output = at::empty(pool_output_sizes(input, g), input.options());
  FASTCONV_DISPATCH_FLOAT_TYPES(input.scalar_type(), "avg_pool2d_cuda", [&] {
    dispatch_index_type(small_problem(input, g), [&](auto index_tag) {
      using index_t = decltype(index_tag);
      launch_kernel(avg_pool2d_forward_kernel<scalar_t, index_t>, grid_for(output.numel()), kThreads, 0,
                    input_c.const_data_ptr<scalar_t>(), output.mutable_data_ptr<scalar_t>(), g, rule);
    });
  });
  return output;
}

at::Tensor avg_pool2d_backward_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                    c10::IntArrayRef kernel_size, c10::IntArrayRef stride, c10::IntArrayRef padding,
                                    bool ceil_mode, bool count_include_pad, std::optional<int64_t> divisor_override) {
  const char* op = "avg_pool2d_backward";
  const int64_t no_dilation[2] = {1, 1};
  const PoolGeometry g = check_pool2d(op, input, kernel_size, stride, padding, no_dilation, ceil_mode, false);
  check_pool_dtype(op, input);
  check_pool_grad_output(op, input, g, grad_output, nullptr);
  const AvgDivisorRule rule = avg_divisor_rule(op, count_include_pad, divisor_override);
  const DeviceGuard guard(input.device());
  const at::Tensor grad_output_c = grad_output.contiguous();
  at::Tensor grad_input = at::empty(input.sizes(), input.options());
  FASTCONV_DISPATCH_FLOAT_TYPES(input.scalar_type(), "avg_pool2d_backward_cuda", [&] {
    dispatch_index_type(small_problem(input, g), [&](auto index_tag) {
      using index_t = decltype(index_tag);
      launch_kernel(avg_pool2d_backward_kernel<scalar_t, index_t>, grid_for(grad_input.numel()), kThreads, 0,
                    grad_output_c.const_data_ptr<scalar_t>(), grad_input.mutable_data_ptr<scalar_t>(), g, rule);
    });
  });
  return grad_input;
}

at::Tensor adaptive_avg_pool2d_cuda(const at::Tensor& input, c10::IntArrayRef output_size) {
  const PoolGeometry g = check_adaptive_pool2d("adaptive_avg_pool2d", input, output_size, /*max_pool=*/false);
  check_pool_dtype("adaptive_avg_pool2d", input);
  const DeviceGuard guard(input.device());
  const at::Tensor input_c = input.contiguous();
  at::Tensor output = at::empty(pool_output_sizes(input, g), input.options());
  FASTCONV_DISPATCH_FLOAT_TYPES(input.scalar_type(), "adaptive_avg_pool2d_cuda", [&] {
    dispatch_index_type(small_problem(input, g), [&](auto index_tag) {
      using index_t = decltype(index_tag);
      launch_kernel(adaptive_avg_pool2d_forward_kernel<scalar_t, index_t>, grid_for(output.numel()), kThreads, 0,
                    input_c.const_data_ptr<scalar_t>(), output.mutable_data_ptr<scalar_t>(), g);
    });
  });
  return output;
}

at::Tensor adaptive_avg_pool2d_backward_cuda(const at::Tensor& grad_output, const at::Tensor& input) {
  const char* op = "adaptive_avg_pool2d_backward";
  const PoolGeometry g = adaptive_backward_geometry(op, grad_output, input, /*max_pool=*/false);
  check_pool_dtype(op, input);
  check_pool_grad_output(op, input, g, grad_output, nullptr);
  const DeviceGuard guard(input.device());
  const at::Tensor grad_output_c = grad_output.contiguous();
  at::Tensor grad_input = at::empty(input.sizes(), input.options());
  FASTCONV_DISPATCH_FLOAT_TYPES(input.scalar_type(), "adaptive_avg_pool2d_backward_cuda", [&] {
    dispatch_index_type(small_problem(input, g), [&](auto index_tag) {
      using index_t = decltype(index_tag);
      launch_kernel(adaptive_avg_pool2d_backward_kernel<scalar_t, index_t>, grid_for(grad_input.numel()), kThreads,
                    0, grad_output_c.const_data_ptr<scalar_t>(), grad_input.mutable_data_ptr<scalar_t>(), g);
    });
  });
  return grad_input;
}

std::tuple<at::Tensor, at::Tensor> adaptive_max_pool2d_cuda(const at::Tensor& input, c10::IntArrayRef output_size) {
  const PoolGeometry g = check_adaptive_pool2d("adaptive_max_pool2d", input, output_size, /*max_pool=*/true);
  check_pool_dtype("adaptive_max_pool2d", input);
  const DeviceGuard guard(input.device());
  const at::Tensor input_c = input.contiguous();
  const std::vector<int64_t> sizes = pool_output_sizes(input, g);
  at::Tensor output = at::empty(sizes, input.options());
  at::Tensor indices = at::empty(sizes, input.options().dtype(at::kLong));
  FASTCONV_DISPATCH_FLOAT_TYPES(input.scalar_type(), "adaptive_max_pool2d_cuda", [&] {
    dispatch_index_type(small_problem(input, g), [&](auto index_tag) {
      using index_t = decltype(index_tag);
      launch_kernel(adaptive_max_pool2d_forward_kernel<scalar_t, index_t>, grid_for(output.numel()), kThreads, 0,
                    input_c.const_data_ptr<scalar_t>(), output.mutable_data_ptr<scalar_t>(),
                    indices.mutable_data_ptr<int64_t>(), g);
    });
  });
  return {output, indices};
}

at::Tensor adaptive_max_pool2d_backward_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                             const at::Tensor& indices) {
  const char* op = "adaptive_max_pool2d_backward";
  const PoolGeometry g = adaptive_backward_geometry(op, grad_output, input, /*max_pool=*/true);
  check_pool_dtype(op, input);
  check_pool_grad_output(op, input, g, grad_output, &indices);
  const DeviceGuard guard(input.device());
  const at::Tensor grad_output_c = grad_output.contiguous();
  const at::Tensor indices_c = indices.contiguous();
  at::Tensor grad_input = at::empty(input.sizes(), input.options());
  FASTCONV_DISPATCH_FLOAT_TYPES(input.scalar_type(), "adaptive_max_pool2d_backward_cuda", [&] {
    dispatch_index_type(small_problem(input, g), [&](auto index_tag) {
      using index_t = decltype(index_tag);
      launch_kernel(adaptive_max_pool2d_backward_kernel<scalar_t, index_t>, grid_for(grad_input.numel()), kThreads,
                    0, grad_output_c.const_data_ptr<scalar_t>(), indices_c.const_data_ptr<int64_t>(),
                    grad_input.mutable_data_ptr<scalar_t>(), g);
    });
  });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, FASTCONV_CUDA_DISPATCH_KEY, m) {
  m.impl("max_pool2d", &InInputFormat<0, &max_pool2d_cuda>::call);
  m.impl("max_pool2d_values", &InInputFormat<0, &max_pool2d_values_cuda>::call);
  m.impl("max_pool2d_backward", &InInputFormat<1, &max_pool2d_backward_cuda>::call);
  m.impl("avg_pool2d", &InInputFormat<0, &avg_pool2d_cuda>::call);
  m.impl("avg_pool2d_backward", &InInputFormat<1, &avg_pool2d_backward_cuda>::call);
  m.impl("adaptive_avg_pool2d", &InInputFormat<0, &adaptive_avg_pool2d_cuda>::call);
  m.impl("adaptive_avg_pool2d_backward", &InInputFormat<1, &adaptive_avg_pool2d_backward_cuda>::call);
  m.impl("adaptive_max_pool2d", &InInputFormat<0, &adaptive_max_pool2d_cuda>::call);
  m.impl("adaptive_max_pool2d_backward", &InInputFormat<1, &adaptive_max_pool2d_backward_cuda>::call);
}

}  // namespace fastconv::cuda

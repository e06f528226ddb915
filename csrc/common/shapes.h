// Argument checks and output-size rules shared by every kernel (CPU and CUDA, forward and backward).
//
// All convolution and pooling kernels work on a 2-D problem: 1-D operators are mapped onto it with a
// height of 1 (see ConvGeometry::from_1d / PoolGeometry). Keeping the rules here means the CPU and
// CUDA kernels, and the forward and backward ops, cannot disagree about a shape.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <c10/util/irange.h>

#include <limits>
#include <optional>
#include <sstream>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

namespace fastconv {

template <typename T>
inline std::string to_str(c10::ArrayRef<T> values) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < values.size(); ++i) out << (i ? ", " : "") << values[i];
  out << "]";
  return out.str();
}

// Floor division that rounds towards negative infinity (C++ '/' truncates towards zero).
inline int64_t div_floor(int64_t a, int64_t b) {
  int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

// ---------------------------------------------------------------------------------------------
// Convolution
// ---------------------------------------------------------------------------------------------

// One convolution problem in 2-D form. For conv1d, kh == 1, stride_h == dil_h == 1, pad_h == 0.
struct ConvGeometry {
  int64_t batch = 0, in_channels = 0, in_h = 0, in_w = 0;
  int64_t out_channels = 0, kernel_h = 0, kernel_w = 0, out_h = 0, out_w = 0;
  int64_t stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0, dil_h = 1, dil_w = 1;
  int64_t groups = 1;

  int64_t in_channels_per_group() const { return in_channels / groups; }
  int64_t out_channels_per_group() const { return out_channels / groups; }
  // Rows of the im2col matrix of one group: input channels of the group x filter taps.
  int64_t col_rows() const { return in_channels_per_group() * kernel_h * kernel_w; }
  bool is_depthwise() const { return groups == in_channels && groups > 1; }
  // torch computes nothing when the batch or the input channels are empty; such a call has an empty
  // output and no kernel runs.
  bool is_empty() const { return batch == 0 || in_channels == 0; }
  bool is_pointwise_unit() const {
    return kernel_h == 1 && kernel_w == 1 && stride_h == 1 && stride_w == 1 && pad_h == 0 && pad_w == 0;
  }
  // A 1x1 unpadded layer with a stride (ResNet's downsampling shortcuts): it reads only the input pixels
  // (oh * stride_h, ow * stride_w), and is the stride-1 layer (picked_pointwise_geometry) on those alone.
  bool is_strided_pointwise() const {
    return kernel_h == 1 && kernel_w == 1 && pad_h == 0 && pad_w == 0 && !is_pointwise_unit();
  }
  // torch's output shape: a zero-channel input gives a zero-channel output, whatever the weight.
  int64_t output_channels() const { return in_channels == 0 ? 0 : out_channels; }
  std::vector<int64_t> output_sizes() const { return {batch, output_channels(), out_h, out_w}; }
};

// The stride-1 1x1 layer on the pixels a strided one reads: the same channels, an out_h x out_w input.
inline ConvGeometry picked_pointwise_geometry(const ConvGeometry& g) {
  ConvGeometry p = g;
  p.in_h = g.out_h;
  p.in_w = g.out_w;
  p.stride_h = p.stride_w = p.dil_h = p.dil_w = 1;
  return p;
}

// The pixels a strided 1x1 layer reads, of `images` (its input, or some of its images), copied compact in
// the given memory format.
inline at::Tensor picked_pointwise_pixels(const ConvGeometry& g, const at::Tensor& images,
                                          at::MemoryFormat format = at::MemoryFormat::Contiguous) {
  return images.slice(2, 0, (g.out_h - 1) * g.stride_h + 1, g.stride_h)
      .slice(3, 0, (g.out_w - 1) * g.stride_w + 1, g.stride_w)
      .contiguous(format);
}

// Sizes of a parameter list must match the number of spatial dims (torch accepts exactly that).
inline void check_param_list(const char* op, const char* name, c10::IntArrayRef values, int64_t spatial_dims) {
  TORCH_CHECK(static_cast<int64_t>(values.size()) == spatial_dims, op, ": expected ", name, " to have ",
              spatial_dims, " value(s) to match the convolution dimensions, but got ", name, "=",
              to_str(values));
}

// Validates a conv1d (spatial_dims == 1) or conv2d (spatial_dims == 2) call on a *batched* input and
// returns its geometry in 2-D form. Messages name the argument and the values involved.
inline ConvGeometry check_conv(const char* op, int64_t spatial_dims, const at::Tensor& input,
                               const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                               c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                               int64_t groups) {
  const int64_t dims = spatial_dims + 2;
  TORCH_CHECK(input.defined() && weight.defined(), op, ": input and weight must be defined tensors");
  TORCH_CHECK(input.dim() == dims, op, ": expected a ", dims, "-D (batched) input, but got input of size ",
              to_str(input.sizes()));
  TORCH_CHECK(weight.dim() == dims, op, ": expected a ", dims, "-D weight (out_channels, in_channels/groups, ",
              spatial_dims == 1 ? "kernel)" : "kH, kW)", ", but got weight of size ", to_str(weight.sizes()));
  check_param_list(op, "stride", stride, spatial_dims);
  check_param_list(op, "padding", padding, spatial_dims);
  check_param_list(op, "dilation", dilation, spatial_dims);
  for (auto s : stride) TORCH_CHECK(s > 0, op, ": non-positive stride is not supported (stride=", to_str(stride), ")");
  for (auto p : padding) TORCH_CHECK(p >= 0, op, ": negative padding is not supported (padding=", to_str(padding), ")");
  // torch's limit, which keeps in + 2 * padding inside int64.
  for (auto p : padding)
    TORCH_CHECK(p <= std::numeric_limits<int64_t>::max() / 2, op, ": padding=", to_str(padding),
                " is too large; expected padding to be at most ", std::numeric_limits<int64_t>::max() / 2);
  // torch lets a zero dilation through when the call is empty (zero batch or input channels).
  const bool empty_call = input.size(0) == 0 || input.size(1) == 0;
  for (auto d : dilation)
    TORCH_CHECK(d > 0 || (d == 0 && empty_call), op, ": dilation should be greater than zero (dilation=",
                to_str(dilation), ")");
  TORCH_CHECK(groups > 0, op, ": non-positive groups is not supported (groups=", groups, ")");

  TORCH_CHECK(input.device() == weight.device(), op, ": input is on ", input.device(), " but weight is on ",
              weight.device(), "; both must be on the same device");
  TORCH_CHECK(input.scalar_type() == weight.scalar_type(), op, ": input dtype (", input.scalar_type(),
              ") and weight dtype (", weight.scalar_type(), ") should be the same");

  ConvGeometry g;
  g.batch = input.size(0);
  g.in_channels = input.size(1);
  g.out_channels = weight.size(0);
  g.groups = groups;
  TORCH_CHECK(g.out_channels % groups == 0, op, ": expected weight's out_channels (", g.out_channels,
              ") to be divisible by groups=", groups, ", weight has size ", to_str(weight.sizes()));
  TORCH_CHECK(g.in_channels % groups == 0, op, ": expected input channels (", g.in_channels,
              ") to be divisible by groups=", groups, " (input ", to_str(input.sizes()), ", weight ",
              to_str(weight.sizes()), ")");
  TORCH_CHECK(g.in_channels == weight.size(1) * groups, op, ": expected weight with ", g.in_channels / groups,
              " input channels per group (input has ", g.in_channels, " channels, groups=", groups, "), got ",
              weight.size(1), " (input ", to_str(input.sizes()), ", weight ", to_str(weight.sizes()), ")");
  TORCH_CHECK(g.out_channels > 0, op, ": weight has no output channels (weight ", to_str(weight.sizes()), ")");
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == g.out_channels, op,
                ": expected bias to be 1-dimensional with ", g.out_channels,
                " elements (weight's out_channels), but got bias of size ", to_str(bias->sizes()));
    TORCH_CHECK(bias->device() == input.device(), op, ": bias is on ", bias->device(), " but input is on ",
                input.device());
    TORCH_CHECK(bias->scalar_type() == input.scalar_type(), op, ": bias dtype (", bias->scalar_type(),
                ") and input dtype (", input.scalar_type(), ") should be the same");
  }

  if (spatial_dims == 1) {
    g.in_h = 1;
    g.in_w = input.size(2);
    g.kernel_h = 1;
    g.kernel_w = weight.size(2);
    g.stride_w = stride[0];
    g.pad_w = padding[0];
    g.dil_w = dilation[0];
  } else {
    g.in_h = input.size(2);
    g.in_w = input.size(3);
    g.kernel_h = weight.size(2);
    g.kernel_w = weight.size(3);
    g.stride_h = stride[0];
    g.stride_w = stride[1];
    g.pad_h = padding[0];
    g.pad_w = padding[1];
    g.dil_h = dilation[0];
    g.dil_w = dilation[1];
  }
  // As in torch, an empty call (zero batch or zero input channels) accepts zero-size spatial dims and
  // kernels (but see the IndexError below).
  if (!g.is_empty()) {
    TORCH_CHECK(g.kernel_h > 0 && g.kernel_w > 0, op, ": weight has an empty kernel (weight ",
                to_str(weight.sizes()), ")");
    for (int64_t d = 2; d < dims; ++d)
      TORCH_CHECK(input.size(d) > 0, op, ": input has a zero-size spatial dimension (input ",
                  to_str(input.sizes()), "); only a zero batch or zero channels may come with one");
  }
  // Size arithmetic on user-given values, checked for int64 overflow (huge dilations or paddings).
  int64_t span_h, span_w, padded_h, padded_w, extent_h, extent_w, out_h, out_w;
  const bool overflow =
      __builtin_mul_overflow(g.dil_h, g.kernel_h - 1, &span_h) || __builtin_add_overflow(span_h, 1, &span_h) ||
      __builtin_mul_overflow(g.dil_w, g.kernel_w - 1, &span_w) || __builtin_add_overflow(span_w, 1, &span_w) ||
      __builtin_add_overflow(g.in_h, 2 * g.pad_h, &padded_h) || __builtin_add_overflow(g.in_w, 2 * g.pad_w, &padded_w) ||
      __builtin_sub_overflow(padded_h, span_h, &extent_h) || __builtin_sub_overflow(padded_w, span_w, &extent_w) ||
      __builtin_add_overflow(extent_h / g.stride_h, 1, &out_h) || __builtin_add_overflow(extent_w / g.stride_w, 1, &out_w);
  TORCH_CHECK(!overflow, op, ": sizes overflow 64-bit integers (input ", to_str(input.sizes()), ", weight ",
              to_str(weight.sizes()), ", padding=", to_str(padding), ", dilation=", to_str(dilation), ")");
  TORCH_CHECK(span_h <= padded_h && span_w <= padded_w, op, ": padded input size per channel (",
              spatial_dims == 1 ? std::to_string(padded_w) : std::to_string(padded_h) + " x " + std::to_string(padded_w),
              ") is smaller than the dilated kernel size (",
              spatial_dims == 1 ? std::to_string(span_w) : std::to_string(span_h) + " x " + std::to_string(span_w),
              "); kernel size can't be greater than actual input size");
  // After the size check, as in torch: an empty kernel on a zero batch with channels is an IndexError there.
  TORCH_CHECK_INDEX(!g.is_empty() || g.in_channels == 0 || (g.kernel_h > 0 && g.kernel_w > 0), op,
                    ": weight has an empty kernel (weight ", to_str(weight.sizes()), ")");
  g.out_h = out_h;
  g.out_w = out_w;
  return g;
}

// Output positions o in [lo, hi) whose tap at offset `tap` (already multiplied by dilation) reads an
// in-bounds input position i = o * stride - pad + tap. Lets kernels hoist edge handling out of the
// hot loop.
struct OutputRange {
  int64_t lo, hi;
};
inline OutputRange valid_output_range(int64_t out_size, int64_t in_size, int64_t stride, int64_t pad, int64_t tap) {
  // i >= 0  <=>  o >= ceil((pad - tap) / stride);  i < in  <=>  o <= floor((in - 1 + pad - tap) / stride)
  // (pad - tap - 1) / stride + 1 rounds up without the overflow of pad - tap + stride - 1 (huge strides).
  int64_t lo = pad - tap > 0 ? (pad - tap - 1) / stride + 1 : 0;
  int64_t hi_num = in_size - 1 + pad - tap;
  int64_t hi = hi_num < 0 ? 0 : hi_num / stride + 1;
  if (hi > out_size) hi = out_size;
  if (lo > hi) lo = hi;
  return {lo, hi};
}

// Checks for a backward call: grad_output must have the forward output's shape.
inline void check_conv_grad_output(const char* op, const ConvGeometry& g, const at::Tensor& grad_output,
                                   int64_t spatial_dims) {
  std::vector<int64_t> expected = {g.batch, g.output_channels()};
  if (spatial_dims == 2) expected.push_back(g.out_h);
  expected.push_back(g.out_w);
  TORCH_CHECK(grad_output.sizes() == c10::IntArrayRef(expected), op, ": expected grad_output of size ",
              to_str(c10::IntArrayRef(expected)), ", but got ", to_str(grad_output.sizes()));
}

// ---------------------------------------------------------------------------------------------
// Pooling
// ---------------------------------------------------------------------------------------------

// Output length of a pooling window sliding over `in` (torch's rule). In ceil mode the last window
// must start inside the input or the left padding; otherwise it is dropped.
// Computed in 128 bits: kernel, dilation and stride are user-given and may be as large as int64 allows.
inline int64_t pooling_output_size(int64_t in, int64_t kernel, int64_t pad, int64_t stride, int64_t dilation,
                                   bool ceil_mode) {
  using wide = __int128;
  const wide span = wide(dilation) * (kernel - 1) + 1;
  const wide num = wide(in) + 2 * wide(pad) - span + (ceil_mode ? wide(stride) - 1 : 0);
  wide out = num / stride - (num % stride != 0 && num < 0 ? 1 : 0) + 1;  // floor division (stride > 0)
  if (ceil_mode && (out - 1) * stride >= wide(in) + pad) --out;
  TORCH_CHECK(out >= wide(std::numeric_limits<int64_t>::min()) && out <= wide(std::numeric_limits<int64_t>::max()),
              "pooling: the output size overflows 64-bit integers (kernel_size ", kernel, ", dilation ", dilation,
              ", stride ", stride, ")");
  return static_cast<int64_t>(out);
}

// One pooling problem over planes of size in_h x in_w (1-D pooling: in_h == out_h == kernel_h == 1).
// Adaptive pooling fills only planes and the in/out sizes.
struct PoolGeometry {
  int64_t planes = 0;  // batch * channels
  int64_t in_h = 0, in_w = 0, out_h = 0, out_w = 0;
  int64_t kernel_h = 1, kernel_w = 1, stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0, dil_h = 1, dil_w = 1;

  int64_t in_plane() const { return in_h * in_w; }
  int64_t out_plane() const { return out_h * out_w; }
};

// The input must be (C, H, W) or (N, C, H, W); `first_nonempty_dim` is the first dim that may not be 0
// (torch allows an empty batch everywhere, and an empty channel dim for some ops).
inline void check_pool_input_dims(const char* op, const at::Tensor& input, int64_t first_nonempty_dim) {
  TORCH_CHECK(input.defined(), op, ": input must be a defined tensor");
  const int64_t dims = input.dim();
  TORCH_CHECK(dims == 3 || dims == 4, op, ": expected a 3-D (C, H, W) or 4-D (N, C, H, W) input, but got input of size ",
              to_str(input.sizes()));
  for (int64_t d = first_nonempty_dim; d < dims; ++d)
    TORCH_CHECK(input.size(d) > 0, op, ": expected input with non-zero ", d >= dims - 2 ? "spatial" : "channel",
                " sizes (only the batch may be empty), but got input of size ", to_str(input.sizes()));
}

inline PoolGeometry pool_planes_of(const at::Tensor& input) {
  const int64_t dims = input.dim();
  PoolGeometry g;
  g.in_h = input.size(dims - 2);
  g.in_w = input.size(dims - 1);
  g.planes = 1;
  for (int64_t d = 0; d < dims - 2; ++d) g.planes *= input.size(d);
  return g;
}

// Validates a windowed pooling call (max or avg) on a 3-D (C, H, W) or 4-D (N, C, H, W) input.
// Padding may be at most half the kernel for both kinds: torch also checks max pooling against half
// the dilated kernel, but its kernel / 2 check is the stricter one, so dilation never enlarges the limit.
inline PoolGeometry check_pool2d(const char* op, const at::Tensor& input, c10::IntArrayRef kernel_size,
                                 c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                                 bool ceil_mode, bool max_pool) {
  TORCH_CHECK(kernel_size.size() == 2, op, ": kernel_size must have 2 values, got kernel_size=", to_str(kernel_size));
  TORCH_CHECK(stride.size() == 2, op, ": stride must have 2 values, got stride=", to_str(stride));
  TORCH_CHECK(padding.size() == 2, op, ": padding must have 2 values, got padding=", to_str(padding));
  TORCH_CHECK(dilation.size() == 2, op, ": dilation must have 2 values, got dilation=", to_str(dilation));
  TORCH_CHECK(kernel_size[0] > 0 && kernel_size[1] > 0, op,
              ": kernel size should be greater than zero, but got kernel_size=", to_str(kernel_size));
  TORCH_CHECK(stride[0] > 0 && stride[1] > 0, op, ": stride should be greater than zero, but got stride=",
              to_str(stride));
  TORCH_CHECK(dilation[0] > 0 && dilation[1] > 0, op, ": dilation should be greater than zero, but got dilation=",
              to_str(dilation));
  TORCH_CHECK(padding[0] >= 0 && padding[1] >= 0, op, ": padding must be non-negative, but got padding=",
              to_str(padding));
  TORCH_CHECK(padding[0] <= kernel_size[0] / 2 && padding[1] <= kernel_size[1] / 2, op,
              ": padding should be at most half of kernel size, but got padding=", to_str(padding),
              " and kernel_size=", to_str(kernel_size),
              max_pool ? " (dilation does not change this limit, dilation=" + to_str(dilation) + ")" : std::string());
  check_pool_input_dims(op, input, input.dim() - 3);

  PoolGeometry g = pool_planes_of(input);
  g.kernel_h = kernel_size[0];
  g.kernel_w = kernel_size[1];
  g.stride_h = stride[0];
  g.stride_w = stride[1];
  g.pad_h = padding[0];
  g.pad_w = padding[1];
  g.dil_h = dilation[0];
  g.dil_w = dilation[1];
  g.out_h = pooling_output_size(g.in_h, g.kernel_h, g.pad_h, g.stride_h, g.dil_h, ceil_mode);
  g.out_w = pooling_output_size(g.in_w, g.kernel_w, g.pad_w, g.stride_w, g.dil_w, ceil_mode);
  const int64_t channels = input.size(input.dim() - 3);
  TORCH_CHECK(g.out_h >= 1 && g.out_w >= 1, op, ": given input size (", channels, " x ", g.in_h, " x ", g.in_w,
              "), the calculated output size (", channels, " x ", g.out_h, " x ", g.out_w,
              ") is too small (kernel_size=", to_str(kernel_size), ", stride=", to_str(stride), ", padding=",
              to_str(padding), ", dilation=", to_str(dilation), ", ceil_mode=", ceil_mode ? "True" : "False", ")");
  return g;
}

// Adaptive pooling: output cell i covers input [floor(i*in/out), ceil((i+1)*in/out)).
inline int64_t adaptive_start(int64_t i, int64_t out, int64_t in) { return (i * in) / out; }
inline int64_t adaptive_end(int64_t i, int64_t out, int64_t in) { return ((i + 1) * in + out - 1) / out; }

// Validates an adaptive pooling call. Like torch, adaptive average pooling accepts an empty channel
// dim; adaptive max pooling only does for an unbatched (C, H, W) input. An output size of 0 is
// allowed (the result is empty).
inline PoolGeometry check_adaptive_pool2d(const char* op, const at::Tensor& input, c10::IntArrayRef output_size,
                                          bool max_pool = false) {
  TORCH_CHECK(output_size.size() == 2, op, ": output_size must have 2 values, got output_size=",
              to_str(output_size));
  TORCH_CHECK(output_size[0] >= 0 && output_size[1] >= 0, op,
              ": elements of output_size must be greater than or equal to 0, but got output_size=",
              to_str(output_size));
  TORCH_CHECK(input.defined(), op, ": input must be a defined tensor");
  check_pool_input_dims(op, input, max_pool ? 1 : input.dim() - 2);
  PoolGeometry g = pool_planes_of(input);
  g.out_h = output_size[0];
  g.out_w = output_size[1];
  return g;
}

// An adaptive average pooling to a 1 x 1 output, which torch computes as a mean over the last two
// dims: any input of two or more dims is accepted, empty dims included (an empty plane averages to
// NaN), and its backward checks nothing more.
inline bool is_global_average(c10::IntArrayRef output_size) {
  return output_size.size() == 2 && output_size[0] == 1 && output_size[1] == 1;
}

inline PoolGeometry check_global_avg_pool2d(const char* op, const at::Tensor& input) {
  TORCH_CHECK(input.defined(), op, ": input must be a defined tensor");
  TORCH_CHECK_INDEX(input.dim() >= 2, op, ": expected an input of at least 2 dims for a 1 x 1 output, but got input "
                    "of size ", to_str(input.sizes()));
  PoolGeometry g = pool_planes_of(input);
  g.out_h = g.out_w = 1;
  return g;
}

// Whether a tensor is laid out channels-last (and not also contiguous).
inline bool is_channels_last(const at::Tensor& t) {
  return t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// The memory format torch gives a pooling op's outputs and input gradient: channels-last where the (4-D)
// input suggests it, contiguous otherwise.
inline at::MemoryFormat pool_memory_format(const at::Tensor& input) {
  return input.dim() == 4 && input.suggest_memory_format() == at::MemoryFormat::ChannelsLast
             ? at::MemoryFormat::ChannelsLast
             : at::MemoryFormat::Contiguous;
}

// A pooling kernel registered so that its results (written NCHW) come in pool_memory_format of the op's
// argument kInput (the input: argument 0 of a forward op, 1 of a backward one).
template <size_t kInput, auto Kernel>
struct InInputFormat;
template <size_t kInput, typename Result, typename... Args, Result (*Kernel)(Args...)>
struct InInputFormat<kInput, Kernel> {
  static Result call(Args... args) {
    const at::MemoryFormat format = pool_memory_format(std::get<kInput>(std::forward_as_tuple(args...)));
    Result result = Kernel(args...);
    if constexpr (std::is_same_v<Result, at::Tensor>) {
      return result.contiguous(format);
    } else {
      return {std::get<0>(result).contiguous(format), std::get<1>(result).contiguous(format)};
    }
  }
};

inline std::vector<int64_t> pool_output_sizes(const at::Tensor& input, const PoolGeometry& g) {
  std::vector<int64_t> sizes(input.sizes().begin(), input.sizes().end());
  sizes[sizes.size() - 2] = g.out_h;
  sizes[sizes.size() - 1] = g.out_w;
  return sizes;
}

// Checks for a pooling backward call: grad_output (and indices, when given) must have the shape the
// forward op produced for this input, and dtypes and devices must agree.
inline void check_pool_grad_output(const char* op, const at::Tensor& input, const PoolGeometry& g,
                                   const at::Tensor& grad_output, const at::Tensor* indices) {
  const std::vector<int64_t> expected = pool_output_sizes(input, g);
  TORCH_CHECK(grad_output.sizes() == c10::IntArrayRef(expected), op, ": expected grad_output of size ",
              to_str(c10::IntArrayRef(expected)), ", but got ", to_str(grad_output.sizes()));
  TORCH_CHECK(grad_output.device() == input.device(), op, ": grad_output is on ", grad_output.device(),
              " but input is on ", input.device());
  TORCH_CHECK(grad_output.scalar_type() == input.scalar_type(), op, ": grad_output dtype (", grad_output.scalar_type(),
              ") and input dtype (", input.scalar_type(), ") should be the same");
  if (indices != nullptr) {
    TORCH_CHECK(indices->sizes() == c10::IntArrayRef(expected), op, ": expected indices of size ",
                to_str(c10::IntArrayRef(expected)), ", but got ", to_str(indices->sizes()));
    TORCH_CHECK(indices->scalar_type() == at::kLong, op, ": indices must be int64, but got ", indices->scalar_type());
    TORCH_CHECK(indices->device() == input.device(), op, ": indices are on ", indices->device(), " but input is on ",
                input.device());
  }
}

// ---------------------------------------------------------------------------------------------
// dtype and device checks
// ---------------------------------------------------------------------------------------------

inline void check_float_dtype(const char* op, const at::Tensor& t, bool allow_reduced_precision) {
  const auto st = t.scalar_type();
  const bool ok = st == at::kFloat || st == at::kDouble ||
                  (allow_reduced_precision && (st == at::kHalf || st == at::kBFloat16));
  // NotImplementedError, the class torch raises for a dtype a kernel has no implementation for.
  TORCH_CHECK_NOT_IMPLEMENTED(ok, op, ": unsupported dtype ", st, "; supported dtypes are float32 and float64",
              allow_reduced_precision ? ", float16 and bfloat16" : "", " on ", t.device().type() == at::kCPU ? "CPU" : "CUDA");
}

inline void check_same_device(const char* op, const char* name_a, const at::Tensor& a, const char* name_b,
                              const at::Tensor& b) {
  TORCH_CHECK(a.device() == b.device(), op, ": ", name_a, " is on ", a.device(), " but ", name_b, " is on ",
              b.device(), "; all tensors must be on the same device");
}

}  // namespace fastconv

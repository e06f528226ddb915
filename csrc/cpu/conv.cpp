// CPU registration of the convolution ops: argument checks, layout preparation, algorithm dispatch.
// The algorithms themselves live in conv_im2col.cpp and conv_direct.cpp.
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <torch/library.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#endif

#include <type_traits>

#include "common/conv_adapters.h"
#include "common/cpu_features.h"
#include "common/shapes.h"
#include "cpu/conv_kernels.h"

namespace fastconv::cpu {
namespace {

// The sum of n values in double: kSumLanes interleaved partial sums (lane j adds the elements i with
// i % kSumLanes == j, in order), added up in lane order, then the elements past the last whole group of
// kSumLanes. A fixed order, the same in every variant below, of independent additions (one running sum
// was a chain of dependent additions: 0.25 ms of a 9 ms training step of a 128-channel conv1d at batch 8).
constexpr int kSumLanes = 32;

template <typename scalar_t>
double finish_sum(const double* lanes, const scalar_t* rest, int64_t count) {
  double sum = 0;
  for (int j = 0; j < kSumLanes; ++j) sum += lanes[j];
  for (int64_t i = 0; i < count; ++i) sum += static_cast<double>(rest[i]);
  return sum;
}

template <typename scalar_t>
double sum_in_double_portable(const scalar_t* p, int64_t n) {
  double lanes[kSumLanes] = {};
  int64_t i = 0;
  for (; i + kSumLanes <= n; i += kSumLanes)
    for (int j = 0; j < kSumLanes; ++j) lanes[j] += static_cast<double>(p[i + j]);
  return finish_sum(lanes, p + i, n - i);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// The same for floats with AVX-512 (kSumLanes lanes: four vectors of 8 doubles) and AVX2 (eight of 4): this
// file is compiled for the baseline ISA, where the portable loop summed about a float a cycle (0.10 ms of
// a 4 MB output gradient, three times torch's float sum).
__attribute__((target("avx512f"))) double sum_floats_avx512(const float* p, int64_t n) {
  __m512d acc[4] = {_mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd()};
  int64_t i = 0;
  for (; i + kSumLanes <= n; i += kSumLanes)
    for (int k = 0; k < 4; ++k) acc[k] = _mm512_add_pd(acc[k], _mm512_cvtps_pd(_mm256_loadu_ps(p + i + 8 * k)));
  double lanes[kSumLanes];
  for (int k = 0; k < 4; ++k) _mm512_storeu_pd(lanes + 8 * k, acc[k]);
  return finish_sum(lanes, p + i, n - i);
}

__attribute__((target("avx2"))) double sum_floats_avx2(const float* p, int64_t n) {
  __m256d acc[8];
  for (int k = 0; k < 8; ++k) acc[k] = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + kSumLanes <= n; i += kSumLanes)
    for (int k = 0; k < 8; ++k) acc[k] = _mm256_add_pd(acc[k], _mm256_cvtps_pd(_mm_loadu_ps(p + i + 4 * k)));
  double lanes[kSumLanes];
  for (int k = 0; k < 8; ++k) _mm256_storeu_pd(lanes + 4 * k, acc[k]);
  return finish_sum(lanes, p + i, n - i);
}
#endif

template <typename scalar_t>
double sum_in_double(const scalar_t* p, int64_t n) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (active_cpu_isa() == CpuIsa::Avx512) return sum_floats_avx512(p, n);
    if (active_cpu_isa() == CpuIsa::Avx2) return sum_floats_avx2(p, n);
  }
#endif
  return sum_in_double_portable(p, n);
}

// Per-channel sum of grad_output over batch and space, in a fixed order (deterministic).
at::Tensor conv_grad_bias(const at::Tensor& grad_output) {
  const int64_t batch = grad_output.size(0), channels = grad_output.size(1);
  const int64_t plane = grad_output.numel() / std::max<int64_t>(1, batch * channels);
  at::Tensor grad_bias = at::empty({channels}, grad_output.options());
  AT_DISPATCH_FLOATING_TYPES(grad_output.scalar_type(), "conv_grad_bias", [&] {
    const scalar_t* go = grad_output.const_data_ptr<scalar_t>();
    scalar_t* gb = grad_bias.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, channels, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        double acc = 0;
        for (int64_t n = 0; n < batch; ++n) acc += sum_in_double(go + (n * channels + c) * plane, plane);
        gb[c] = static_cast<scalar_t>(acc);
      }
    });
  });
  return grad_bias;
}

// A strided 1x1 layer's forward (ConvGeometry::is_strided_pointwise) as the stride-1 layer on the pixels
// it reads, picked out first (a copy of 1 / (stride_h * stride_w) of the input), so that the kernels
// neither transpose nor stream the pixels they skip: ResNet-18's 64 -> 128 downsample at batch 8, 2
// threads: 0.99-1.07 ms -> 0.64-0.68 ms. Where that copy would pass the workspace cap, the kernels read the
// input itself.
int64_t forward_picked_bytes(const ConvGeometry& g, int64_t element_size) {
  if (g.is_empty() || !g.is_strided_pointwise()) return 0;
  const int64_t bytes = g.batch * g.in_channels * g.out_h * g.out_w * element_size;
  return bytes <= im2col_workspace_limit_bytes() ? bytes : 0;
}

at::Tensor conv2d_cpu(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                      c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                      const std::string& algo) {
  // The ATen calls inside are implementation details, never part of an autograd graph.
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  ConvGeometry g = check_conv("conv2d", 2, input, weight, bias, stride, padding, dilation, groups);
  // Chosen on the layer's own geometry (auto's rule for strided 1x1 layers names them), before a strided
  // 1x1 layer becomes a stride-1 one on its picked pixels; also rejects a bad name first.
  const ConvAlgo which = parse_conv_algo("conv2d", algo, g, ConvPass::Forward, /*on_cuda=*/false);
  check_float_dtype("conv2d", input, /*allow_reduced_precision=*/false);
  const at::Tensor weight_c = weight.contiguous();  // outlives the kernels that read it
  const at::MemoryFormat format = conv2d_memory_format(input, weight);
  at::Tensor picked;
  if (forward_picked_bytes(g, input.element_size()) > 0) {
    picked = picked_pointwise_pixels(g, input, input.suggest_memory_format());
    g = picked_pointwise_geometry(g);
  }
  const at::Tensor& source = picked.defined() ? picked : input;
  at::Tensor out;
  if (g.is_empty()) {
    // A view of an empty tensor, as torch returns it: its shape may be too large for at::empty's
    // stride computation (a huge padding on an empty batch), which a view does not check.
    out = at::empty({0}, input.options()).view(g.output_sizes());
  } else {
    // The direct kernels choose their own input layout (channels-last input is used as it is) and add
    // the bias themselves; the blocked one writes a channels-last output directly.
    if (which == ConvAlgo::Im2col) {
      out = im2col_conv2d_forward(g, source.contiguous(), weight_c);
      add_channel_bias(out, bias);
    } else {
      out = direct_conv2d_forward(g, source, weight_c, bias, format == at::MemoryFormat::ChannelsLast);
    }
    out = out.contiguous(format);  // a copy only where the kernel wrote the other format
  }
  return out;
}

ConvGrads conv2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
                              c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                              int64_t groups, std::array<bool, 3> output_mask, const std::string& algo) {
  return conv2d_backward_on_device(grad_output, input, weight, stride, padding, dilation, groups, output_mask, algo,
                                   /*on_cuda=*/false, im2col_conv2d_backward, direct_conv2d_backward,
                                   conv_grad_bias, /*direct_reads_channels_last=*/true);
}

at::Tensor conv1d_cpu(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                      c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                      const std::string& algo) {
  return conv1d_via_conv2d(conv2d_cpu, input, weight, bias, stride, padding, dilation, groups, algo);
}

ConvGrads conv1d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
                              c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                              int64_t groups, std::array<bool, 3> output_mask, const std::string& algo) {
  return conv1d_backward_via_conv2d(conv2d_backward_cpu, grad_output, input, weight, stride, padding, dilation,
                                    groups, output_mask, algo);
}

int64_t conv2d_workspace_bytes_cpu(const at::Tensor& input, const at::Tensor& weight, c10::IntArrayRef stride,
                                   c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                                   const std::string& algo) {
  ConvGeometry g = check_conv("conv2d_workspace_bytes", 2, input, weight, std::nullopt, stride, padding, dilation,
                              groups);
  if (g.is_empty()) return 0;
  // The most scratch memory any one pass allocates.
  int64_t most = 0;
  const int64_t element_size = input.element_size();
  for (ConvPass pass : {ConvPass::Forward, ConvPass::BackwardInput, ConvPass::BackwardWeight}) {
    // A strided 1x1 layer's forward: the picked pixels, then the stride-1 layer on them.
    const int64_t picked_bytes = pass == ConvPass::Forward ? forward_picked_bytes(g, element_size) : 0;
    const ConvGeometry pg = picked_bytes > 0 ? picked_pointwise_geometry(g) : g;
    const ConvAlgo which = parse_conv_algo("conv2d_workspace_bytes", algo, g, pass, false);  // as conv2d_cpu
    most = std::max(most, picked_bytes + (which == ConvAlgo::Im2col ? im2col_workspace_bytes(pg, element_size)
                                                                    : direct_workspace_bytes(pg, element_size)));
  }
  return most;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, CPU, m) {
  m.impl("conv1d", &conv1d_cpu);
  m.impl("conv1d_backward", &conv1d_backward_cpu);
  m.impl("conv2d", &conv2d_cpu);
  m.impl("conv2d_backward", &conv2d_backward_cpu);
  m.impl("conv2d_workspace_bytes", &conv2d_workspace_bytes_cpu);
}

}  // namespace fastconv::cpu

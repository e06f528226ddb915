// Device-independent glue shared by the CPU and CUDA convolution registrations: conv1d is a conv2d
// with a height of 1, and backward ops return an empty tensor for each gradient not asked for.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/LegacyTypeDispatch.h>

#include <array>
#include <optional>
#include <string>
#include <tuple>

#include "common/shapes.h"

namespace fastconv {

enum class ConvAlgo { Im2col, Direct };
enum class ConvPass { Forward, BackwardInput, BackwardWeight };

// The rule behind algo="auto", per pass (measured with benchmarks/run.py and single-thread timings on the
// CPU; see README):
// - grouped convolutions with at most 4 input channels per group (depthwise included): direct, every
//   pass; their per-group matrix products are too thin for a GEMM.
// - CUDA, dense layers: im2col (cuBLAS). 1x1 kernels, any stride: im2col (the GEMM is the whole job).
// - CPU, other grouped layers with fewer than 16 output channels per group: direct (its plane kernels;
//   at 8 per group, 28x28, batch 8, 3x faster than im2col forward and 4x forward+backward).
// - CPU, dense layers: direct (its register tiles run over the pixels of all images, so small planes
//   fill them too). The input gradient of a strided layer: direct (stride-1 convolutions, one per
//   stride phase) with at least 16 input and 8 output channels per group, no dilation and a stride
//   within the kernel (the conditions of direct_grad_input_by_phases in cpu/conv_direct.cpp); im2col
//   otherwise (ResNet-18's strided 3x3 layers, 2 threads: the phases take 5.1 / 4.7 / 5.3 ms against
//   im2col's 5.8 / 5.7 / 9.4 at batch 8 on layer2.0 / 3.0 / 4.0, and win at batch 32 too; at batch 2
//   layer4.0 1.48 against 2.15 ms, at batch 1 layer3.0 / 4.0 0.52 / 1.06 against 0.55 / 1.11 ms).
// - CPU, 1x1 stride-1 layers with one group, 16+ channels on each side and small outputs (at most 2048
//   pixels over the batch): direct for the forward and the input gradient, whose register tiles run over
//   the pixels of all images (MobileNetV2's 7x7 and 14x14 1x1 layers at batch 8: 5-25% faster forward,
//   up to 2.5x faster input gradient than the per-image GEMMs); the weight gradient stays with im2col.
// - CPU, forward of strided 1x1 layers with one group: direct from batch 2, or where the input has at
//   most twice as many pixels over the batch as the layer has output channels; im2col for a single
//   larger image. ResNet-18's downsampling shortcuts on the AMD EPYC (Zen 5) machine, 2 threads, direct
//   against im2col in ms: layer2.0's (64 -> 128 from 56x56) 0.076 / 0.132 / 0.231 / 0.423 against
//   0.058 / 0.126 / 0.243 / 0.514 at batch 1 / 2 / 4 / 8; layer3.0's (128 -> 256 from 28x28) 0.073 /
//   0.112 / 0.179 / 0.295 against 0.069 / 0.116 / 0.220 / 0.339; layer4.0's (256 -> 512 from 14x14)
//   0.053 / 0.082 / 0.146 / 0.330 against 0.071 / 0.123 / 0.183 / 0.405.
// - CPU, forward of one-group layers with at most 16 products per output (input channels x taps) and
//   128+ output channels: im2col. The GEMM writes each output row in place, where the direct kernel
//   transposes every tile into the planes, which costs more than such short products (wav2vec2's
//   1-channel k10/5 front end, 512 channels: 0.29 against 0.77 ms at batch 1, 15 against 20 ms at
//   batch 8; with 32 or 64 output channels the direct kernel stays ahead).
inline ConvAlgo auto_conv_algo(const ConvGeometry& g, ConvPass pass, bool on_cuda) {
  if (g.groups > 1 && g.in_channels_per_group() <= 4) return ConvAlgo::Direct;
  if (!on_cuda && pass == ConvPass::Forward && g.groups == 1 && g.col_rows() <= 16 && g.out_channels >= 128)
    return ConvAlgo::Im2col;
  if (!on_cuda && g.is_pointwise_unit() && g.groups == 1 && g.in_channels >= 16 && g.out_channels >= 16 &&
      pass != ConvPass::BackwardWeight && static_cast<double>(g.batch) * g.out_h * g.out_w <= 2048.0)
    return ConvAlgo::Direct;
  if (!on_cuda && pass == ConvPass::Forward && g.kernel_h == 1 && g.kernel_w == 1 && g.groups == 1 &&
      (g.stride_h > 1 || g.stride_w > 1) && g.in_channels >= 16 && g.out_channels >= 16 &&
      (g.batch >= 2 || static_cast<double>(g.in_h) * g.in_w <= 2.0 * g.out_channels))
    return ConvAlgo::Direct;
  if (on_cuda || (g.kernel_h == 1 && g.kernel_w == 1)) return ConvAlgo::Im2col;
  if (g.groups > 1 && g.out_channels_per_group() < 16) return ConvAlgo::Direct;
  if (pass == ConvPass::BackwardInput && (g.stride_h != 1 || g.stride_w != 1)) {
    const bool phases_fit = g.dil_h == 1 && g.dil_w == 1 && g.stride_h <= g.kernel_h && g.stride_w <= g.kernel_w &&
                            g.in_channels_per_group() >= 16 && g.out_channels_per_group() >= 8;
    return phases_fit ? ConvAlgo::Direct : ConvAlgo::Im2col;
  }
  return ConvAlgo::Direct;
}

inline ConvAlgo parse_conv_algo(const char* op, const std::string& algo, const ConvGeometry& g, ConvPass pass,
                                bool on_cuda) {
  if (algo == "im2col") return ConvAlgo::Im2col;
  if (algo == "direct") return ConvAlgo::Direct;
  if (algo == "auto") return auto_conv_algo(g, pass, on_cuda);
  TORCH_CHECK_VALUE(false, op, ": algo must be 'auto', 'im2col' or 'direct', got '", algo, "'");
}

using ConvGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// The memory format of a 2-D convolution's output and of its input and weight gradients, as torch chooses
// it: channels-last where the input or the weight suggests that format, contiguous otherwise; on CUDA,
// float64 is always contiguous (torch's CUDA convolutions have no channels-last float64 path).
inline at::MemoryFormat conv2d_memory_format(const at::Tensor& input, const at::Tensor& weight) {
  constexpr auto kChannelsLast = at::MemoryFormat::ChannelsLast;
  const bool cuda_double = input.is_cuda() && input.scalar_type() == at::kDouble;
  const bool channels_last = input.dim() == 4 && weight.dim() == 4 && !cuda_double &&
                             (input.suggest_memory_format() == kChannelsLast ||
                              weight.suggest_memory_format() == kChannelsLast);
  return channels_last ? kChannelsLast : at::MemoryFormat::Contiguous;
}

// Empty placeholder for a gradient that the output mask did not ask for.
inline at::Tensor unused_grad(const at::Tensor& like) { return at::empty({0}, like.options()); }

// conv2d_backward for one device: argument checks, the algorithm of each gradient ("auto" may split them
// between the two), empty problems, and the bias gradient. The device supplies its two backward
// algorithms and its bias-gradient reduction; the caller holds any device guard. Where
// direct_reads_channels_last, the direct algorithm gets channels-last tensors as they are (it copies
// what it needs to NCHW itself); every other reader gets NCHW copies, made once.
template <typename Im2colBackward, typename DirectBackward, typename GradBias>
ConvGrads conv2d_backward_on_device(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
                                    c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                                    int64_t groups, std::array<bool, 3> output_mask, const std::string& algo,
                                    bool on_cuda, Im2colBackward im2col_backward, DirectBackward direct_backward,
                                    GradBias bias_backward, bool direct_reads_channels_last = false) {
  const char* op = "conv2d_backward";
  const ConvGeometry g = check_conv(op, 2, input, weight, std::nullopt, stride, padding, dilation, groups);
  const ConvAlgo input_algo = parse_conv_algo(op, algo, g, ConvPass::BackwardInput, on_cuda);
  const ConvAlgo weight_algo = parse_conv_algo(op, algo, g, ConvPass::BackwardWeight, on_cuda);
  check_conv_grad_output(op, g, grad_output, 2);
  check_same_device(op, "grad_output", grad_output, "input", input);
  check_float_dtype(op, input, on_cuda);
  TORCH_CHECK(grad_output.scalar_type() == input.scalar_type(), op, ": grad_output dtype (",
              grad_output.scalar_type(), ") and input dtype (", input.scalar_type(), ") should be the same");
  // The ATen calls below are implementation detail, never autograd history.
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  at::Tensor grad_output_c, input_c;  // NCHW copies, where a reader needs them
  const auto nchw = [](at::Tensor& copy, const at::Tensor& t) -> const at::Tensor& {
    if (!copy.defined()) copy = t.contiguous();
    return copy;
  };
  const auto for_direct = [&](at::Tensor& copy, const at::Tensor& t) -> const at::Tensor& {
    return direct_reads_channels_last && is_channels_last(t) ? t : nchw(copy, t);
  };
  const at::Tensor weight_c = weight.contiguous();

  at::Tensor grad_input, grad_weight;
  if (g.is_empty()) {
    if (output_mask[0]) grad_input = at::zeros(input.sizes(), input.options());
    if (output_mask[1]) grad_weight = at::zeros(weight.sizes(), weight.options());
  } else {
    for (const ConvAlgo which : {ConvAlgo::Im2col, ConvAlgo::Direct}) {
      const std::array<bool, 3> mask = {output_mask[0] && input_algo == which,
                                        output_mask[1] && weight_algo == which, false};
      if (!mask[0] && !mask[1]) continue;
      auto [gi, gw, unused] =
          which == ConvAlgo::Im2col
              ? im2col_backward(g, nchw(grad_output_c, grad_output), nchw(input_c, input), weight_c, mask)
              : direct_backward(g, for_direct(grad_output_c, grad_output), for_direct(input_c, input), weight_c, mask);
      if (mask[0]) grad_input = gi;
      if (mask[1]) grad_weight = gw;
    }
  }
  // A zero-channel input has a zero-channel output, to which the bias contributes nothing.
  at::Tensor grad_bias = !output_mask[2]      ? unused_grad(input)
                         : g.in_channels == 0 ? at::zeros({g.out_channels}, input.options())
                                              : bias_backward(nchw(grad_output_c, grad_output));
  const at::MemoryFormat format = conv2d_memory_format(input, weight);
  grad_input = output_mask[0] ? grad_input.contiguous(format) : unused_grad(input);
  grad_weight = output_mask[1] ? grad_weight.contiguous(format) : unused_grad(input);
  return {grad_input, grad_weight, grad_bias};
}

// conv1d through a 2-D kernel: (N, C, L) -> (N, C, 1, L), parameters get a leading unit entry.
template <typename Conv2dFn>
at::Tensor conv1d_via_conv2d(Conv2dFn conv2d, const at::Tensor& input, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias, c10::IntArrayRef stride,
                             c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                             const std::string& algo) {
  check_conv("conv1d", 1, input, weight, bias, stride, padding, dilation, groups);
  at::Tensor out = conv2d(input.unsqueeze(2), weight.unsqueeze(2), bias, {1, stride[0]}, {0, padding[0]},
                          {1, dilation[0]}, groups, algo);
  // A 3-D tensor has no channels-last format: whatever its 4-D view suggested, a contiguous result.
  return out.squeeze(2).contiguous();
}

template <typename Conv2dBackwardFn>
ConvGrads conv1d_backward_via_conv2d(Conv2dBackwardFn conv2d_backward, const at::Tensor& grad_output,
                                     const at::Tensor& input, const at::Tensor& weight, c10::IntArrayRef stride,
                                     c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                                     std::array<bool, 3> output_mask, const std::string& algo) {
  ConvGeometry g = check_conv("conv1d_backward", 1, input, weight, std::nullopt, stride, padding, dilation, groups);
  check_conv_grad_output("conv1d_backward", g, grad_output, 1);
  auto [grad_input, grad_weight, grad_bias] =
      conv2d_backward(grad_output.unsqueeze(2), input.unsqueeze(2), weight.unsqueeze(2), {1, stride[0]},
                      {0, padding[0]}, {1, dilation[0]}, groups, output_mask, algo);
  if (output_mask[0]) grad_input = grad_input.squeeze(2).contiguous();
  if (output_mask[1]) grad_weight = grad_weight.squeeze(2).contiguous();
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace fastconv

// CPU convolution algorithms. Every function takes contiguous NCHW tensors (except direct_conv2d_forward's
// input, in any layout) and a geometry that common/shapes.h has validated; conv.cpp prepares both.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <optional>

#include "common/conv_adapters.h"
#include "common/shapes.h"

namespace fastconv::cpu {

// im2col + GEMM (conv_im2col.cpp). The column buffer is bounded by im2col_workspace_limit_bytes().
at::Tensor im2col_conv2d_forward(const ConvGeometry& g, const at::Tensor& input, const at::Tensor& weight);
ConvGrads im2col_conv2d_backward(const ConvGeometry& g, const at::Tensor& grad_output, const at::Tensor& input,
                                 const at::Tensor& weight, std::array<bool, 3> output_mask);
int64_t im2col_workspace_limit_bytes();
int64_t im2col_workspace_bytes(const ConvGeometry& g, int64_t element_size);

// Direct convolution straight from the input, no column buffer (conv_direct.cpp).
bool direct_uses_blocked_kernel(const ConvGeometry& g, int64_t element_size);
bool direct_forward_is_blocked(const ConvGeometry& g, int64_t element_size);
int64_t direct_workspace_bytes(const ConvGeometry& g, int64_t element_size);
bool direct_grad_input_is_blocked(const ConvGeometry& g, int64_t element_size);
// For stride 1 the input gradient is itself a convolution: dY, padded by dil * (k - 1) - pad, with the
// weights flipped in space and transposed between input and output channels.
inline ConvGeometry transposed_geometry(const ConvGeometry& g) {
  ConvGeometry t = g;
  t.in_channels = g.out_channels;
  t.out_channels = g.in_channels;
  t.in_h = g.out_h;
  t.in_w = g.out_w;
  t.out_h = g.in_h;
  t.out_w = g.in_w;
  t.pad_h = g.dil_h * (g.kernel_h - 1) - g.pad_h;
  t.pad_w = g.dil_w * (g.kernel_w - 1) - g.pad_w;
  return t;
}

// One-dimensional layers computed along their rows (conv_rows.cpp), which the direct algorithm takes
// where the *_applies tests pass; rows_workspace_bytes: the phase copy it makes, and the packed weights.
bool rows_forward_applies(const ConvGeometry& g);
bool rows_grad_input_applies(const ConvGeometry& g);
bool rows_grad_weight_applies(const ConvGeometry& g);
int64_t rows_workspace_bytes(const ConvGeometry& g, int64_t element_size);
at::Tensor rows_forward(const ConvGeometry& g, const at::Tensor& input, const at::Tensor& weight,
                        const std::optional<at::Tensor>& bias);
at::Tensor rows_grad_input(const ConvGeometry& g, const at::Tensor& grad_output, const at::Tensor& weight);
at::Tensor rows_grad_weight(const ConvGeometry& g, const at::Tensor& grad_output, const at::Tensor& input);

// out (N, C, H, W) += bias (C values) broadcast over images and pixels, when a bias is given.
inline void add_channel_bias(at::Tensor& out, const std::optional<at::Tensor>& bias) {
  if (bias.has_value() && bias->defined()) out.add_(bias->view({1, out.size(1), 1, 1}));
}

// Adds the bias (out_channels values) when given. With prefer_channels_last, the output may come in the
// channels-last format (where the kernel writes it so at no cost), else it is contiguous.
at::Tensor direct_conv2d_forward(const ConvGeometry& g, const at::Tensor& input, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias, bool prefer_channels_last = false);
ConvGrads direct_conv2d_backward(const ConvGeometry& g, const at::Tensor& grad_output, const at::Tensor& input,
                                 const at::Tensor& weight, std::array<bool, 3> output_mask);

}  // namespace fastconv::cpu

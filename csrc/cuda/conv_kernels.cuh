// CUDA convolution algorithms. Every function takes contiguous NCHW CUDA tensors and a geometry that
// common/shapes.h has validated (not empty); the registration in conv.cu prepares both and handles bias.
#pragma once

#include <ATen/ATen.h>

#include <array>

#include "common/conv_adapters.h"
#include "common/shapes.h"

namespace fastconv::cuda {

// im2col + cuBLAS (conv_im2col.cu). The batch is processed in chunks whose column buffer stays under
// im2col_workspace_limit_bytes().
at::Tensor im2col_conv2d_forward(const ConvGeometry& g, const at::Tensor& input, const at::Tensor& weight);
ConvGrads im2col_conv2d_backward(const ConvGeometry& g, const at::Tensor& grad_output, const at::Tensor& input,
                                 const at::Tensor& weight, std::array<bool, 3> output_mask);
int64_t im2col_workspace_limit_bytes();
int64_t im2col_workspace_bytes(const ConvGeometry& g, int64_t element_size);

// Direct convolution through shared-memory tiles, depthwise included, no column buffer (conv_direct.cu).
// grad_weight goes through a small buffer of per-slice partial sums (no atomics).
at::Tensor direct_conv2d_forward(const ConvGeometry& g, const at::Tensor& input, const at::Tensor& weight);
ConvGrads direct_conv2d_backward(const ConvGeometry& g, const at::Tensor& grad_output, const at::Tensor& input,
                                 const at::Tensor& weight, std::array<bool, 3> output_mask);
int64_t direct_backward_workspace_bytes(const ConvGeometry& g, at::ScalarType dtype);

// Per-channel sum of grad_output over batch and space, in a fixed order (conv.cu).
at::Tensor conv_grad_bias(const at::Tensor& grad_output);

}  // namespace fastconv::cuda

// CUDA registration of the convolution ops: argument checks, device guard, layout preparation,
// algorithm dispatch, bias. The algorithms live in conv_im2col.cu and conv_direct.cu; this file mirrors
// csrc/cpu/conv.cpp.
#include <torch/library.h>

#include "common/conv_adapters.h"
#include "common/shapes.h"
#include "cuda/conv_kernels.cuh"
#include "cuda/cuda_utils.cuh"

namespace fastconv::cuda {
namespace {

// One block per channel (block loop): each thread sums a strided slice of (image, pixel) in order, then
// the block adds the partial sums in a fixed tree. Deterministic.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    channel_sum_kernel(const scalar_t* __restrict__ grad_output, scalar_t* __restrict__ grad_bias, int64_t batch,
                       int64_t channels, int64_t plane) {
  using acc_t = acc_type<scalar_t>;
  __shared__ acc_t scratch[kThreads];
  const int64_t items = batch * plane;
  for (int64_t c = blockIdx.x; c < channels; c += gridDim.x) {
    acc_t sum = 0;
    for (int64_t m = threadIdx.x; m < items; m += kThreads) {
      const int64_t n = m / plane, p = m % plane;
      sum += static_cast<acc_t>(grad_output[(n * channels + c) * plane + p]);
    }
    sum = block_sum(sum, scratch);
    if (threadIdx.x == 0) grad_bias[c] = static_cast<scalar_t>(sum);
  }
}

at::Tensor conv2d_cuda(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                       c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                       const std::string& algo) {
  const ConvGeometry g = check_conv("conv2d", 2, input, weight, bias, stride, padding, dilation, groups);
  const ConvAlgo which = parse_conv_algo("conv2d", algo, g, ConvPass::Forward, /*on_cuda=*/true);
  check_float_dtype("conv2d", input, /*allow_reduced_precision=*/true);
  const DeviceGuard guard(input.device());
  // The ATen calls below (matmul, bmm_out, copies) are implementation detail, never autograd history,
  // even when the op is called directly on tensors that require grad.
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  // Kernels read NCHW; these locals keep the contiguous copies alive while they run.
  const at::Tensor input_c = input.contiguous();
  const at::Tensor weight_c = weight.contiguous();
  at::Tensor out;
  if (g.is_empty()) {  // zero batch or zero input channels: nothing to compute
    out = at::empty(g.output_sizes(), input.options());
  } else {
    out = which == ConvAlgo::Im2col ? im2col_conv2d_forward(g, input_c, weight_c)
                                    : direct_conv2d_forward(g, input_c, weight_c);
  }
  if (bias.has_value() && bias->defined() && out.numel() > 0) out.add_(bias->view({1, g.out_channels, 1, 1}));
  // torch's output format (the kernels write NCHW).
  if (!g.is_empty()) out = out.contiguous(conv2d_memory_format(input, weight));
  return out;
}

ConvGrads conv2d_backward_cuda(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
                               c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                               int64_t groups, std::array<bool, 3> output_mask, const std::string& algo) {
  std::optional<DeviceGuard> guard;  // for a CUDA input; the checks report a tensor on another device
  if (input.is_cuda()) guard.emplace(input.device());
  return conv2d_backward_on_device(grad_output, input, weight, stride, padding, dilation, groups, output_mask, algo,
                                   /*on_cuda=*/true, im2col_conv2d_backward, direct_conv2d_backward,
                                   conv_grad_bias);
}

at::Tensor conv1d_cuda(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                       c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                       const std::string& algo) {
  return conv1d_via_conv2d(conv2d_cuda, input, weight, bias, stride, padding, dilation, groups, algo);
}

ConvGrads conv1d_backward_cuda(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
                               c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                               int64_t groups, std::array<bool, 3> output_mask, const std::string& algo) {
  return conv1d_backward_via_conv2d(conv2d_backward_cuda, grad_output, input, weight, stride, padding, dilation,
                                    groups, output_mask, algo);
}

int64_t conv2d_workspace_bytes_cuda(const at::Tensor& input, const at::Tensor& weight, c10::IntArrayRef stride,
                                    c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                                    const std::string& algo) {
  const char* op = "conv2d_workspace_bytes";
  const ConvGeometry g = check_conv(op, 2, input, weight, std::nullopt, stride, padding, dilation, groups);
  if (g.is_empty()) return 0;
  // The most scratch memory any one pass allocates ("auto" may pick a different algorithm per pass).
  // Direct needs some only for grad_weight (its partial sums).
  int64_t bytes = 0;
  for (const ConvPass pass : {ConvPass::Forward, ConvPass::BackwardInput, ConvPass::BackwardWeight}) {
    const ConvAlgo which = parse_conv_algo(op, algo, g, pass, /*on_cuda=*/true);
    if (which == ConvAlgo::Im2col) {
      bytes = std::max(bytes, im2col_workspace_bytes(g, input.element_size()));
    } else if (pass == ConvPass::BackwardWeight) {
      bytes = std::max(bytes, direct_backward_workspace_bytes(g, input.scalar_type()));
    }
  }
  return bytes;
}

}  // namespace

at::Tensor conv_grad_bias(const at::Tensor& grad_output) {
  const int64_t batch = grad_output.size(0), channels = grad_output.size(1);
  const int64_t plane = grad_output.numel() / std::max<int64_t>(1, batch * channels);
  at::Tensor grad_bias = at::empty({channels}, grad_output.options());
  FASTCONV_DISPATCH_FLOAT_TYPES(grad_output.scalar_type(), "conv_grad_bias_cuda", [&] {
    launch_kernel(channel_sum_kernel<scalar_t>, grid_for_blocks(channels), kThreads, 0,
                  grad_output.const_data_ptr<scalar_t>(), grad_bias.mutable_data_ptr<scalar_t>(), batch, channels,
                  plane);
  });
  return grad_bias;
}

TORCH_LIBRARY_IMPL(fastconv, FASTCONV_CUDA_DISPATCH_KEY, m) {
  m.impl("conv1d", &conv1d_cuda);
  m.impl("conv1d_backward", &conv1d_backward_cuda);
  m.impl("conv2d", &conv2d_cuda);
  m.impl("conv2d_backward", &conv2d_backward_cuda);
  m.impl("conv2d_workspace_bytes", &conv2d_workspace_bytes_cuda);
}

}  // namespace fastconv::cuda

"""Fake (meta) kernels for every fastconv operator: output shapes for torch.compile and meta tensors.

The compiled module fastconv._C registers the schemas (csrc/ops.cpp), the CPU/CUDA kernels and the
autograd of every op (csrc/autograd.cpp: each forward op calls its separate backward op; the backward
ops are not differentiable again).
"""
import torch

from ._shapes import conv_output_size, pooling_output_size

ops = torch.ops.fastconv


def _unused_grad(like):
    return like.new_empty((0,))


# ----------------------------------------------------------------------------------------------
# Convolution
# ----------------------------------------------------------------------------------------------


def _conv_fake(spatial_dims):
    def fake(input, weight, bias, stride, padding, dilation, groups, algo):
        torch._check(input.dim() == spatial_dims + 2, lambda: f"expected a {spatial_dims + 2}-D input")
        # torch's shape: a zero-channel input gives a zero-channel output (csrc/common/shapes.h).
        sizes = [input.shape[0], 0 if input.shape[1] == 0 else weight.shape[0]]
        for d in range(spatial_dims):
            sizes.append(conv_output_size(input.shape[2 + d], weight.shape[2 + d], stride[d], padding[d], dilation[d]))
        return input.new_empty(sizes)

    return fake


def _conv_backward_fake(grad_output, input, weight, stride, padding, dilation, groups, output_mask, algo):
    grad_input = input.new_empty(input.shape) if output_mask[0] else _unused_grad(input)
    grad_weight = weight.new_empty(weight.shape) if output_mask[1] else _unused_grad(input)
    grad_bias = weight.new_empty((weight.shape[0],)) if output_mask[2] else _unused_grad(input)
    return grad_input, grad_weight, grad_bias


for _dims, _fwd, _bwd in ((1, "conv1d", "conv1d_backward"), (2, "conv2d", "conv2d_backward")):
    torch.library.register_fake(f"fastconv::{_fwd}")(_conv_fake(_dims))
    torch.library.register_fake(f"fastconv::{_bwd}")(_conv_backward_fake)


@torch.library.register_fake("fastconv::conv2d_workspace_bytes")
def _conv2d_workspace_bytes_fake(input, weight, stride, padding, dilation, groups, algo):
    raise RuntimeError("fastconv::conv2d_workspace_bytes needs real tensors (it is a query, not a traced op)")


# ----------------------------------------------------------------------------------------------
# Pooling (over the last two dims; 1-D pooling is called with a height of 1)
# ----------------------------------------------------------------------------------------------


def _pooled_shape(input, out_h, out_w):
    return tuple(input.shape[:-2]) + (out_h, out_w)


@torch.library.register_fake("fastconv::max_pool2d")
def _max_pool2d_fake(input, kernel_size, stride, padding, dilation, ceil_mode):
    out_h = pooling_output_size(input.shape[-2], kernel_size[0], padding[0], stride[0], dilation[0], ceil_mode)
    out_w = pooling_output_size(input.shape[-1], kernel_size[1], padding[1], stride[1], dilation[1], ceil_mode)
    shape = _pooled_shape(input, out_h, out_w)
    return input.new_empty(shape), input.new_empty(shape, dtype=torch.int64)


@torch.library.register_fake("fastconv::max_pool2d_values")
def _max_pool2d_values_fake(input, kernel_size, stride, padding, dilation, ceil_mode):
    return _max_pool2d_fake(input, kernel_size, stride, padding, dilation, ceil_mode)[0]


@torch.library.register_fake("fastconv::max_pool2d_backward")
def _max_pool2d_backward_fake(grad_output, input, indices, kernel_size, stride, padding, dilation, ceil_mode):
    return input.new_empty(input.shape)


@torch.library.register_fake("fastconv::avg_pool2d")
def _avg_pool2d_fake(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    out_h = pooling_output_size(input.shape[-2], kernel_size[0], padding[0], stride[0], 1, ceil_mode)
    out_w = pooling_output_size(input.shape[-1], kernel_size[1], padding[1], stride[1], 1, ceil_mode)
    return input.new_empty(_pooled_shape(input, out_h, out_w))


@torch.library.register_fake("fastconv::avg_pool2d_backward")
def _avg_pool2d_backward_fake(grad_output, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                              divisor_override):
    return input.new_empty(input.shape)


@torch.library.register_fake("fastconv::adaptive_avg_pool2d")
def _adaptive_avg_pool2d_fake(input, output_size):
    return input.new_empty(_pooled_shape(input, output_size[0], output_size[1]))


@torch.library.register_fake("fastconv::adaptive_avg_pool2d_backward")
def _adaptive_avg_pool2d_backward_fake(grad_output, input):
    return input.new_empty(input.shape)


@torch.library.register_fake("fastconv::adaptive_max_pool2d")
def _adaptive_max_pool2d_fake(input, output_size):
    shape = _pooled_shape(input, output_size[0], output_size[1])
    return input.new_empty(shape), input.new_empty(shape, dtype=torch.int64)


@torch.library.register_fake("fastconv::adaptive_max_pool2d_backward")
def _adaptive_max_pool2d_backward_fake(grad_output, input, indices):
    return input.new_empty(input.shape)

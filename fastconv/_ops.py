"""Fake (meta) kernels for every fastconv operator: output shapes for torch.compile and meta tensors.

The compiled module fastconv._C registers the schemas (csrc/ops.cpp), the CPU/CUDA kernels and the
autograd of every op (csrc/autograd.cpp: each forward op calls its separate backward op; the backward
ops are not differentiable again).
"""
import torch
from torch._prims_common import suggest_memory_format

from ._shapes import conv_output_size, pooling_output_size

ops = torch.ops.fastconv


def _unused_grad(like):
    return like.new_empty((0,))


def _empty(like, shape, channels_last, dtype=None):
    """An empty tensor like `like`, in the channels-last format or contiguous."""
    format = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(shape, dtype=dtype or like.dtype, device=like.device, memory_format=format)


def _channels_last(t):
    """Whether a 4-D tensor suggests the channels-last format (as the compiled ops decide)."""
    return t.dim() == 4 and suggest_memory_format(t) == torch.channels_last


def _conv2d_channels_last(input, weight):
    """The format of a 2-D convolution's output and gradients (csrc/common/conv_adapters.h)."""
    if input.device.type == "cuda" and input.dtype == torch.float64:
        return False  # torch's CUDA convolutions keep float64 contiguous
    return input.dim() == 4 and weight.dim() == 4 and (_channels_last(input) or _channels_last(weight))


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
        # An empty problem (no image or no input channel) gives a contiguous output.
        nonempty = input.shape[0] != 0 and input.shape[1] != 0
        return _empty(input, sizes, spatial_dims == 2 and nonempty and _conv2d_channels_last(input, weight))

    return fake


def _conv_backward_fake(grad_output, input, weight, stride, padding, dilation, groups, output_mask, algo):
    channels_last = _conv2d_channels_last(input, weight)
    grad_input = _empty(input, input.shape, channels_last) if output_mask[0] else _unused_grad(input)
    grad_weight = _empty(weight, weight.shape, channels_last) if output_mask[1] else _unused_grad(input)
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


def _pooled(input, out_h, out_w, dtype=None):
    """An empty pooling output: the input's leading dims, (out_h, out_w), the input's format."""
    return _empty(input, tuple(input.shape[:-2]) + (out_h, out_w), _channels_last(input), dtype)


@torch.library.register_fake("fastconv::max_pool2d")
def _max_pool2d_fake(input, kernel_size, stride, padding, dilation, ceil_mode):
    out_h = pooling_output_size(input.shape[-2], kernel_size[0], padding[0], stride[0], dilation[0], ceil_mode)
    out_w = pooling_output_size(input.shape[-1], kernel_size[1], padding[1], stride[1], dilation[1], ceil_mode)
    return _pooled(input, out_h, out_w), _pooled(input, out_h, out_w, torch.int64)


@torch.library.register_fake("fastconv::max_pool2d_values")
def _max_pool2d_values_fake(input, kernel_size, stride, padding, dilation, ceil_mode):
    return _max_pool2d_fake(input, kernel_size, stride, padding, dilation, ceil_mode)[0]


@torch.library.register_fake("fastconv::max_pool2d_backward")
def _max_pool2d_backward_fake(grad_output, input, indices, kernel_size, stride, padding, dilation, ceil_mode):
    return _empty(input, input.shape, _channels_last(input))


@torch.library.register_fake("fastconv::avg_pool2d")
def _avg_pool2d_fake(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    out_h = pooling_output_size(input.shape[-2], kernel_size[0], padding[0], stride[0], 1, ceil_mode)
    out_w = pooling_output_size(input.shape[-1], kernel_size[1], padding[1], stride[1], 1, ceil_mode)
    return _pooled(input, out_h, out_w)


@torch.library.register_fake("fastconv::avg_pool2d_backward")
def _avg_pool2d_backward_fake(grad_output, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                              divisor_override):
    return _empty(input, input.shape, _channels_last(input))


@torch.library.register_fake("fastconv::adaptive_avg_pool2d")
def _adaptive_avg_pool2d_fake(input, output_size):
    return _pooled(input, output_size[0], output_size[1])


@torch.library.register_fake("fastconv::adaptive_avg_pool2d_backward")
def _adaptive_avg_pool2d_backward_fake(grad_output, input):
    return _empty(input, input.shape, _channels_last(input))


@torch.library.register_fake("fastconv::adaptive_max_pool2d")
def _adaptive_max_pool2d_fake(input, output_size):
    return _pooled(input, output_size[0], output_size[1]), _pooled(input, output_size[0], output_size[1], torch.int64)


@torch.library.register_fake("fastconv::adaptive_max_pool2d_backward")
def _adaptive_max_pool2d_backward_fake(grad_output, input, indices):
    return _empty(input, input.shape, _channels_last(input))

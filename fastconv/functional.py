"""torch.nn.functional-compatible convolution and pooling backed by fastconv's kernels.

Signatures and defaults match torch.nn.functional; convolutions take one extra keyword-only
argument, ``algo``. Argument normalisation (ints to tuples, string padding, unbatched inputs, 1-D
pooling as 2-D with a height of 1) happens here; the compiled ops see only canonical arguments.
"""
import torch
import torch.nn.functional as F

from . import _ops  # noqa: F401  (registers fake kernels and autograd)
from ._loader import check_device_supported

__all__ = [
    "conv1d", "conv2d", "choose_conv_algo",
    "max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_max_pool1d", "adaptive_max_pool2d",
    "CONV_ALGOS",
]

CONV_ALGOS = ("auto", "im2col", "direct")
_ops_ns = torch.ops.fastconv


# ----------------------------------------------------------------------------------------------
# Convolution
# ----------------------------------------------------------------------------------------------


def _conv_param(value, name, spatial_dims):
    """An int or a sequence of spatial_dims ints, as a list (torch's rule and message)."""
    if isinstance(value, int):
        return [value] * spatial_dims
    values = list(value)
    if len(values) == 1:
        return values * spatial_dims
    if len(values) != spatial_dims:
        raise RuntimeError(
            f"expected {name} to be a single integer value or a list of {spatial_dims} values to match the "
            f"convolution dimensions, but got {name}={values}"
        )
    return [int(v) for v in values]


def choose_conv_algo(in_channels, out_channels, kernel_size, groups):
    """The rule behind algo="auto".

    Depthwise and narrow grouped convolutions (at most 8 input channels per group) go to ``direct``:
    their per-group matrix products are too thin for GEMM to pay for the column buffer. Everything
    else goes to ``im2col``, whose matrix product does the heavy lifting for dense layers.
    """
    del out_channels, kernel_size
    if groups > 1 and in_channels // groups <= 8:
        return "direct"
    return "im2col"


def _conv(spatial_dims, name, input, weight, bias, stride, padding, dilation, groups, algo):
    if algo not in CONV_ALGOS:
        raise ValueError(f"{name}: algo must be one of {CONV_ALGOS}, got {algo!r}")
    if not isinstance(input, torch.Tensor) or not isinstance(weight, torch.Tensor):
        raise TypeError(f"{name}: input and weight must be tensors")
    batched_dims = spatial_dims + 2
    if input.dim() not in (batched_dims - 1, batched_dims):
        raise RuntimeError(
            f"Expected {batched_dims - 1}D (unbatched) or {batched_dims}D (batched) input to {name}, "
            f"but got input of size: {list(input.shape)}"
        )
    check_device_supported(name, input)
    unbatched = input.dim() == batched_dims - 1
    if unbatched:
        input = input.unsqueeze(0)
    stride = _conv_param(stride, "stride", spatial_dims)
    dilation = _conv_param(dilation, "dilation", spatial_dims)
    if isinstance(padding, str):
        if padding == "valid":
            padding = [0] * spatial_dims
        elif padding == "same":
            if any(s != 1 for s in stride):
                raise RuntimeError("padding='same' is not supported for strided convolutions")
            if weight.dim() != batched_dims:
                raise RuntimeError(f"{name}: expected a {batched_dims}-D weight, got weight of size {list(weight.shape)}")
            # Total padding dilation * (k - 1): the smaller half on each side, the odd element (even
            # kernels) on the right/bottom, exactly as torch pads for 'same'.
            total = [dilation[d] * (weight.shape[2 + d] - 1) for d in range(spatial_dims)]
            padding = [t // 2 for t in total]
            extra = [t - 2 * (t // 2) for t in total]
            if any(extra):
                pad_arg = []
                for d in reversed(range(spatial_dims)):
                    pad_arg += [0, extra[d]]
                input = F.pad(input, pad_arg)
        else:
            raise RuntimeError(f"Invalid padding string: '{padding}'")
    else:
        padding = _conv_param(padding, "padding", spatial_dims)
    op = _ops_ns.conv1d if spatial_dims == 1 else _ops_ns.conv2d
    out = op(input, weight, bias, stride, padding, dilation, groups, algo)
    return out.squeeze(0) if unbatched else out


def conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, algo="auto"):
    """fastconv's torch.nn.functional.conv1d; ``algo`` is "auto", "im2col" or "direct"."""
    return _conv(1, "conv1d", input, weight, bias, stride, padding, dilation, groups, algo)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, algo="auto"):
    """fastconv's torch.nn.functional.conv2d; ``algo`` is "auto", "im2col" or "direct"."""
    return _conv(2, "conv2d", input, weight, bias, stride, padding, dilation, groups, algo)


# ----------------------------------------------------------------------------------------------
# Pooling
# ----------------------------------------------------------------------------------------------


def _pool_param(value, name, op, spatial_dims, default=None):
    """An int or a tuple of 1 or spatial_dims ints, as a list; None (or empty) gives default."""
    if value is None or (isinstance(value, (tuple, list)) and len(value) == 0):
        if default is None:
            raise RuntimeError(f"{op}: {name} must be given")
        return list(default)
    if isinstance(value, int):
        return [value] * spatial_dims
    values = [int(v) for v in value]
    if len(values) == 1:
        return values * spatial_dims
    if len(values) != spatial_dims:
        raise RuntimeError(f"{op}: {name} must either be a single int, or a tuple of {spatial_dims} ints")
    return values


def _check_pool_input(op, input, spatial_dims):
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"{op}: input must be a tensor")
    ok = (spatial_dims + 1, spatial_dims + 2)
    if input.dim() not in ok:
        raise RuntimeError(
            f"{op}: Expected {ok[0]}D or {ok[1]}D (batch mode) tensor for input, but got input of size: {list(input.shape)}"
        )
    check_device_supported(op, input)


def _as_2d(input, spatial_dims):
    """1-D pooling runs as 2-D pooling over a height of 1."""
    return input.unsqueeze(-2) if spatial_dims == 1 else input


def _from_2d(t, spatial_dims):
    return t.squeeze(-2) if spatial_dims == 1 else t


def _expand_1d(values):
    return [1] + values


def _max_pool(spatial_dims, op, input, kernel_size, stride, padding, dilation, ceil_mode, return_indices):
    _check_pool_input(op, input, spatial_dims)
    kernel = _pool_param(kernel_size, "kernel_size", op, spatial_dims)
    stride = _pool_param(stride, "stride", op, spatial_dims, default=kernel)
    padding = _pool_param(padding, "padding", op, spatial_dims)
    dilation = _pool_param(dilation, "dilation", op, spatial_dims)
    if spatial_dims == 1:
        kernel, stride, padding, dilation = map(_expand_1d, (kernel, stride, padding, dilation))
        padding[0] = 0
    out, indices = _ops_ns.max_pool2d(_as_2d(input, spatial_dims), kernel, stride, padding, dilation, bool(ceil_mode))
    out, indices = _from_2d(out, spatial_dims), _from_2d(indices, spatial_dims)
    return (out, indices) if return_indices else out


def max_pool1d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """fastconv's torch.nn.functional.max_pool1d."""
    return _max_pool(1, "max_pool1d", input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """fastconv's torch.nn.functional.max_pool2d."""
    return _max_pool(2, "max_pool2d", input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def _avg_pool(spatial_dims, op, input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    _check_pool_input(op, input, spatial_dims)
    kernel = _pool_param(kernel_size, "kernel_size", op, spatial_dims)
    stride = _pool_param(stride, "stride", op, spatial_dims, default=kernel)
    padding = _pool_param(padding, "padding", op, spatial_dims)
    if spatial_dims == 1:
        kernel, stride, padding = map(_expand_1d, (kernel, stride, padding))
        padding[0] = 0
    if divisor_override is not None and divisor_override == 0:
        raise RuntimeError(f"{op}: divisor must be not zero")
    out = _ops_ns.avg_pool2d(
        _as_2d(input, spatial_dims), kernel, stride, padding, bool(ceil_mode), bool(count_include_pad), divisor_override
    )
    return _from_2d(out, spatial_dims)


def avg_pool1d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    """fastconv's torch.nn.functional.avg_pool1d."""
    return _avg_pool(1, "avg_pool1d", input, kernel_size, stride, padding, ceil_mode, count_include_pad, None)


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """fastconv's torch.nn.functional.avg_pool2d."""
    return _avg_pool(2, "avg_pool2d", input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override)


def _adaptive_output_size(op, input, output_size, spatial_dims):
    """Normalises output_size; None entries keep the input's size along that dim (torch's rule)."""
    if isinstance(output_size, int) or output_size is None:
        sizes = [output_size] * spatial_dims
    else:
        sizes = list(output_size)
        if len(sizes) != spatial_dims:
            raise ValueError(f"{op}: output_size must be an int or a tuple of {spatial_dims} values, got {output_size}")
    in_sizes = list(input.shape[-spatial_dims:])
    return [in_sizes[d] if sizes[d] is None else int(sizes[d]) for d in range(spatial_dims)]


def _adaptive_pool(spatial_dims, op, input, output_size, max_pool, return_indices):
    _check_pool_input(op, input, spatial_dims)
    size = _adaptive_output_size(op, input, output_size, spatial_dims)
    if spatial_dims == 1:
        size = [1] + size
    x = _as_2d(input, spatial_dims)
    if max_pool:
        out, indices = _ops_ns.adaptive_max_pool2d(x, size)
        out, indices = _from_2d(out, spatial_dims), _from_2d(indices, spatial_dims)
        return (out, indices) if return_indices else out
    return _from_2d(_ops_ns.adaptive_avg_pool2d(x, size), spatial_dims)


def adaptive_avg_pool1d(input, output_size):
    """fastconv's torch.nn.functional.adaptive_avg_pool1d."""
    return _adaptive_pool(1, "adaptive_avg_pool1d", input, output_size, False, False)


def adaptive_avg_pool2d(input, output_size):
    """fastconv's torch.nn.functional.adaptive_avg_pool2d."""
    return _adaptive_pool(2, "adaptive_avg_pool2d", input, output_size, False, False)


def adaptive_max_pool1d(input, output_size, return_indices=False):
    """fastconv's torch.nn.functional.adaptive_max_pool1d."""
    return _adaptive_pool(1, "adaptive_max_pool1d", input, output_size, True, return_indices)


def adaptive_max_pool2d(input, output_size, return_indices=False):
    """fastconv's torch.nn.functional.adaptive_max_pool2d."""
    return _adaptive_pool(2, "adaptive_max_pool2d", input, output_size, True, return_indices)

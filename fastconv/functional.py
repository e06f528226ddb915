"""torch.nn.functional-compatible convolution and pooling backed by fastconv's kernels.

Signatures and defaults match torch.nn.functional; convolutions take one extra keyword-only
argument, ``algo``. Argument normalisation (ints to tuples, string padding, unbatched inputs, 1-D
pooling as 2-D with a height of 1) happens here; the compiled ops see only canonical arguments.
"""
import operator

import torch
import torch.nn.functional as F

from . import _ops  # noqa: F401  (registers fake kernels and autograd)
from ._loader import check_device_supported

__all__ = [
    "conv1d", "conv2d",
    "max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_max_pool1d", "adaptive_max_pool2d",
    "CONV_ALGOS",
]

CONV_ALGOS = ("auto", "im2col", "direct")
_ops_ns = torch.ops.fastconv


# ----------------------------------------------------------------------------------------------
# Convolution
# ----------------------------------------------------------------------------------------------


def _is_int(value, allow_bool=False):
    """What torch's argument parser takes as an int: Python and numpy integers and integer 0-d tensors,
    not floats or strings, and not bools (except after the first entry of a list, which torch unpacks
    as ints)."""
    if isinstance(value, bool):
        return allow_bool
    if isinstance(value, torch.Tensor):
        return value.dim() == 0 and not value.is_floating_point() and not value.is_complex() and value.dtype != torch.bool
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def _check_int64(name, op, value, in_list):
    """torch raises ValueError for an int64 overflow of a scalar argument, TypeError inside a list."""
    if not -(2**63) <= int(value) < 2**63:
        if in_list:
            raise TypeError(f"{op}(): argument '{name}' failed to unpack the object: Overflow when unpacking long long")
        raise ValueError(f"{op}(): argument '{name}': Overflow when unpacking long long")


def _check_int_args(op, ints=(), int_lists=()):
    """Type checks in the order torch's argument parser makes them, before any value is looked at:
    TypeError for an argument of the wrong type, as torch.nn.functional raises."""
    for name, value in int_lists:
        if isinstance(value, (tuple, list)):
            if not all(_is_int(v, allow_bool=i > 0) for i, v in enumerate(value)):
                raise TypeError(f"{op}(): argument '{name}' must be a tuple of ints, but got {value!r}")
            for v in value:
                _check_int64(name, op, v, True)
        elif _is_int(value):
            _check_int64(name, op, value, False)
        else:
            raise TypeError(f"{op}(): argument '{name}' must be an int or a tuple of ints, not {type(value).__name__}")
    for name, value in ints:
        if not _is_int(value):
            raise TypeError(f"{op}(): argument '{name}' must be int, not {type(value).__name__}")
        _check_int64(name, op, value, False)


def _conv_param(value, name, spatial_dims):
    """An int or a sequence of spatial_dims ints, as a list (torch's rule and message)."""
    if _is_int(value):
        return [int(value)] * spatial_dims
    values = [int(v) for v in value]
    if len(values) == 1:
        return values * spatial_dims
    if len(values) != spatial_dims:
        raise RuntimeError(
            f"expected {name} to be a single integer value or a list of {spatial_dims} values to match the "
            f"convolution dimensions, but got {name}={values}"
        )
    return [int(v) for v in values]


def _conv(spatial_dims, name, input, weight, bias, stride, padding, dilation, groups, algo):
    if algo not in CONV_ALGOS:
        raise ValueError(f"{name}: algo must be one of {CONV_ALGOS}, got {algo!r}")
    if not isinstance(input, torch.Tensor) or not isinstance(weight, torch.Tensor):
        raise TypeError(f"{name}: input and weight must be tensors")
    if bias is not None and not isinstance(bias, torch.Tensor):
        raise TypeError(f"{name}: bias must be a tensor or None, not {type(bias).__name__}")
    int_lists = [("stride", stride), ("dilation", dilation)]
    if not isinstance(padding, str):
        int_lists.append(("padding", padding))
    _check_int_args(name, ints=[("groups", groups)], int_lists=int_lists)
    groups = int(groups)
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
            # kernels) on the right/bottom, exactly as torch pads for 'same'. torch halves with C++
            # division (towards zero): for an empty kernel (total -1) it crops the input's left edge.
            total = [dilation[d] * (weight.shape[2 + d] - 1) for d in range(spatial_dims)]
            padding = [t // 2 if t >= 0 else -(-t // 2) for t in total]
            extra = [t - 2 * p for t, p in zip(total, padding)]
            if any(extra):
                pad_arg = []
                for d in reversed(range(spatial_dims)):
                    pad_arg += [0, extra[d]] if extra[d] > 0 else [extra[d], 0]
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
# The compiled pooling ops work on the last two dims of a (C, H, W) or (N, C, H, W) tensor; 1-D
# pooling runs as 2-D pooling over a height of 1. Checks that only the Python API can make (argument
# types, list lengths, 1-D wording, the input's rank) happen here, with torch's exception classes.


def _pool_int(value, name, op, allow_bool=False):
    """One integer argument; like torch, floats, strings and bools are a TypeError (except bools after
    the first entry of a list, which torch's parser unpacks as ints)."""
    if isinstance(value, bool) and allow_bool:
        return int(value)
    if isinstance(value, bool):
        raise TypeError(f"{op}(): argument '{name}' must be an int or a tuple of ints, not {type(value).__name__}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(
            f"{op}(): argument '{name}' must be an int or a tuple of ints, not {type(value).__name__}"
        ) from None


def _pool_param(value, name, op, spatial_dims, default=None):
    """An int or a sequence of 1 or spatial_dims ints, as a list; None or () gives `default` (stride)."""
    if value is None or (isinstance(value, (tuple, list)) and len(value) == 0 and default is not None):
        if default is None:
            raise TypeError(f"{op}(): argument '{name}' must be an int or a tuple of ints, not NoneType")
        return list(default)
    if not isinstance(value, (tuple, list, torch.Size)):
        return [_pool_int(value, name, op)] * spatial_dims
    values = [_pool_int(v, name, op, allow_bool=i > 0) for i, v in enumerate(value)]
    if len(values) == 1:
        return values * spatial_dims
    if len(values) != spatial_dims:
        expected = "a single int" if spatial_dims == 1 else f"a single int or a tuple of {spatial_dims} ints"
        raise RuntimeError(f"{op}(): {name} must be {expected}, but got {name}={tuple(values)}")
    return values


def _check_pool_types(op, **params):
    """TypeError for a wrongly typed argument before any length or value is looked at (torch's argument
    parser matches every argument's type first). stride may be None (its default)."""
    for name, value in params.items():
        if value is None and name == "stride":
            continue
        for i, v in enumerate(value if isinstance(value, (tuple, list, torch.Size)) else (value,)):
            _pool_int(v, name, op, allow_bool=i > 0)


def _pool_flag(value, name, op):
    if not isinstance(value, bool):
        raise TypeError(f"{op}(): argument '{name}' must be bool, not {type(value).__name__}")
    return value


def _check_pool_input(op, input, spatial_dims, index_error_below=False):
    """The input must be a tensor of spatial_dims + 1 (unbatched) or spatial_dims + 2 (batched) dims."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"{op}(): argument 'input' must be Tensor, not {type(input).__name__}")
    ok = (spatial_dims + 1, spatial_dims + 2)
    if input.dim() not in ok:
        message = (
            f"{op}(): expected a {ok[0]}-D (unbatched) or {ok[1]}-D (batched) input, but got input of size "
            f"{list(input.shape)}"
        )
        # torch's avg_pool2d indexes dim -3 before checking the rank, so a smaller input is an IndexError.
        raise (IndexError if index_error_below and input.dim() < ok[0] else RuntimeError)(message)
    check_device_supported(op, input)


def _check_window_1d(op, kernel, stride, padding, dilation):
    """1-D argument checks here, so that messages speak of the 1-D op; the 2-D op checks the rest."""
    (k,), (s,), (p,), (d,) = kernel, stride, padding, dilation
    if k <= 0:
        raise RuntimeError(f"{op}(): kernel_size must be greater than zero, but got kernel_size={k}")
    if s <= 0:
        raise RuntimeError(f"{op}(): stride must be greater than zero, but got stride={s}")
    if d <= 0:
        raise RuntimeError(f"{op}(): dilation must be greater than zero, but got dilation={d}")
    if p < 0:
        raise RuntimeError(f"{op}(): padding must be non-negative, but got padding={p}")
    if p > k // 2:
        raise RuntimeError(f"{op}(): padding should be at most half of kernel size, but got padding={p} and kernel_size={k}")


def _as_2d(input, spatial_dims):
    """1-D pooling runs as 2-D pooling over a height of 1."""
    return input.unsqueeze(-2) if spatial_dims == 1 else input


def _from_2d(t, spatial_dims):
    return t.squeeze(-2) if spatial_dims == 1 else t


def _max_pool(spatial_dims, op, input, kernel_size, stride, padding, dilation, ceil_mode, return_indices):
    # Argument types first, then lengths, then the input's rank: torch's argument parser runs first.
    _check_pool_types(op, kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation)
    kernel = _pool_param(kernel_size, "kernel_size", op, spatial_dims)
    stride = _pool_param(stride, "stride", op, spatial_dims, default=kernel)
    padding = _pool_param(padding, "padding", op, spatial_dims)
    dilation = _pool_param(dilation, "dilation", op, spatial_dims)
    ceil_mode = _pool_flag(ceil_mode, "ceil_mode", op)
    _check_pool_input(op, input, spatial_dims)
    if spatial_dims == 1:
        _check_window_1d(op, kernel, stride, padding, dilation)
        kernel, stride, padding, dilation = [1] + kernel, [1] + stride, [0] + padding, [1] + dilation
    out, indices = _ops_ns.max_pool2d(_as_2d(input, spatial_dims), kernel, stride, padding, dilation, ceil_mode)
    out, indices = _from_2d(out, spatial_dims), _from_2d(indices, spatial_dims)
    return (out, indices) if return_indices else out


def max_pool1d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """fastconv's torch.nn.functional.max_pool1d."""
    return _max_pool(1, "max_pool1d", input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """fastconv's torch.nn.functional.max_pool2d."""
    return _max_pool(2, "max_pool2d", input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def _avg_pool(spatial_dims, op, input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    # Argument types first, then lengths, then the input's rank: torch's argument parser runs first.
    _check_pool_types(op, kernel_size=kernel_size, stride=stride, padding=padding)
    kernel = _pool_param(kernel_size, "kernel_size", op, spatial_dims)
    stride = _pool_param(stride, "stride", op, spatial_dims, default=kernel)
    padding = _pool_param(padding, "padding", op, spatial_dims)
    ceil_mode = _pool_flag(ceil_mode, "ceil_mode", op)
    count_include_pad = _pool_flag(count_include_pad, "count_include_pad", op)
    if divisor_override is not None:
        divisor_override = _pool_int(divisor_override, "divisor_override", op)
    _check_pool_input(op, input, spatial_dims, index_error_below=spatial_dims == 2)
    if divisor_override == 0:
        raise RuntimeError(f"{op}(): divisor_override must be non-zero, but got divisor_override=0")
    if spatial_dims == 1:
        _check_window_1d(op, kernel, stride, padding, [1])
        kernel, stride, padding = [1] + kernel, [1] + stride, [0] + padding
    out = _ops_ns.avg_pool2d(
        _as_2d(input, spatial_dims), kernel, stride, padding, ceil_mode, count_include_pad, divisor_override
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
    """output_size as a list of ints. In 2-D a None entry keeps the input's size along that dim; 1-D
    takes ints only (torch's rules). Entry types are checked before the length, as torch does."""
    if output_size is None:
        raise TypeError(f"{op}(): argument 'output_size' must be an int or a tuple of ints, not NoneType")
    if not isinstance(output_size, (tuple, list, torch.Size)):
        return [_pool_int(output_size, "output_size", op)] * spatial_dims
    sizes = list(output_size)
    if spatial_dims == 2 and sizes:
        # torch.nn.functional fills None entries from the input's trailing sizes first.
        sizes = [d if v is None else v for v, d in zip(sizes, input.shape[-len(sizes):])]
    sizes = [_pool_int(v, "output_size", op, allow_bool=i > 0) for i, v in enumerate(sizes)]
    if len(sizes) != spatial_dims:
        raise RuntimeError(
            f"{op}(): output_size must be an int or a tuple of {spatial_dims} value(s), but got output_size={output_size}"
        )
    return sizes


def _adaptive_pool(spatial_dims, op, input, output_size, max_pool, return_indices):
    is_tensor = isinstance(input, torch.Tensor)
    if spatial_dims == 2 and is_tensor and isinstance(output_size, (tuple, list)) and input.dim() <= len(output_size):
        # torch.nn.functional's own check (a ValueError), made before the op sees the input.
        raise ValueError(f"{op}(): input dimension should be at least {len(output_size) + 1}, but got input of "
                         f"size {list(input.shape)}")
    if not max_pool and spatial_dims == 2 and is_tensor and input.dim() not in (3, 4):
        # torch averages to 1 x 1 with a plain mean over the last two dims, whatever the rank.
        if _adaptive_output_size(op, input, output_size, spatial_dims) == [1, 1]:
            return input.mean((-1, -2), keepdim=True)
    if not is_tensor:
        raise TypeError(f"{op}(): argument 'input' must be Tensor, not {type(input).__name__}")
    size = _adaptive_output_size(op, input, output_size, spatial_dims)  # types before the input's rank
    _check_pool_input(op, input, spatial_dims)
    if not max_pool and size == [1] * spatial_dims and 0 in input.shape[-spatial_dims:]:
        # ... and so of an empty plane, whose mean is NaN (the kernels reject empty planes).
        return _from_2d(_as_2d(input, spatial_dims).mean((-1, -2), keepdim=True), spatial_dims)
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

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
    # Decided by type, not by trying operator.index: some torch.compile versions turn the TypeError
    # raised on a tuple into an internal error instead of tracing the except branch.
    if isinstance(value, int):
        return True
    if value is None or isinstance(value, (tuple, list, str, bytes, float, complex)):
        return False
    return hasattr(type(value), "__index__")


def _check_int64(name, op, value, in_list):
    """torch raises ValueError for an int64 overflow of a scalar argument, TypeError inside a list."""
    if not -(2**63) <= int(value) < 2**63:
        if in_list:
            raise TypeError(f"{op}(): argument '{name}' failed to unpack the object: Overflow when unpacking long long")
        raise ValueError(f"{op}(): argument '{name}': Overflow when unpacking long long")


def _plain_ints(value):
    """A Python int, or a tuple or list of them, within int64: what layers pass, checked cheaply."""
    if type(value) is int:
        return -(2**63) <= value < 2**63
    return type(value) in (tuple, list) and all(type(v) is int and -(2**63) <= v < 2**63 for v in value)


def _check_int_args(op, ints=(), int_lists=()):
    """Type checks in the order torch's argument parser makes them, before any value is looked at:
    TypeError for an argument of the wrong type, as torch.nn.functional raises."""
    for name, value in int_lists:
        if _plain_ints(value):
            continue
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
        if type(value) is int and -(2**63) <= value < 2**63:
            continue
        if not _is_int(value):
            raise TypeError(f"{op}(): argument '{name}' must be int, not {type(value).__name__}")
        _check_int64(name, op, value, False)


def _conv_param(value, name, spatial_dims):
    """An int or a sequence of spatial_dims ints, as a list (torch's rule and message)."""
    if type(value) in (tuple, list) and len(value) == spatial_dims and all(type(v) is int for v in value):
        return list(value)
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


def _plain_dims(value, dims):
    """value as a list of `dims` ints where it is a plain int or a tuple or list of `dims` plain ints, all
    within int64 (what layers and most callers pass); None for anything else."""
    if type(value) is int:
        return [value] * dims if -(2**63) <= value < 2**63 else None
    if type(value) in (tuple, list) and len(value) == dims:
        for v in value:
            if type(v) is not int or not -(2**63) <= v < 2**63:
                return None
        return list(value)
    return None


def _conv(spatial_dims, name, input, weight, bias, stride, padding, dilation, groups, algo):
    # The common call: batched CPU tensors and plain int arguments go straight to the op (the op checks
    # their values); everything else takes the full checks and conversions below, with torch's errors.
    if (algo in CONV_ALGOS and type(groups) is int and isinstance(input, torch.Tensor)
            and isinstance(weight, torch.Tensor) and (bias is None or isinstance(bias, torch.Tensor))
            and input.is_cpu and input.dim() == spatial_dims + 2 and -(2**63) <= groups < 2**63):
        stride_dims = _plain_dims(stride, spatial_dims)
        padding_dims = _plain_dims(padding, spatial_dims)
        dilation_dims = _plain_dims(dilation, spatial_dims)
        if stride_dims is not None and padding_dims is not None and dilation_dims is not None:
            op = _ops_ns.conv1d if spatial_dims == 1 else _ops_ns.conv2d
            return op(input, weight, bias, stride_dims, padding_dims, dilation_dims, groups, algo)
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
# pooling runs as 2-D pooling over a height of 1. Checks that only the Python API can make happen
# here, in torch's order and with torch's exception classes: first the type of every argument
# (TypeError, as torch's argument parser raises), then list lengths and the input's rank, then values
# (the compiled ops check the rest with the same rules for every device).


def _pool_int(value, name, op):
    """One integer; like torch, floats, strings, None and bools are a TypeError."""
    if type(value) is int:  # the common case first: a plain int (a bool's type is bool)
        return value
    if not isinstance(value, bool):
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise TypeError(f"{op}(): argument '{name}' must be an int or a tuple of ints, not {type(value).__name__}")


def _seq_int(index, value, name, op):
    """Entry `index` of an int sequence. torch's argument parser type-checks the first entry strictly
    but converts the others like Python ints, so a bool is refused only in first place."""
    if index > 0 and isinstance(value, bool):
        return int(value)
    return _pool_int(value, name, op)


def _pool_ints(value, name, op):
    """An int or a sequence of ints, as a list (lengths are checked later, as torch does)."""
    if isinstance(value, (tuple, list, torch.Size)):
        return [_seq_int(i, v, name, op) for i, v in enumerate(value)]
    return [_pool_int(value, name, op)]


def _check_int32(op, **params):
    """torch's pooling ops take 32-bit ints (but see _max_pool): larger values are a RuntimeError."""
    for name, values in params.items():
        if values and not (-(2**31) <= min(values) and max(values) < 2**31):
            raise RuntimeError(f"{op}(): {name}={tuple(values)} does not fit in a 32-bit int, as torch's pooling requires")


def _pool_flag(value, name, op):
    if not isinstance(value, bool):
        raise TypeError(f"{op}(): argument '{name}' must be bool, not {type(value).__name__}")
    return value


def _per_dim(values, name, op, spatial_dims):
    """1 or spatial_dims values, as spatial_dims values."""
    if len(values) == 1:
        return values * spatial_dims
    if len(values) != spatial_dims:
        expected = "a single int" if spatial_dims == 1 else f"a single int or a tuple of {spatial_dims} ints"
        raise RuntimeError(f"{op}(): {name} must be {expected}, but got {name}={tuple(values)}")
    return values


def _check_tensor(op, input):
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"{op}(): argument 'input' must be Tensor, not {type(input).__name__}")


def _check_pool_input(op, input, spatial_dims, index_error_below=False):
    """The input must have spatial_dims + 1 (unbatched) or spatial_dims + 2 (batched) dims."""
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


def _rows_are_planes(input, spatial_dims):
    """Whether a 1-D pooling input can go to the 2-D op as it is: a contiguous, non-empty (N, C, L) CPU
    tensor read as one (C, H, W) image, N planes of C rows, which a window one row high pools row by row
    exactly as 1-D pooling does (no view made and undone: a call at batch 1 costs about a microsecond
    less; the CUDA kernels keep the height of 1 they were measured with)."""
    return (spatial_dims == 1 and input.dim() == 3 and input.is_cpu and input.numel() > 0
            and input.is_contiguous())


def _window_args(op, spatial_dims, kernel_size, stride, padding, dilation):
    """Types first (all arguments), then lengths; stride None or () means the kernel size."""
    kernel = _pool_ints(kernel_size, "kernel_size", op)
    stride = None if stride is None else _pool_ints(stride, "stride", op)
    padding = _pool_ints(padding, "padding", op)
    dilation = _pool_ints(dilation, "dilation", op)
    return kernel, stride, padding, dilation


def _window_lengths(op, spatial_dims, kernel, stride, padding, dilation):
    kernel = _per_dim(kernel, "kernel_size", op, spatial_dims)
    stride = kernel if not stride else _per_dim(stride, "stride", op, spatial_dims)
    padding = _per_dim(padding, "padding", op, spatial_dims)
    dilation = _per_dim(dilation, "dilation", op, spatial_dims)
    return kernel, stride, padding, dilation


# Pooling windows already checked, as the 2-D lists the compiled ops take, keyed by the call's arguments
# when those are plain ints (not bools or tuples, whose equal keys could hide a type error) and fit 32
# bits: a layer called again skips the checks above (they cost more than the op on a small input).
_WINDOW_CACHE_SIZE = 256
_max_windows = {}
_avg_windows = {}


def _plain_window(*values):
    for v in values:
        if type(v) is not int and v is not None:
            return False
    return True


def _fits_int32(*lists):
    return all(-(2**31) <= v < 2**31 for values in lists for v in values)


def _remember_window(cache, key, window):
    if len(cache) >= _WINDOW_CACHE_SIZE:
        cache.clear()
    cache[key] = window


def _max_pool(spatial_dims, op, input, kernel_size, stride, padding, dilation, ceil_mode, return_indices):
    _check_tensor(op, input)
    needs_grad = input.requires_grad and torch.is_grad_enabled()
    plain = type(ceil_mode) is bool and _plain_window(kernel_size, stride, padding, dilation)
    key = (spatial_dims, kernel_size, stride, padding, dilation, ceil_mode)
    window = _max_windows.get(key) if plain else None
    if window is not None:
        _check_pool_input(op, input, spatial_dims)
        kernel, stride, padding, dilation = window
    else:
        kernel, stride, padding, dilation = _max_window(spatial_dims, op, input, kernel_size, stride, padding, dilation,
                                                        ceil_mode, return_indices, needs_grad)
        if plain and _fits_int32(kernel, stride, padding, dilation):
            _remember_window(_max_windows, key, (kernel, stride, padding, dilation))
    if not return_indices and not needs_grad:
        # Nothing needs the indices: the values alone (torch skips them too). (Indices count along a
        # plane, so with them a 1-D input takes its height of 1.)
        if _rows_are_planes(input, spatial_dims):
            try:
                return _ops_ns.max_pool2d_values(input, kernel, stride, padding, dilation, ceil_mode)
            except RuntimeError:
                pass  # the call below raises it again, its message naming the input's own sizes
        out = _ops_ns.max_pool2d_values(_as_2d(input, spatial_dims), kernel, stride, padding, dilation, ceil_mode)
        return _from_2d(out, spatial_dims)
    out, indices = _ops_ns.max_pool2d(_as_2d(input, spatial_dims), kernel, stride, padding, dilation, ceil_mode)
    out, indices = _from_2d(out, spatial_dims), _from_2d(indices, spatial_dims)
    return (out, indices) if return_indices else out


def _max_window(spatial_dims, op, input, kernel_size, stride, padding, dilation, ceil_mode, return_indices, needs_grad):
    """Every check of a max pooling call, in torch's order; the window as 2-D lists."""
    kernel, stride, padding, dilation = _window_args(op, spatial_dims, kernel_size, stride, padding, dilation)
    _pool_flag(ceil_mode, "ceil_mode", op)
    # torch's max_pool1d takes int64 only on its no-indices path: CPU, no autograd, indices not asked for.
    int64_path = spatial_dims == 1 and not return_indices and input.is_cpu and not needs_grad
    if not int64_path:
        _check_int32(op, kernel_size=kernel, stride=stride or [], padding=padding, dilation=dilation)
    _check_pool_input(op, input, spatial_dims)
    kernel, stride, padding, dilation = _window_lengths(op, spatial_dims, kernel, stride, padding, dilation)
    if spatial_dims == 1:
        _check_window_1d(op, kernel, stride, padding, dilation)
        kernel, stride, padding, dilation = [1] + kernel, [1] + stride, [0] + padding, [1] + dilation
    return kernel, stride, padding, dilation


def max_pool1d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """fastconv's torch.nn.functional.max_pool1d."""
    return _max_pool(1, "max_pool1d", input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """fastconv's torch.nn.functional.max_pool2d."""
    return _max_pool(2, "max_pool2d", input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def _avg_pool(spatial_dims, op, input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    _check_tensor(op, input)
    plain = (type(ceil_mode) is bool and type(count_include_pad) is bool
             and _plain_window(kernel_size, stride, padding, divisor_override))
    key = (spatial_dims, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    window = _avg_windows.get(key) if plain else None
    if window is not None:
        _check_pool_input(op, input, spatial_dims, index_error_below=spatial_dims == 2)
        kernel, stride, padding = window
    else:
        kernel, stride, padding, divisor_override = _avg_window(spatial_dims, op, input, kernel_size, stride, padding,
                                                                ceil_mode, count_include_pad, divisor_override)
        if plain and _fits_int32(kernel, stride, padding):
            _remember_window(_avg_windows, key, (kernel, stride, padding))
    if _rows_are_planes(input, spatial_dims):
        try:
            return _ops_ns.avg_pool2d(input, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)
        except RuntimeError:
            pass  # as in _max_pool
    out = _ops_ns.avg_pool2d(
        _as_2d(input, spatial_dims), kernel, stride, padding, ceil_mode, count_include_pad, divisor_override
    )
    return _from_2d(out, spatial_dims)


def _avg_window(spatial_dims, op, input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    """Every check of an average pooling call, in torch's order; the window as 2-D lists, and the divisor."""
    kernel, stride, padding, _ = _window_args(op, spatial_dims, kernel_size, stride, padding, 1)
    ceil_mode = _pool_flag(ceil_mode, "ceil_mode", op)
    count_include_pad = _pool_flag(count_include_pad, "count_include_pad", op)
    if divisor_override is not None:
        divisor_override = _pool_int(divisor_override, "divisor_override", op)
    if spatial_dims == 1:
        _check_pool_input(op, input, spatial_dims)
    kernel, stride, padding, _ = _window_lengths(op, spatial_dims, kernel, stride, padding, [1])
    _check_int32(op, kernel_size=kernel, stride=stride, padding=padding)
    if divisor_override == 0:
        raise RuntimeError(f"{op}(): divisor_override must be non-zero, but got divisor_override=0")
    if spatial_dims == 2:
        _check_pool_input(op, input, spatial_dims, index_error_below=True)
    else:
        _check_window_1d(op, kernel, stride, padding, [1])
        kernel, stride, padding = [1] + kernel, [1] + stride, [0] + padding
    return kernel, stride, padding, divisor_override


def avg_pool1d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    """fastconv's torch.nn.functional.avg_pool1d."""
    return _avg_pool(1, "avg_pool1d", input, kernel_size, stride, padding, ceil_mode, count_include_pad, None)


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """fastconv's torch.nn.functional.avg_pool2d."""
    return _avg_pool(2, "avg_pool2d", input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override)


def _adaptive_output_size(op, input, output_size, spatial_dims):
    """output_size as a list of ints, by torch's rules: in 2-D an int, or a sequence whose None entries
    keep the input's size along that dim (the input needs more dims than the sequence has entries,
    else ValueError); in 1-D an int or a sequence of one int, None not allowed. Types are checked
    before the length."""
    if output_size is None:
        raise TypeError(f"{op}(): argument 'output_size' must be an int or a tuple of ints, not NoneType")
    if spatial_dims == 2 and not isinstance(output_size, (int, torch.SymInt, tuple, list, torch.Size)):
        raise TypeError(
            f"{op}(): argument 'output_size' must be an int or a tuple of ints, not {type(output_size).__name__}"
        )
    if not isinstance(output_size, (tuple, list, torch.Size)):
        return [_pool_int(output_size, "output_size", op)] * spatial_dims
    sizes = list(output_size)
    if spatial_dims == 2:
        if input.dim() <= len(sizes):
            raise ValueError(
                f"{op}(): input dimension should be at least {len(sizes) + 1} for output_size={output_size}, but "
                f"got input of size {list(input.shape)}"
            )
        trailing = input.shape[input.dim() - len(sizes):]
        sizes = [trailing[d] if size is None else size for d, size in enumerate(sizes)]
    sizes = [size if isinstance(size, torch.SymInt) else _seq_int(i, size, "output_size", op) for i, size in enumerate(sizes)]
    if len(sizes) != spatial_dims:
        raise RuntimeError(
            f"{op}(): output_size must be an int or a tuple of {spatial_dims} value(s), but got output_size={output_size}"
        )
    return sizes


def _adaptive_pool(spatial_dims, op, input, output_size, max_pool, return_indices):
    _check_tensor(op, input)
    if spatial_dims == 1:
        _pool_ints(output_size, "output_size", op)  # types before the rank, as torch's parser does
        _check_pool_input(op, input, spatial_dims)
    size = _adaptive_output_size(op, input, output_size, spatial_dims)
    if spatial_dims == 1:
        size = [1] + size
    if not max_pool and size == [1, 1]:
        # torch averages to 1 x 1 as a mean over the last two dims: any input of 2 or more dims will do
        if input.dim() < 2:
            raise IndexError(f"{op}(): expected an input of at least 2 dims, but got input of size {list(input.shape)}")
        check_device_supported(op, input)
    elif spatial_dims == 2:
        _check_pool_input(op, input, spatial_dims)
    x = _as_2d(input, spatial_dims)
    if max_pool:
        out, indices = _ops_ns.adaptive_max_pool2d(x, size)
        out, indices = _from_2d(out, spatial_dims), _from_2d(indices, spatial_dims)
        return (out, indices) if return_indices else out
    return _from_2d(_ops_ns.adaptive_avg_pool2d(x, size), spatial_dims)


def adaptive_avg_pool1d(input, output_size):
    """fastconv's torch.nn.functional.adaptive_avg_pool1d."""
    return _adaptive_pool(1, "adaptive_avg_pool1d", input, output_size, False, False)


def _is_global_size(output_size):
    """output_size 1 or (1, 1), ints: the global average pool (ResNet's head)."""
    if type(output_size) is int:
        return output_size == 1
    return (type(output_size) is tuple and len(output_size) == 2 and type(output_size[0]) is int
            and type(output_size[1]) is int and output_size == (1, 1))


def adaptive_avg_pool2d(input, output_size):
    """fastconv's torch.nn.functional.adaptive_avg_pool2d."""
    if _is_global_size(output_size) and isinstance(input, torch.Tensor) and input.is_cpu and input.dim() >= 3:
        # The common call straight to the op, which checks the rest (the general path's argument
        # handling took about a microsecond of the few a 512x7x7 global pool takes).
        return _ops_ns.adaptive_avg_pool2d(input, [1, 1])
    return _adaptive_pool(2, "adaptive_avg_pool2d", input, output_size, False, False)


def adaptive_max_pool1d(input, output_size, return_indices=False):
    """fastconv's torch.nn.functional.adaptive_max_pool1d."""
    return _adaptive_pool(1, "adaptive_max_pool1d", input, output_size, True, return_indices)


def adaptive_max_pool2d(input, output_size, return_indices=False):
    """fastconv's torch.nn.functional.adaptive_max_pool2d."""
    return _adaptive_pool(2, "adaptive_max_pool2d", input, output_size, True, return_indices)

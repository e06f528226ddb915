"""Shared cases for the memory-format tests (tests/test_conv.py, tests/test_pool.py, tests/test_cuda.py):
torch gives outputs, indices and gradients a memory format that follows the input (and, for a 2-D
convolution, the weight); fastconv must give the same strides on every device."""
import torch

# 2-D convolutions: (input shape, weight shape, stride, padding, groups) of dense, strided, grouped,
# depthwise and 1x1 layers.
CONV_CASES = [((2, 16, 10, 9), (32, 16, 3, 3), 1, 1, 1), ((2, 16, 11, 12), (24, 16, 3, 3), 2, 1, 1),
              ((2, 8, 9, 9), (16, 4, 3, 3), 1, 1, 2), ((2, 8, 9, 9), (8, 1, 3, 3), 1, 1, 8),
              ((2, 16, 7, 7), (32, 16, 1, 1), 2, 0, 1)]

# Pooling calls, as (name, call(functional_module, input)).
POOL_CALLS = [
    ("max_pool2d", lambda f, t: f.max_pool2d(t, 3, 2, 1, return_indices=True)),
    ("avg_pool2d", lambda f, t: f.avg_pool2d(t, 2)),
    ("adaptive_avg_pool2d", lambda f, t: f.adaptive_avg_pool2d(t, (4, 3))),
    ("adaptive_max_pool2d", lambda f, t: f.adaptive_max_pool2d(t, (3, 5), return_indices=True)),
]

POOL_LAYOUTS = ["channels_last", "permuted", "contiguous"]


def pool_input(layout, randn):
    """A (2, 5, 9, 8) input from randn(*shape) in the given layout: channels-last by .contiguous(),
    channels-last strides by a permutation, or contiguous."""
    if layout == "permuted":
        return randn(2, 9, 8, 5).permute(0, 3, 1, 2)
    x = randn(2, 5, 9, 8)
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


def strides_that_matter(t):
    """The strides of dims longer than 1 (torch gives the others any value)."""
    return tuple(stride for stride, size in zip(t.stride(), t.shape) if size > 1)


def as_tuple(result):
    return result if isinstance(result, tuple) else (result,)

"""Robustness on CPU: odd layouts, NaN/Inf, large tensors (slow), the im2col workspace cap with measured
peak memory, threads, memory growth over many calls, and error messages a user can act on.

test_conv.py holds the per-shape comparisons with torch; this file checks what must hold *around*
them: results that do not depend on memory layout, threads or how often a call is made.
"""
import ctypes
import gc
import os
import subprocess
import sys
import textwrap
import threading

import pytest
import torch
import torch.nn.functional as F

import fastconv
from fastconv import functional as FC

ALGOS = ["im2col", "direct"]
TOL64 = dict(rtol=1e-10, atol=1e-10)
TOL32 = dict(rtol=1e-4, atol=1e-4)
# conv2d_workspace_bytes counts the column buffer (under the cap) plus the GEMM's packing buffers,
# whose size is fixed by its block sizes (a few MB at most), not by the problem.
PACKING_BOUND = 16 << 20
# Set by scripts/sanitize_cpu.sh: resident-memory measurements mean nothing under AddressSanitizer
# (shadow memory, quarantined frees), so those tests are skipped there, and say so.
UNDER_ASAN = os.environ.get("FASTCONV_SANITIZE") == "1"

# Pooling calls exercised by the layout, NaN, thread and memory tests: (function name, kwargs, spatial dims).
POOL_CALLS = [
    ("max_pool2d", dict(kernel_size=3, stride=2, padding=1, return_indices=True), 2),
    ("max_pool2d", dict(kernel_size=(2, 3), stride=(1, 2), dilation=(2, 1), ceil_mode=True), 2),
    ("avg_pool2d", dict(kernel_size=3, stride=2, padding=1, count_include_pad=False), 2),
    ("avg_pool2d", dict(kernel_size=2, ceil_mode=True, divisor_override=3), 2),
    ("adaptive_avg_pool2d", dict(output_size=(3, 5)), 2),
    ("adaptive_max_pool2d", dict(output_size=(4, 3), return_indices=True), 2),
    ("max_pool1d", dict(kernel_size=3, stride=2, padding=1, return_indices=True), 1),
    ("avg_pool1d", dict(kernel_size=4, stride=3, padding=2, ceil_mode=True), 1),
    ("adaptive_avg_pool1d", dict(output_size=5), 1),
    ("adaptive_max_pool1d", dict(output_size=4, return_indices=True), 1),
]
POOL_IDS = [f"{name}-{i}" for i, (name, _, _) in enumerate(POOL_CALLS)]


def _pool(module, name, kwargs, x):
    """Runs one pooling call; returns (values, indices or None)."""
    out = getattr(module, name)(x, **kwargs)
    return out if isinstance(out, tuple) else (out, None)


def _storage_ptr(t):
    return t.untyped_storage().data_ptr()


def _assert_fresh(results, inputs):
    """Every result owns exactly its own memory: no storage shared with an input or with another
    result, and no view into a larger (workspace) buffer."""
    seen = {_storage_ptr(t) for t in inputs if t.numel() > 0}
    for r in results:
        if r is None or r.numel() == 0:
            continue
        assert _storage_ptr(r) not in seen, "a result aliases an input or another result"
        seen.add(_storage_ptr(r))
        assert r.untyped_storage().nbytes() == r.numel() * r.element_size(), "a result is a view into a larger buffer"


# ----------------------------------------------------------------------------------------------
# Layouts: non-contiguous inputs, weights, biases and grad_outputs give the contiguous result
# ----------------------------------------------------------------------------------------------


def _conv2d_inputs():
    """(name, input) pairs: one logical (2, 6, 9, 8) float64 input in many memory layouts."""
    g = torch.Generator().manual_seed(1)
    base = torch.randn(2, 6, 9, 8, dtype=torch.float64, generator=g)
    wide = torch.randn(3, 12, 18, 17, dtype=torch.float64, generator=g)
    return [
        ("contiguous", base),
        ("strided_slice", wide[1:, ::2, ::2, 1::2]),
        ("transposed_hw", base.transpose(2, 3).contiguous().transpose(2, 3)),
        ("channels_last", base.contiguous(memory_format=torch.channels_last)),
        ("permuted_nc", base.transpose(0, 1).contiguous().transpose(0, 1)),
        ("storage_offset", torch.cat([torch.zeros(5, dtype=torch.float64), base.flatten()])[5:].view(2, 6, 9, 8)),
        ("broadcast_batch_and_rows", torch.randn(1, 6, 1, 8, dtype=torch.float64, generator=g).expand(2, 6, 9, 8)),
    ]


def _conv2d_weights(groups):
    g = torch.Generator().manual_seed(2)
    cin_g = 6 // groups
    w = torch.randn(4, cin_g, 3, 2, dtype=torch.float64, generator=g)
    return [
        ("contiguous", w),
        ("channels_last", w.contiguous(memory_format=torch.channels_last)),
        ("transposed_khkw", w.transpose(2, 3).contiguous().transpose(2, 3)),
        ("strided_slice", torch.randn(8, cin_g * 2, 5, 4, dtype=torch.float64, generator=g)[::2, ::2, 1:4, ::2]),
        ("broadcast_out_channels", torch.randn(1, cin_g, 3, 2, dtype=torch.float64, generator=g).expand(4, cin_g, 3, 2)),
    ]


def _run_conv(fn, x, w, b, grad_out, **kwargs):
    x = x.detach().requires_grad_()
    w = w.detach().requires_grad_()
    b = b.detach().requires_grad_()
    out = fn(x, w, b, **kwargs)
    grads = torch.autograd.grad(out, (x, w, b), grad_out)
    return out, grads, (x, w, b)


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("groups", [1, 2])
def test_conv2d_layouts_give_the_contiguous_result(algo, groups):
    """Every input x weight layout (with the bias layouts in turn), forward and backward: bitwise equal
    to the same call on contiguous copies, close to torch, and every result a fresh tensor."""
    kwargs = dict(stride=(2, 1), padding=1, dilation=(1, 2), groups=groups, algo=algo)
    g = torch.Generator().manual_seed(3)
    bias_base = torch.randn(8, dtype=torch.float64, generator=g)
    biases = [("contiguous", bias_base[:4].clone()), ("strided", bias_base[::2]),
              ("broadcast", bias_base[:1].expand(4))]
    for i, (xname, x) in enumerate(_conv2d_inputs()):
        for j, (wname, w) in enumerate(_conv2d_weights(groups)):
            for bname, b in [biases[(i + j) % len(biases)]]:  # every input x weight layout, biases in turn
                torch_kwargs = {k: v for k, v in kwargs.items() if k != "algo"}
                want = F.conv2d(x.contiguous(), w.contiguous(), b.contiguous(), **torch_kwargs)
                grad_out = torch.randn(want.shape, dtype=torch.float64, generator=g)
                grad_out_layout = grad_out.transpose(2, 3).contiguous().transpose(2, 3)  # non-contiguous grad
                ref, ref_grads, _ = _run_conv(FC.conv2d, x.contiguous(), w.contiguous(), b.contiguous(), grad_out,
                                              **kwargs)
                out, grads, leaves = _run_conv(FC.conv2d, x, w, b, grad_out_layout, **kwargs)
                where = f"input {xname}, weight {wname}, bias {bname}"
                assert torch.equal(out, ref), where
                for got, exp in zip(grads, ref_grads):
                    assert torch.equal(got, exp), where
                torch.testing.assert_close(out, want, **TOL64, msg=lambda m: f"{where}: {m}")
                _assert_fresh([out, *grads], [x, w, b, grad_out_layout, *leaves])


@pytest.mark.parametrize("algo", ALGOS)
def test_conv1d_and_unbatched_layouts(algo):
    g = torch.Generator().manual_seed(4)
    wide = torch.randn(4, 10, 40, dtype=torch.float64, generator=g)
    w = torch.randn(6, 5, 3, dtype=torch.float64, generator=g)
    b = torch.randn(12, dtype=torch.float64, generator=g)[::2]
    cases = [
        wide[::2, ::2, ::3],                       # strided in every dim
        wide[:2, :5].transpose(1, 2).contiguous().transpose(1, 2),
        torch.randn(1, 5, 1, dtype=torch.float64, generator=g).expand(2, 5, 14),
        wide[1, 1:6, 3:30],                        # unbatched, non-contiguous
    ]
    for x in cases:
        want = F.conv1d(x.contiguous(), w, b.contiguous(), padding=2, dilation=2)
        grad_out = torch.randn(want.shape, dtype=torch.float64, generator=g)
        ref, ref_grads, _ = _run_conv(FC.conv1d, x.contiguous(), w, b.contiguous(), grad_out, padding=2, dilation=2,
                                      algo=algo)
        out, grads, leaves = _run_conv(FC.conv1d, x, w.transpose(1, 2).contiguous().transpose(1, 2), b,
                                       grad_out.transpose(-1, -2).contiguous().transpose(-1, -2), padding=2,
                                       dilation=2, algo=algo)
        assert torch.equal(out, ref)
        assert all(torch.equal(a, c) for a, c in zip(grads, ref_grads))
        torch.testing.assert_close(out, want, **TOL64)
        _assert_fresh([out, *grads], [x, w, b, *leaves])


@pytest.mark.parametrize("algo", ALGOS)
def test_conv_output_aliases_nothing(algo):
    """A 1x1 unit-stride convolution reads the input as its column matrix: its output (and its
    unbatched form) must still be a new tensor, and writing to it must leave the input alone."""
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    w = torch.eye(4, dtype=torch.float64).view(4, 4, 1, 1)  # identity: the output equals the input
    for inp in (x, x[0]):
        keep = inp.clone()
        out = FC.conv2d(inp, w, algo=algo)
        assert torch.equal(out, inp)
        _assert_fresh([out], [inp, w])
        out.add_(1)
        assert torch.equal(inp, keep)


@pytest.mark.parametrize("call", POOL_CALLS, ids=POOL_IDS)
def test_pool_layouts_give_the_contiguous_result(call):
    name, kwargs, dims = call
    g = torch.Generator().manual_seed(5)
    if dims == 2:
        base = torch.randn(2, 5, 11, 9, dtype=torch.float64, generator=g)
        wide = torch.randn(3, 10, 22, 19, dtype=torch.float64, generator=g)
        layouts = [
            base.contiguous(memory_format=torch.channels_last),
            wide[1:, ::2, ::2, 1::2],
            base.transpose(2, 3).contiguous().transpose(2, 3),
            torch.randn(1, 5, 1, 9, dtype=torch.float64, generator=g).expand(2, 5, 11, 9),
            wide[0, :5, 3:14, 2:11],  # unbatched, non-contiguous
        ]
    else:
        base = torch.randn(2, 5, 17, dtype=torch.float64, generator=g)
        wide = torch.randn(3, 10, 40, dtype=torch.float64, generator=g)
        layouts = [
            wide[1:, ::2, 1:35:2],
            base.transpose(1, 2).contiguous().transpose(1, 2),
            torch.randn(2, 1, 17, dtype=torch.float64, generator=g).expand(2, 5, 17),
            wide[0, 2:7, ::2],
        ]
    for x in layouts:
        xc = x.contiguous().requires_grad_()
        xs = x.detach().requires_grad_()
        ref, ref_idx = _pool(FC, name, kwargs, xc)
        out, idx = _pool(FC, name, kwargs, xs)
        want, want_idx = _pool(F, name, kwargs, x.contiguous())
        assert torch.equal(out, ref)
        torch.testing.assert_close(out, want, **TOL64)
        if want_idx is not None:
            assert torch.equal(idx, ref_idx) and torch.equal(idx, want_idx)
        grad_out = torch.randn(ref.shape, dtype=torch.float64, generator=g)
        (gref,) = torch.autograd.grad(ref, xc, grad_out)
        (gout,) = torch.autograd.grad(out, xs, grad_out.transpose(-1, -2).contiguous().transpose(-1, -2))
        assert torch.equal(gout, gref)
        _assert_fresh([out, idx, gout], [x, xs])


@pytest.mark.parametrize("name,kwargs", [
    ("max_pool2d", dict(kernel_size=1)),
    ("avg_pool2d", dict(kernel_size=1)),
    ("adaptive_avg_pool2d", dict(output_size=(6, 5))),   # output size == input size
    ("adaptive_max_pool2d", dict(output_size=(6, 5))),
    ("max_pool1d", dict(kernel_size=1)),
    ("adaptive_avg_pool1d", dict(output_size=5)),
])
def test_identity_pooling_aliases_nothing(name, kwargs):
    """Pooling that leaves every value where it is still returns a new tensor."""
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    if name.endswith("1d"):
        x = x[:, :, 0]
    keep = x.clone()
    out = getattr(FC, name)(x, **kwargs)
    assert torch.equal(out, x)
    _assert_fresh([out], [x])
    out.add_(1)
    assert torch.equal(x, keep)


# ----------------------------------------------------------------------------------------------
# NaN and Inf
# ----------------------------------------------------------------------------------------------

NONFINITE_INPUTS = {
    "nan_interior": [((0, 1, 4, 4), float("nan"))],
    "nan_corner": [((1, 0, 0, 0), float("nan")), ((1, 2, 8, 7), float("nan"))],
    "inf": [((0, 2, 3, 5), float("inf"))],
    "minus_inf": [((1, 1, 6, 2), float("-inf"))],
    "inf_and_minus_inf_in_one_window": [((0, 0, 4, 4), float("inf")), ((0, 0, 4, 5), float("-inf"))],
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("case", sorted(NONFINITE_INPUTS))
def test_conv_nonfinite_input_propagates_like_torch(case, algo, dtype):
    """NaN and Inf in the input reach exactly the outputs (and weight gradients) torch's do."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 3, 9, 8, dtype=dtype, generator=g)
    for pos, value in NONFINITE_INPUTS[case]:
        x[pos] = value
    w = torch.randn(4, 3, 3, 3, dtype=dtype, generator=g)
    b = torch.randn(4, dtype=dtype, generator=g)
    tol = TOL64 if dtype == torch.float64 else TOL32
    for kwargs in (dict(padding=1), dict(stride=2, dilation=2, padding=2)):
        want = F.conv2d(x, w, b, **kwargs)
        out = FC.conv2d(x, w, b, algo=algo, **kwargs)
        if kwargs["padding"] == 1:  # every input element is read
            assert not want.isfinite().all()
        torch.testing.assert_close(out, want, equal_nan=True, **tol)
        # Backward with a finite grad_output: the weight gradient meets the non-finite input.
        grad_out = torch.randn(want.shape, dtype=dtype, generator=g)
        leaves = [t.detach().requires_grad_() for t in (x, w, b)]
        got = torch.autograd.grad(FC.conv2d(*leaves, algo=algo, **kwargs), leaves, grad_out)
        leaves = [t.detach().requires_grad_() for t in (x, w, b)]
        exp = torch.autograd.grad(F.conv2d(*leaves, **kwargs), leaves, grad_out)
        for a, c in zip(got, exp):
            torch.testing.assert_close(a, c, equal_nan=True, **tol)


@pytest.mark.parametrize("algo", ALGOS)
def test_conv_nonfinite_weight_and_grad_output(algo):
    """Without padding, a NaN/Inf weight or grad_output spreads exactly as in torch."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 4, 7, 6, dtype=torch.float64, generator=g)
    w = torch.randn(6, 2, 3, 2, dtype=torch.float64, generator=g)
    w[1, 0, 2, 1] = float("nan")
    w[4, 1, 0, 0] = float("inf")
    out = FC.conv2d(x, w, groups=2, algo=algo)
    torch.testing.assert_close(out, F.conv2d(x, w, groups=2), equal_nan=True, **TOL64)
    assert out[:, 1].isnan().all() and not out[:, [0, 2, 3, 5]].isnan().any()

    w = torch.randn(6, 2, 3, 2, dtype=torch.float64, generator=g)
    grad_out = torch.randn(2, 6, 5, 5, dtype=torch.float64, generator=g)
    grad_out[1, 3, 2, 2] = float("nan")
    grad_out[0, 0, 4, 0] = float("-inf")
    leaves = [t.detach().requires_grad_() for t in (x, w)]
    got = torch.autograd.grad(FC.conv2d(*leaves, groups=2, algo=algo), leaves, grad_out)
    exp = torch.autograd.grad(F.conv2d(*leaves, groups=2), leaves, grad_out)
    for a, c in zip(got, exp):
        torch.testing.assert_close(a, c, equal_nan=True, **TOL64)


@pytest.mark.parametrize("algo", ALGOS)
def test_conv_nan_weight_with_padding_reaches_every_real_input(algo):
    """With padding, torch's own backends disagree on whether a NaN weight tap poisons outputs whose
    tap falls on padding (0 * NaN); fastconv must NaN at least every output where the tap reads a
    real input element, and no output channel the NaN weight does not belong to."""
    g = torch.Generator().manual_seed(8)
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64, generator=g)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, generator=g)
    w[2, 1, 0, 2] = float("nan")
    out = FC.conv2d(x, w, padding=1, algo=algo)
    reaches = F.conv2d(torch.ones_like(x), w.isnan().to(x.dtype), padding=1) > 0
    assert out[reaches].isnan().all()
    assert not out[:, [0, 1, 3]].isnan().any()


@pytest.mark.parametrize("call", POOL_CALLS, ids=POOL_IDS)
def test_pool_nan_and_inf_like_torch(call):
    """Max pooling picks NaN (with its index), averaging spreads it; +-Inf windows as in torch."""
    name, kwargs, dims = call
    g = torch.Generator().manual_seed(9)
    shape = (2, 3, 10, 9) if dims == 2 else (2, 3, 40)
    x = torch.randn(shape, dtype=torch.float64, generator=g)
    flat = x.view(-1)
    flat[[5, 6, 40, 41, 100]] = float("nan")       # neighbouring NaNs share windows
    flat[[70, 150]] = float("inf")
    flat[[71, 200, 201]] = float("-inf")
    x[1, 2] = float("-inf")                          # a whole plane of -inf
    x[1, 1] = float("nan")                           # a whole plane of NaN
    xs = x.clone().requires_grad_()
    xt = x.clone().requires_grad_()
    out, idx = _pool(FC, name, kwargs, xs)
    want, want_idx = _pool(F, name, kwargs, xt)
    torch.testing.assert_close(out, want, equal_nan=True, **TOL64)
    if want_idx is not None:
        assert torch.equal(idx, want_idx)
    if name.startswith(("max", "adaptive_max")):
        assert out[1, 1].isnan().all()
    grad_out = torch.randn(want.shape, dtype=torch.float64, generator=g)
    (got,) = torch.autograd.grad(out, xs, grad_out)
    (exp,) = torch.autograd.grad(want, xt, grad_out)
    torch.testing.assert_close(got, exp, equal_nan=True, **TOL64)


@pytest.mark.parametrize("algo", ALGOS + ["auto"])
def test_int64_limit_parameters(algo):
    """Strides, paddings and dilations at the int64 limits: the size arithmetic must neither overflow
    into wrong results or out-of-bounds accesses nor differ from torch."""
    g = torch.Generator().manual_seed(13)
    x = torch.randn(2, 4, 6, 7, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(24, 2, 4, 3, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(24, dtype=torch.float64, generator=g, requires_grad=True)
    for stride in (2**63 - 1, (2**62, 1), (1, 2**63 - 2)):
        for padding in (0, 2, (1, 0)):
            kwargs = dict(stride=stride, padding=padding, groups=2)
            want = F.conv2d(x, w, b, **kwargs)
            out = FC.conv2d(x, w, b, algo=algo, **kwargs)
            torch.testing.assert_close(out, want, **TOL64)
            got = torch.autograd.grad(out, (x, w, b), torch.ones_like(out))
            exp = torch.autograd.grad(want, (x, w, b), torch.ones_like(want))
            for a, c in zip(got, exp):
                torch.testing.assert_close(a, c, **TOL64)
        x1 = x[0, :, 0]  # unbatched conv1d
        torch.testing.assert_close(FC.conv1d(x1, w[:, :, 0], b, stride=2**63 - 1, padding=2, groups=2, algo=algo),
                                   F.conv1d(x1, w[:, :, 0], b, stride=2**63 - 1, padding=2, groups=2), **TOL64)
    # A huge dilation with padding='same': the true output is small, the padding 2**40 on each side.
    x1 = torch.randn(1, 6, 1, dtype=torch.float64, generator=g, requires_grad=True)
    w1 = torch.randn(16, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    out = FC.conv1d(x1, w1, padding="same", dilation=2**40, groups=2, algo=algo)
    want = F.conv1d(x1, w1, padding="same", dilation=2**40, groups=2)
    torch.testing.assert_close(out, want, **TOL64)
    for a, c in zip(torch.autograd.grad(out.sum(), (x1, w1)), torch.autograd.grad(want.sum(), (x1, w1))):
        torch.testing.assert_close(a, c, **TOL64)
    for kwargs in (dict(padding=2**62), dict(padding=2**62 - 1), dict(dilation=2**62), dict(dilation=(1, 2**61))):
        with pytest.raises(RuntimeError):
            FC.conv2d(x, w, b, groups=2, algo=algo, **kwargs)
    # An empty batch takes any padding torch takes, and gives its (huge, empty) shape.
    empty = torch.randn(0, 4, 6, 7, dtype=torch.float64)
    assert FC.conv2d(empty, w, groups=2, padding=2**30, algo=algo).shape == F.conv2d(empty, w, groups=2,
                                                                                      padding=2**30).shape


def test_pool_int64_limit_parameters():
    """torch's pooling takes 32-bit ints, except max_pool1d on its no-indices path (CPU, no autograd),
    which takes int64: a stride at the int64 limit works there."""
    x = torch.randn(2, 3, 9, dtype=torch.float64)
    for kwargs in (dict(kernel_size=3, stride=2**63 - 1), dict(kernel_size=3, stride=2**63 - 1, padding=1),
                   dict(kernel_size=4, stride=2**62, padding=2, dilation=2, ceil_mode=True)):
        torch.testing.assert_close(FC.max_pool1d(x, **kwargs), F.max_pool1d(x, **kwargs))
        with pytest.raises(RuntimeError, match="32-bit"):
            FC.max_pool1d(x.requires_grad_(), **kwargs)
        x.requires_grad_(False)
    for call in (lambda: FC.max_pool2d(x[None], 3, stride=2**31), lambda: FC.avg_pool1d(x, 3, stride=2**63 - 1),
                 lambda: FC.max_pool1d(x, 3, stride=2**31, return_indices=True)):
        with pytest.raises(RuntimeError, match="32-bit"):
            call()


# ----------------------------------------------------------------------------------------------
# Large tensors (opt-in: FASTCONV_SLOW=1)
# ----------------------------------------------------------------------------------------------


def _mem_available_bytes():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


@pytest.fixture(scope="module")
def huge_input():
    """A float32 (1, 1, 2**15 + 1, 2**16) input: 2**31 + 2**16 elements (8 GiB), so flat offsets of its
    last rows pass 2**31. Zero except its first and last 9 rows, which hold random values."""
    need = (2**31 + 2**16) * 4 + (2 << 30)
    if _mem_available_bytes() < need:
        pytest.skip(f"needs {need >> 30} GiB of available memory, the machine has {_mem_available_bytes() >> 30} GiB")
    x = torch.zeros(1, 1, 2**15 + 1, 2**16)
    g = torch.Generator().manual_seed(10)
    x[..., :9, :] = torch.randn(9, 2**16, generator=g)
    x[..., -9:, :] = torch.randn(9, 2**16, generator=g)
    assert x.numel() > 2**31
    return x


@pytest.mark.slow
@pytest.mark.parametrize("algo", ALGOS)
def test_conv_input_over_2_31_elements(huge_input, algo):
    x = huge_input
    w = torch.randn(2, 1, 3, 5)
    b = torch.randn(2)
    # Stride 4 x 64 keeps the output small while every region of the input is read.
    out = FC.conv2d(x, w, b, stride=(4, 64), padding=(1, 2), algo=algo)
    want_shape = F.conv2d(torch.empty(1, 1, 2**15 + 1, 2**16, device="meta"), w.to("meta"), stride=(4, 64),
                          padding=(1, 2)).shape
    assert out.shape == want_shape
    # Top rows: output rows 0..1 read input rows -1..5.
    top = F.conv2d(x[..., :9, :], w, b, stride=(4, 64), padding=(1, 2))
    torch.testing.assert_close(out[..., :2, :], top[..., :2, :], **TOL32)
    # Bottom rows: the last output row reads the last input rows, whose flat offsets pass 2**31.
    last = out.shape[-2] - 1
    first_in = last * 4 - 1  # rows first_in, first_in + 1 (flat offset 2**31) and a row of padding
    assert (first_in + 1) * 2**16 >= 2**31
    bottom = F.conv2d(F.pad(x[..., first_in:, :], (0, 0, 0, 1)), w, b, stride=(4, 64), padding=(0, 2))
    torch.testing.assert_close(out[..., last:, :], bottom, **TOL32)
    # Everything in between read only zeros: the bias.
    torch.testing.assert_close(out[..., 3:last - 2, :], b.view(1, 2, 1, 1).expand(1, 2, last - 5, out.shape[-1]))


@pytest.mark.slow
def test_pool_input_over_2_31_elements(huge_input):
    x = huge_input
    out, idx = FC.max_pool2d(x, kernel_size=3, stride=(8, 64), padding=1, return_indices=True)
    last = out.shape[-2] - 1
    assert last * 8 * 2**16 >= 2**31
    # Indices are positions in the flattened 2**31-element plane: compare the last row with torch on
    # the rows its windows cover (explicitly padded), its indices mapped back to the full plane.
    start = last * 8 - 1
    rows = F.pad(x[..., start:, :], (1, 1, 0, 1), value=float("-inf"))
    want, want_idx = F.max_pool2d(rows, kernel_size=3, stride=(8, 64), return_indices=True)
    torch.testing.assert_close(out[..., last:, :], want)
    width = rows.shape[-1]
    assert torch.equal(idx[..., last:, :], (start + want_idx // width) * 2**16 + want_idx % width - 1)
    assert idx.max().item() >= 2**31
    avg = FC.avg_pool2d(x, kernel_size=(2, 4), stride=(8, 64))
    torch.testing.assert_close(avg[..., -1:, :], F.avg_pool2d(x[..., -9:-7, :], kernel_size=(2, 4), stride=(8, 64)))
    adaptive = FC.adaptive_avg_pool2d(x, (4, 2))
    first = (3 * x.shape[-2]) // 4  # the last cell covers rows [floor(3 H / 4), H)
    torch.testing.assert_close(adaptive[..., -1:, :], F.adaptive_avg_pool2d(x[..., first:, :], (1, 2)),
                               rtol=1e-4, atol=1e-7)


@pytest.mark.slow
def test_conv_column_matrix_over_2_31_elements():
    """A 16-channel 2048 x 2048 image with an 11 x 11 kernel: its full column matrix would hold
    16 * 121 * 2048**2 > 2**32 elements; fastconv's stays under the workspace cap."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(1, 16, 2048, 2048, generator=g)
    w = torch.randn(2, 16, 11, 11, generator=g) * 0.05
    assert 16 * 121 * 2048 * 2048 > 2**32
    ws = torch.ops.fastconv.conv2d_workspace_bytes(x, w, [1, 1], [5, 5], [1, 1], 1, "im2col")
    assert 0 < ws <= (64 << 20) + PACKING_BOUND
    out = FC.conv2d(x, w, padding=5, algo="im2col")
    for r0 in (0, 1021, 2048 - 40):
        # Output rows [r0, r0 + 40) read input rows [r0 - 5, r0 + 45), zero outside the image.
        lo, hi = max(r0 - 5, 0), min(r0 + 45, 2048)
        rows = F.pad(x[..., lo:hi, :], (0, 0, lo - (r0 - 5), (r0 + 45) - hi))
        want = F.conv2d(rows, w, padding=(0, 5))
        torch.testing.assert_close(out[..., r0:r0 + 40, :], want, rtol=1e-3, atol=1e-3)


# ----------------------------------------------------------------------------------------------
# Workspace: the im2col column buffer stays under the cap, measured as peak resident memory
# ----------------------------------------------------------------------------------------------

_PEAK_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    import fastconv
    from fastconv import functional as FC

    def status(field):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024

    n, c, h, w, cout, k, backward = (int(v) for v in sys.argv[1:8])
    torch.manual_seed(0)
    x = torch.randn(n, c, h, w, requires_grad=bool(backward))
    wt = torch.randn(cout, c, k, k, requires_grad=bool(backward))
    # Warm up the same code paths on a tiny problem (library code pages, thread pools, autograd's
    # first-backward setup, which alone takes ~35 MB).
    tiny_x = torch.randn(1, c, k + 1, k + 1, requires_grad=bool(backward))
    tiny_w = torch.randn(cout, c, k, k, requires_grad=bool(backward))
    tiny = FC.conv2d(tiny_x, tiny_w, padding=1, algo="im2col")
    if backward:
        tiny.backward(torch.ones_like(tiny))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current resident size
    base = status("VmRSS")
    out = FC.conv2d(x, wt, padding=1, algo="im2col")
    if backward:
        out.backward(torch.ones_like(out))
    peak = status("VmHWM")
    ws = torch.ops.fastconv.conv2d_workspace_bytes(x, wt, [1, 1], [1, 1], [1, 1], 1, "im2col")
    print(json.dumps(dict(extra=peak - base, workspace=ws, out_bytes=out.numel() * 4)))
    """
)


def _peak_extra_bytes(shape, cap=None, backward=False):
    env = dict(os.environ)
    if cap is not None:
        env["FASTCONV_IM2COL_WORKSPACE_BYTES"] = str(cap)
    else:
        env.pop("FASTCONV_IM2COL_WORKSPACE_BYTES", None)
    args = [str(v) for v in shape] + [str(int(backward))]
    proc = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, *args], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    import json

    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(UNDER_ASAN, reason="resident memory is not measurable under AddressSanitizer")
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc/self/clear_refs")
@pytest.mark.parametrize("backward", [False, True], ids=["forward", "forward+backward"])
def test_workspace_cap_bounds_peak_memory(backward):
    """(32, 56, 56) images, 3x3 kernel, cap lowered to 4 MB: a column matrix for a batch of 64 would take
    64 * 288 * 3136 * 4 bytes = 231 MB. The measured peak of extra resident memory, less the tensors the
    call returns or autograd holds, must be the same for batch 8 and batch 64 (the workspace does not
    grow with the batch) and stay near the cap plus the libraries' fixed buffers."""
    c, h, w, cout, k = 32, 56, 56, 32, 3
    cap = 4 << 20
    per_image_columns = c * k * k * h * w * 4
    overhead = {}
    for n in (8, 64):
        r = _peak_extra_bytes((n, c, h, w, cout, k), cap=cap, backward=backward)
        assert 0 < r["workspace"] <= cap + PACKING_BOUND
        tensors = r["out_bytes"] * (3 if backward else 1)  # output, its grad (ones), the input grad
        overhead[n] = r["extra"] - tensors
    # Unchunked, batch 64 would need 56 more images' columns (202 MB) than batch 8.
    assert abs(overhead[64] - overhead[8]) < 8 << 20, (overhead, 56 * per_image_columns)
    # What remains is the column buffer and the GEMM's packing buffers (plus allocator noise).
    assert overhead[64] <= cap + PACKING_BOUND + (8 << 20), overhead


@pytest.mark.skipif(UNDER_ASAN, reason="resident memory is not measurable under AddressSanitizer")
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc/self/clear_refs")
def test_default_workspace_cap_bounds_one_large_image():
    """One (64, 448, 448) image, 3x3 kernel, forward and backward: its column matrix would take 462 MB;
    under the default 64 MiB cap the peak stays near the gradients + cap."""
    n, c, h, w, cout, k = 1, 64, 448, 448, 4, 3
    unchunked = c * k * k * h * w * 4
    r = _peak_extra_bytes((n, c, h, w, cout, k), backward=True)
    assert 0 < r["workspace"] <= (64 << 20) + PACKING_BOUND
    tensors = 2 * r["out_bytes"] + n * c * h * w * 4  # output, its grad (ones), the input grad
    assert r["extra"] <= tensors + (64 << 20) + PACKING_BOUND + (8 << 20), (r, unchunked)


# ----------------------------------------------------------------------------------------------
# Threads
# ----------------------------------------------------------------------------------------------


def _workloads(family, dtype=torch.float64):
    """(name, fn) pairs; fn() returns the output and the gradients, all as a flat list of tensors."""
    g = torch.Generator().manual_seed(12)

    def conv2d(algo):
        x = torch.randn(3, 8, 13, 12, dtype=dtype, generator=g)
        w = torch.randn(12, 4, 3, 3, dtype=dtype, generator=g)
        b = torch.randn(12, dtype=dtype, generator=g)
        go = torch.randn(3, 12, 7, 12, dtype=dtype, generator=g)

        def run():
            leaves = [t.detach().requires_grad_() for t in (x, w, b)]
            out = FC.conv2d(*leaves, stride=(2, 1), padding=1, groups=2, algo=algo)
            return [out, *torch.autograd.grad(out, leaves, go)]

        return run

    def conv1d(algo):
        x = torch.randn(2, 6, 50, dtype=dtype, generator=g)
        w = torch.randn(6, 1, 5, dtype=dtype, generator=g)
        go = torch.randn(2, 6, 22, dtype=dtype, generator=g)

        def run():
            leaves = [t.detach().requires_grad_() for t in (x, w)]
            out = FC.conv1d(*leaves, stride=2, padding=1, dilation=2, groups=6, algo=algo)
            return [out, *torch.autograd.grad(out, leaves, go)]

        return run

    def pool(name, kwargs, dims):
        x = torch.randn((3, 4, 15, 14) if dims == 2 else (3, 4, 29), dtype=dtype, generator=g)

        def run():
            leaf = x.detach().requires_grad_()
            out, idx = _pool(FC, name, kwargs, leaf)
            (grad,) = torch.autograd.grad(out, leaf, torch.ones_like(out) * 0.5 + out.detach())
            return [out, grad] + ([] if idx is None else [idx])

        return run

    if family == "conv":
        return [(f"conv2d-{a}", conv2d(a)) for a in ALGOS] + [(f"conv1d-{a}", conv1d(a)) for a in ALGOS]
    return [(f"{name}-{i}", pool(name, kw, d)) for i, (name, kw, d) in enumerate(POOL_CALLS)]


@pytest.mark.parametrize("family", ["conv", "pool"])
def test_concurrent_python_threads_give_serial_results(family):
    """Four Python threads run every workload 20 times each, interleaved; every result matches the
    serial one."""
    work = _workloads(family)
    serial = {name: fn() for name, fn in work}
    errors = []
    barrier = threading.Barrier(4)

    def worker(offset):
        try:
            barrier.wait()
            for i in range(20 * len(work)):
                name, fn = work[(i + offset) % len(work)]
                for got, want in zip(fn(), serial[name]):
                    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=lambda m: f"{name}: {m}")
        except Exception as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k * 3,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not any(t.is_alive() for t in threads), "a worker thread hung"
    assert not errors, errors[0]


@pytest.mark.parametrize("family", ["conv", "pool"])
@pytest.mark.parametrize("threads", [1, 2])
def test_bitwise_identical_run_to_run(threads, family):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for name, fn in _workloads(family, torch.float32):
            first, second = fn(), fn()
            for a, c in zip(first, second):
                assert torch.equal(a, c), name
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("family", ["conv", "pool"])
def test_one_and_two_threads_agree(family):
    previous = torch.get_num_threads()
    results = {}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results[threads] = {name: fn() for name, fn in _workloads(family, torch.float32)}
    finally:
        torch.set_num_threads(previous)
    for name, tensors in results[1].items():
        for a, c in zip(tensors, results[2][name]):
            if a.dtype == torch.int64:
                assert torch.equal(a, c), name
            else:
                torch.testing.assert_close(a, c, **TOL32, msg=lambda m: f"{name}: {m}")


# ----------------------------------------------------------------------------------------------
# Memory: no growth over 10,000 forward+backward calls
# ----------------------------------------------------------------------------------------------


def _rss_bytes():
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap memory back so it does not count
    except (OSError, AttributeError):
        pass
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _assert_no_growth(step, calls=10_000, warmup=1_000, limit=4 << 20):
    """RSS after `calls` more calls stays within `limit` of RSS after a warm-up: a leak of 420 bytes
    or more per call would exceed it."""
    for i in range(warmup):
        step(i)
    before = _rss_bytes()
    for i in range(calls):
        step(i)
    grown = _rss_bytes() - before
    assert grown < limit, f"resident memory grew by {grown / 2**20:.1f} MiB over {calls} calls"


@pytest.mark.skipif(UNDER_ASAN, reason="resident memory is not measurable under AddressSanitizer")
def test_no_memory_growth_conv():
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    x1 = torch.randn(2, 4, 16, requires_grad=True)
    w = torch.randn(6, 2, 3, 3, requires_grad=True)
    w1 = torch.randn(6, 4, 3, requires_grad=True)
    b = torch.randn(6, requires_grad=True)

    def step(i):
        if i % 3 == 2:
            out = FC.conv1d(x1, w1, b, padding=1, algo=ALGOS[i % 2])
        else:
            out = FC.conv2d(x, w, b, padding=1, groups=2, algo=ALGOS[i % 2])
        out.sum().backward()
        x.grad = w.grad = b.grad = x1.grad = w1.grad = None

    _assert_no_growth(step)


@pytest.mark.skipif(UNDER_ASAN, reason="resident memory is not measurable under AddressSanitizer")
def test_no_memory_growth_pool():
    x = torch.randn(2, 4, 9, 9, requires_grad=True)
    calls = [(name, kw) for name, kw, d in POOL_CALLS if d == 2]

    def step(i):
        name, kwargs = calls[i % len(calls)]
        out, _ = _pool(FC, name, kwargs, x)
        out.sum().backward()
        x.grad = None

    _assert_no_growth(step)


@pytest.mark.skipif(UNDER_ASAN, reason="resident memory is not measurable under AddressSanitizer")
def test_no_memory_growth_on_errors():
    """Calls rejected by the kernels' checks release everything they allocated."""
    x = torch.randn(1, 6, 5, 5)
    bad = [
        lambda: FC.conv2d(x, torch.randn(4, 4, 3, 3)),
        lambda: FC.conv2d(x, torch.randn(4, 6, 7, 7)),
        lambda: torch.ops.fastconv.conv2d(x, torch.randn(4, 6, 3, 3), None, [0, 1], [0, 0], [1, 1], 1, "im2col"),
        lambda: torch.ops.fastconv.conv2d_backward(torch.randn(1, 4, 2, 2), x, torch.randn(4, 6, 3, 3), [1, 1],
                                                   [0, 0], [1, 1], 1, [True, True, True], "direct"),
        lambda: FC.max_pool2d(x, 3, padding=2),
    ]

    def step(i):
        with pytest.raises(RuntimeError):
            bad[i % len(bad)]()

    _assert_no_growth(step, calls=5_000, warmup=500)


# ----------------------------------------------------------------------------------------------
# Outputs of 32 MiB and more: blocks released by earlier outputs are handed out again
# ----------------------------------------------------------------------------------------------

_REUSE_SCRIPT = textwrap.dedent(
    """
    import ctypes, gc, json, sys, torch
    import torch.nn.functional as F
    import fastconv
    from fastconv import functional as FC

    def rss():
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    torch.manual_seed(0)
    worst = 0.0
    # The same sizes twice (the second round runs on blocks the first released), outputs written by the
    # depthwise input gradient, average pooling and max pooling (values and indices); then more sizes.
    sizes = [130, 136, 130, 136] + list(range(140, 172, 4))
    base = None
    for i, size in enumerate(sizes):
        x = torch.randn(8, 64, size, size) * (i + 1)
        w = torch.randn(64, 1, 3, 3)
        go = torch.randn(8, 64, (size + 1) // 2, (size + 1) // 2)
        gi = torch.ops.fastconv.conv2d_backward(go, x, w, [2, 2], [1, 1], [1, 1], 64, [True, False, False], "auto")[0]
        want = torch.ops.aten.convolution_backward(go, x, w, None, [2, 2], [1, 1], [1, 1], False, [0, 0], 64,
                                                   [True, False, False])[0]
        worst = max(worst, ((gi - want).abs().max() / want.abs().max()).item())
        for ours, theirs in ((FC.avg_pool2d(x, 3, 1, 1), F.avg_pool2d(x, 3, 1, 1)),
                             (FC.max_pool2d(x, 3, 1, 1, return_indices=True)[1],
                              F.max_pool2d(x, 3, 1, 1, return_indices=True)[1])):
            assert torch.equal(ours, theirs), (size, "pooling")
        del gi, want, ours, theirs, x, go
        if i == 3:
            base = rss()  # after the repeated sizes: what stays cached from here on is bounded
    print(json.dumps(dict(worst=worst, grown=rss() - base)))
    """
)


@pytest.mark.skipif(UNDER_ASAN, reason="resident memory is not measurable under AddressSanitizer")
@pytest.mark.parametrize("limit", [0, 96 << 20, None], ids=["no-reuse", "96MiB", "default"])
def test_large_outputs_reuse_blocks_within_the_limit(limit):
    env = dict(os.environ)
    env.pop("FASTCONV_REUSE_BYTES", None)
    if limit is not None:
        env["FASTCONV_REUSE_BYTES"] = str(limit)
    proc = subprocess.run([sys.executable, "-c", _REUSE_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    import json

    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["worst"] < 1e-5, r  # every reused block was written in full
    # Eight more sizes of 36-60 MiB outputs went through: the cache keeps at most its limit of them.
    bound = (512 << 20) if limit is None else limit
    assert r["grown"] < bound + (24 << 20), r


# ----------------------------------------------------------------------------------------------
# Errors a user can act on: the message names the argument and the values
# ----------------------------------------------------------------------------------------------

X = torch.randn(1, 6, 5, 5)
W = torch.randn(4, 6, 3, 3)


@pytest.mark.parametrize("call,pattern", [
    (lambda: FC.conv2d(X, torch.randn(4, 4, 3, 3), groups=2),
     r"expected weight with 3 input channels per group \(input has 6 channels, groups=2\), got 4"),
    (lambda: FC.conv2d(X, W, groups=4), r"input channels \(6\).*groups=4"),
    (lambda: FC.conv2d(X, torch.randn(3, 3, 3, 3), groups=2), r"out_channels \(3\).*groups=2"),
    (lambda: FC.conv2d(X, W, torch.randn(3)), r"bias.*4 elements.*\[3\]"),
    (lambda: FC.conv2d(X, W, stride=(1, 0)), r"stride.*\[1, 0\]"),
    (lambda: FC.conv2d(X, W, padding=(-1, 0)), r"padding.*\[-1, 0\]"),
    (lambda: FC.conv2d(X, W, dilation=(0, 1)), r"dilation.*\[0, 1\]"),
    (lambda: FC.conv2d(X, W, groups=0), r"groups.*0"),
    (lambda: FC.conv2d(X, torch.randn(4, 6, 9, 2)), r"\(5 x 5\).*\(9 x 2\)"),
    (lambda: FC.conv2d(X, W, padding=(1, 1, 1)), r"padding.*\[1, 1, 1\]"),
    (lambda: FC.conv2d(X, W, stride=1.5), r"stride.*float"),
    (lambda: FC.conv2d(X, W, padding="full"), r"padding.*'full'"),
    (lambda: FC.conv1d(torch.randn(2, 4, 10), torch.randn(3, 4, 12)), r"conv1d.*\(10\).*\(12\)"),
    (lambda: FC.conv2d(X, W.double()), r"input.*Float.*weight.*Double|weight.*Double.*input.*Float"),
    (lambda: FC.conv2d(X, W, torch.randn(4, dtype=torch.float64)), r"bias.*Double.*input.*Float"),
    (lambda: FC.conv2d(X.int(), W.int()), r"unsupported dtype Int.*float32 and float64"),
    (lambda: FC.max_pool2d(X, 3, padding=2), r"pad.*2.*kernel_size.*3"),
    (lambda: FC.max_pool2d(X, 3, stride=0), r"stride.*0"),
    (lambda: FC.avg_pool2d(X, (2, 0)), r"kernel.*\[2, 0\]"),
    (lambda: FC.max_pool2d(X, 7), r"output size.*too small"),
    (lambda: FC.adaptive_avg_pool2d(X, (-1, 2)), r"output_size.*-1"),
])
def test_error_messages_name_arguments_and_values(call, pattern):
    with pytest.raises((RuntimeError, TypeError, ValueError), match=pattern):
        call()


@pytest.mark.cuda
@pytest.mark.skipif(not (torch.cuda.is_available() and fastconv.build_info()["cuda"]),
                    reason="needs a CUDA device and a build with CUDA kernels")
def test_device_mismatch_names_the_tensors():
    x = torch.randn(1, 6, 5, 5, device="cuda")
    with pytest.raises(RuntimeError, match=r"input is on cuda.*weight is on cpu"):
        FC.conv2d(x, W)
    with pytest.raises(RuntimeError, match=r"bias is on cpu.*input is on cuda"):
        FC.conv2d(x, W.cuda(), torch.randn(4))


def test_error_messages_print_numbers_in_a_fresh_process():
    """Numbers in the C++ error messages go through the C++ runtime's locale tables. An extension that
    carries its own copy of libstdc++ (a compiler set up with -static-libstdc++) prints garbage there
    or crashes, so this runs in a subprocess and checks the exit status and the printed values."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(fastconv.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    code = ("import torch, fastconv.functional as FC\n"
            "FC.conv2d(torch.randn(1, 6, 5, 5), torch.randn(4, 6, 3, 3), padding=-1)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1, f"exit status {proc.returncode}:\n{proc.stderr[-3000:]}"
    assert "negative padding is not supported (padding=[-1, -1])" in proc.stderr, proc.stderr[-3000:]

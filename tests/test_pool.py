"""Pooling on CPU (max, avg, adaptive; 1-D and 2-D) against torch.nn.functional: values, indices,
gradients, layouts, ops, compile, errors."""
import itertools
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

import fastconv
from fastconv import functional as FC
import memory_formats

ops = torch.ops.fastconv
DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float64: dict(rtol=1e-12, atol=1e-12)}


@pytest.fixture(autouse=True)
def _one_thread():
    """The grids run many tiny calls; on a busy machine torch's thread pool makes each take
    milliseconds. Threading is covered by test_backward_is_deterministic_and_thread_count_independent."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _grads(out, x, grad_out):
    (g,) = torch.autograd.grad(out, x, grad_out)
    return g


def _compare(ours, theirs, x, dtype, exact=False):
    """Runs both calls on x; compares outputs (and indices, which must be identical) and input gradients."""
    out, ref = ours(x), theirs(x)
    if isinstance(ref, tuple):
        assert torch.equal(out[1], ref[1]), "indices differ"
        assert out[1].dtype == torch.int64
        out, ref = out[0], ref[0]
    assert out.shape == ref.shape and out.dtype == ref.dtype
    if exact:
        assert torch.equal(out, ref)
    else:
        torch.testing.assert_close(out, ref, **TOL[dtype])
    grad_out = torch.randn_like(ref)
    torch.testing.assert_close(_grads(out, x, grad_out), _grads(ref, x, grad_out), **TOL[dtype])


def _window_cases(two_d):
    """(input spatial size, kernel, stride, padding, dilation, ceil_mode) with valid torch arguments."""
    sizes = [(1, 1), (5, 7), (8, 8), (12, 9)] if two_d else [(1,), (7,), (16,)]
    kernels = [1, 2, 3, (2, 3)] if two_d else [1, 2, 3, 4]
    strides = [None, 1, 2, (3, 1)] if two_d else [None, 1, 2, 3]
    for size, k, s, ceil in itertools.product(sizes, kernels, strides, (False, True)):
        kh, kw = (k, k) if isinstance(k, int) else k
        for p in {0, min(kh, kw) // 2}:
            for d in (1, 2):
                yield size, k, s, p, d, ceil


def _torch_accepts(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
        return True
    except RuntimeError:
        return False


# ----------------------------------------------------------------------------------------------
# Forward, indices and gradients over a grid
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dims", [1, 2])
def test_max_pool_matches_torch(dims, dtype):
    ours_fn, theirs_fn = (FC.max_pool2d, F.max_pool2d) if dims == 2 else (FC.max_pool1d, F.max_pool1d)
    checked = 0
    for size, k, s, p, d, ceil in _window_cases(dims == 2):
        x = torch.randn(2, 3, *size, dtype=dtype, requires_grad=True)
        kwargs = dict(kernel_size=k, stride=s, padding=p, dilation=d, ceil_mode=ceil, return_indices=True)
        if not _torch_accepts(theirs_fn, x.detach(), **kwargs):
            with pytest.raises(RuntimeError):
                ours_fn(x, **kwargs)
            continue
        _, ref_idx = theirs_fn(x.detach(), **kwargs)
        if (ref_idx >= x[0, 0].numel()).any():
            continue  # a window with no input element (covered by test_max_pool_window_outside_input)
        _compare(lambda t: ours_fn(t, **kwargs), lambda t: theirs_fn(t, **kwargs), x, dtype, exact=True)
        checked += 1
    assert checked > 100


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dims", [1, 2])
def test_max_pool_values_without_grad_match_torch(dims, dtype):
    # An input that needs no gradient takes the values-only kernel: torch's values, NaNs and infinities
    # included, over the window grid, with rows long enough for its vector loops too.
    ours_fn, theirs_fn = (FC.max_pool2d, F.max_pool2d) if dims == 2 else (FC.max_pool1d, F.max_pool1d)
    cases = list(_window_cases(dims == 2)) + [((3, 70) if dims == 2 else (70,), k, s, 1, d, False)
                                              for k, s, d in [(3, 1, 1), (3, 2, 1), (4, 4, 1), (2, 3, 2)]]
    checked = 0
    for size, k, s, p, d, ceil in cases:
        x = torch.randn(2, 3, *size, dtype=dtype)
        x.view(-1)[::11] = float("nan")
        x.view(-1)[3::13] = float("inf")
        x.view(-1)[5::17] = float("-inf")
        kwargs = dict(kernel_size=k, stride=s, padding=p, dilation=d, ceil_mode=ceil)
        if not _torch_accepts(theirs_fn, x, **kwargs):
            with pytest.raises(RuntimeError):
                ours_fn(x, **kwargs)
            continue
        ref = theirs_fn(x, **kwargs)
        with torch.no_grad():
            from_grad_input = ours_fn(x.clone().requires_grad_(), **kwargs)
        for out in (ours_fn(x, **kwargs), from_grad_input):
            assert out.shape == ref.shape and out.dtype == ref.dtype
            torch.testing.assert_close(out, ref, rtol=0, atol=0, equal_nan=True)
        checked += 1
    assert checked > 100


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel,padding,dilation", [(4, 0, 1), (5, 2, 1), (3, 1, 2), (4, 2, 3)])
def test_max_pool_stride_4_on_long_rows(kernel, padding, dilation, dtype):
    # Rows long enough for the vectorised stride-4 path (16 and more interior outputs), with NaNs and
    # ties, in 1-D and 2-D.
    x = torch.randn(2, 3, 203, dtype=dtype)
    x[0, 1, ::7] = float("nan")
    x[1, 2, 40:80] = 1.5
    x.requires_grad_()
    x2 = x.detach().reshape(2, 3, 7, 29).clone().requires_grad_()
    kwargs1 = dict(kernel_size=kernel, stride=4, padding=padding, dilation=dilation, return_indices=True)
    kwargs2 = dict(kernel_size=(2, kernel), stride=(1, 4), padding=(0, padding), dilation=(1, dilation), return_indices=True)
    for t, ours, theirs, kwargs in ((x, FC.max_pool1d, F.max_pool1d, kwargs1), (x2, FC.max_pool2d, F.max_pool2d, kwargs2)):
        (out, idx), (ref, ref_idx) = ours(t, **kwargs), theirs(t, **kwargs)
        assert torch.equal(idx, ref_idx)
        torch.testing.assert_close(out, ref, rtol=0, atol=0, equal_nan=True)
        grad_out = torch.randn_like(ref)
        torch.testing.assert_close(_grads(out, t, grad_out), _grads(ref, t, grad_out), rtol=0, atol=0)


def _same_bits(a, b):
    """Bitwise equality (signed zeros and NaN payloads included)."""
    bits = torch.int32 if a.dtype == torch.float32 else torch.int64
    return a.shape == b.shape and torch.equal(a.contiguous().view(bits), b.contiguous().view(bits))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window", [(4, 4, 0), (3, 2, 1), (3, 2, 0)])
def test_max_pool_values_quick_forms_keep_torch_bits(window, dtype):
    # max_pool1d(4) and max_pool1d(3, 2, p) without indices combine taps by vector maxima and check a NaN
    # probe per row: a NaN at every position of a window (payloads told apart), signed zeros tied in every
    # order, windows of -inf, rows without any of these next to rows with them; and the same windows
    # two rows high (after the first kernel row, the exact rule), at one and two threads.
    k, s, p = window
    torch.manual_seed(1)
    length = 16 * 4 * 5 + 7  # several vector blocks and a last block that overlaps the one before
    x = torch.randn(3, 8, length, dtype=dtype)
    int_t = torch.int32 if dtype == torch.float32 else torch.int64
    for position in range(4):  # row c: NaNs at window position c % 4, payload told apart by the row
        nan = torch.tensor([0x7FC00000 + 1 + position], dtype=torch.int32).view(torch.float32).to(dtype)
        x[0, position, 8 + position::37] = nan
        x[0, position, 9 + position::53] = float("nan")
    x[1, :4] = 0.0
    x[1, 0, ::2] = -0.0  # -0 first in each pair
    x[1, 1, 1::2] = -0.0  # -0 second
    x[1, 2, ::3] = -0.0
    x[1, 3, 5::7] = -0.0
    x[2, 0] = float("-inf")
    x[2, 1, ::5] = float("inf")
    x[2, 2, ::9] = float("-inf")
    x[2, 3, 100:] = float("inf")
    x[2, 3, 101::4] = float("-inf")  # infinities of both signs: a false alarm, the exact pass again
    for threads in (1, 2):
        torch.set_num_threads(threads)
        with torch.no_grad():
            ours, ref = FC.max_pool1d(x, k, s, p), F.max_pool1d(x, k, s, p)
            assert _same_bits(ours, ref), (window, threads, (ours.view(int_t) != ref.view(int_t)).nonzero()[:5])
            x2 = x.reshape(3, 8, 1, length).expand(3, 8, 2, length).contiguous()
            x2[:, :, 1] = x2[:, :, 1].flip(0)
            ours2 = FC.max_pool2d(x2, (2, k), (1, s), (0, p))
            ref2 = F.max_pool2d(x2, (2, k), (1, s), (0, p))
            assert _same_bits(ours2, ref2), (window, threads)


# Windows of the row sweep (max pooling without indices, average pooling): copied padded rows, aligned
# 2x2 / 3x3 / 1-D windows, other windows, rows read in place; rows that are not a whole number of vectors,
# groups of fewer than four rows, planes split into bands (two threads, few planes), ceil mode. The same
# windows with indices check the row kernels on long rows, ties and windows of -inf.
SWEEP_WINDOWS_2D = [
    # kernel, stride, padding, dilation, ceil_mode
    (3, 1, 1, 1, False), (3, 2, 1, 1, False), (3, 2, 1, 1, True), (2, 2, 1, 1, False), (2, 1, 1, 1, True),
    (2, 2, 0, 1, False), (2, 2, 0, 1, True), (2, 1, 0, 1, False), (3, 1, 0, 1, False), (3, 2, 0, 1, False),
    (5, 1, 2, 1, False), (3, 1, 1, 2, False), (3, 2, 1, 2, True), ((3, 2), (2, 1), (1, 0), 1, False),
    ((1, 3), 1, (0, 1), 1, False), (3, (1, 2), 1, 1, False),
]
SWEEP_WINDOWS_1D = [(2, 1, 0, 1, False), (2, 2, 1, 1, True), (3, 1, 1, 1, False), (3, 2, 1, 1, False),
                    (3, 2, 1, 1, True), (3, 2, 0, 1, False), (4, 2, 2, 1, False), (3, 1, 1, 3, False)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dims", [1, 2])
def test_row_sweep_matches_torch_bitwise(dims, dtype):
    torch.manual_seed(0)
    shapes = [(2, 3, 23, 37), (1, 2, 150, 40), (3, 2, 9, 70)] if dims == 2 else [(2, 3, 203), (1, 2, 37)]
    windows = SWEEP_WINDOWS_2D if dims == 2 else SWEEP_WINDOWS_1D
    ops_ = ((FC.max_pool2d, F.max_pool2d, FC.avg_pool2d, F.avg_pool2d) if dims == 2
            else (FC.max_pool1d, F.max_pool1d, FC.avg_pool1d, F.avg_pool1d))
    checked = 0
    for shape, (k, s, p, d, ceil), threads, data in itertools.product(shapes, windows, (1, 2), ("plain", "special", "ties")):
        x = torch.randn(shape, dtype=dtype)
        if data == "special":  # NaNs and infinities: max pooling's quick form hands such rows to torch's full rule
            x.view(-1)[::29] = float("nan")
            x.view(-1)[3::31] = float("inf")
            x.view(-1)[5::37] = float("-inf")
        elif data == "ties":  # few distinct values: which tap's index torch reports
            x = (x * 1.5).round()
            x[..., :3] = float("-inf")
        torch.set_num_threads(threads)
        with torch.no_grad():
            max_ours, max_ref = ops_[0](x, k, s, p, d, ceil), ops_[1](x, k, s, p, d, ceil)
            assert max_ours.shape == max_ref.shape
            assert torch.equal(max_ours.nan_to_num(7.0), max_ref.nan_to_num(7.0)), (shape, k, s, p, d, ceil)
            assert torch.equal(max_ours.isnan(), max_ref.isnan())
            # With indices (the row kernels: long rows, ties, windows of -inf).
            (max_ours, idx_ours), (_, idx_ref) = ops_[0](x, k, s, p, d, ceil, True), ops_[1](x, k, s, p, d, ceil, True)
            assert torch.equal(idx_ours, idx_ref), (shape, k, s, p, d, ceil, data)
            assert torch.equal(max_ours.nan_to_num(7.0), max_ref.nan_to_num(7.0))
            if d == 1:
                for include_pad in (True, False):
                    avg_ours = ops_[2](x, k, s, p, ceil, include_pad)
                    avg_ref = ops_[3](x, k, s, p, ceil, include_pad)
                    assert torch.equal(avg_ours.nan_to_num(7.0), avg_ref.nan_to_num(7.0)), (shape, k, s, p, ceil)
        checked += 1
    assert checked == len(shapes) * len(windows) * 6


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dims", [1, 2])
def test_avg_pool_matches_torch(dims, dtype):
    checked = 0
    for size, k, s, p, d, ceil in _window_cases(dims == 2):
        if d != 1:
            continue
        x = torch.randn(2, 3, *size, dtype=dtype, requires_grad=True)
        for count_include_pad in (True, False):
            kwargs = dict(kernel_size=k, stride=s, padding=p, ceil_mode=ceil, count_include_pad=count_include_pad)
            overrides = [None, 3, -2] if dims == 2 else [None]
            for divisor in overrides:
                if dims == 2:
                    ours = lambda t: FC.avg_pool2d(t, **kwargs, divisor_override=divisor)  # noqa: E731
                    theirs = lambda t: F.avg_pool2d(t, **kwargs, divisor_override=divisor)  # noqa: E731
                else:
                    ours = lambda t: FC.avg_pool1d(t, **kwargs)  # noqa: E731
                    theirs = lambda t: F.avg_pool1d(t, **kwargs)  # noqa: E731
                if not _torch_accepts(theirs, x.detach()):
                    with pytest.raises(RuntimeError):
                        ours(x)
                    continue
                _compare(ours, theirs, x, dtype)
                checked += 1
    assert checked > 100


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel,stride,padding", [(3, 1, 1), (5, 1, 2), (2, 1, 0), (2, 2, 0), (2, 2, 1), (3, 3, 1),
                                                   (3, 2, 1)])
def test_avg_pool_backward_on_long_rows(kernel, stride, padding, dtype):
    # Rows long enough for the vectorised input-gradient paths (stride 1, and stride = kernel = 2: 16 and
    # more columns of whole windows, a last vector that overlaps the one before), in 1-D and 2-D, with
    # ceil mode; every element's sum in torch's order, so the gradients are identical.
    for length in (37, 70):
        x = torch.randn(2, 3, length, dtype=dtype, requires_grad=True)
        x2 = torch.randn(2, 3, 5, length, dtype=dtype, requires_grad=True)
        for ceil, include_pad in ((False, True), (True, False)):
            kwargs = dict(kernel_size=kernel, stride=stride, padding=padding, ceil_mode=ceil,
                          count_include_pad=include_pad)
            kwargs2 = dict(kwargs, kernel_size=(2, kernel), stride=(1, stride), padding=(1, padding))
            for t, ours, theirs, kw in ((x, FC.avg_pool1d, F.avg_pool1d, kwargs), (x2, FC.avg_pool2d, F.avg_pool2d, kwargs2)):
                out, ref = ours(t, **kw), theirs(t, **kw)
                torch.testing.assert_close(out, ref, **TOL[dtype])
                grad_out = torch.randn_like(ref)
                torch.testing.assert_close(_grads(out, t, grad_out), _grads(ref, t, grad_out), rtol=0, atol=0)


ADAPTIVE_2D = [
    ((5, 7), (3, 4)),
    ((8, 8), 1),
    ((8, 8), (2, 4)),
    ((7, 9), (10, 12)),       # output larger than the input
    ((13, 5), (None, 2)),     # None keeps the input size
    ((6, 6), (4, None)),
    ((1, 1), 3),
    ((9, 11), (9, 11)),       # identity
]
ADAPTIVE_1D = [(7, 3), (16, 1), (5, 8), (10, 10), (13, 4)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["avg", "max"])
def test_adaptive_pool_matches_torch(kind, dtype):
    for size, out_size in ADAPTIVE_2D:
        x = torch.randn(2, 3, *size, dtype=dtype, requires_grad=True)
        if kind == "avg":
            _compare(lambda t: FC.adaptive_avg_pool2d(t, out_size), lambda t: F.adaptive_avg_pool2d(t, out_size), x, dtype)
        else:
            _compare(lambda t: FC.adaptive_max_pool2d(t, out_size, True),
                     lambda t: F.adaptive_max_pool2d(t, out_size, True), x, dtype, exact=True)
    for length, out_size in ADAPTIVE_1D:
        x = torch.randn(2, 3, length, dtype=dtype, requires_grad=True)
        if kind == "avg":
            _compare(lambda t: FC.adaptive_avg_pool1d(t, out_size), lambda t: F.adaptive_avg_pool1d(t, out_size), x, dtype)
        else:
            _compare(lambda t: FC.adaptive_max_pool1d(t, out_size, True),
                     lambda t: F.adaptive_max_pool1d(t, out_size, True), x, dtype, exact=True)


def test_defaults_and_return_indices_flag():
    x = torch.randn(2, 3, 9, 9)
    assert torch.equal(FC.max_pool2d(x, 3), F.max_pool2d(x, 3))
    assert torch.equal(FC.max_pool2d(x, 2, ()), F.max_pool2d(x, 2, ()))   # empty stride means kernel_size
    assert not isinstance(FC.max_pool1d(x[0], 2), tuple)
    assert not isinstance(FC.adaptive_max_pool2d(x, 2), tuple)
    torch.testing.assert_close(FC.avg_pool2d(x, (2, 3)), F.avg_pool2d(x, (2, 3)))
    torch.testing.assert_close(FC.avg_pool1d(x[0], 4, 1, 2), F.avg_pool1d(x[0], 4, 1, 2))
    # 1-element sequences broadcast over both dims, as in torch
    torch.testing.assert_close(FC.max_pool2d(x, (3,), (2,), (1,)), F.max_pool2d(x, (3,), (2,), (1,)))


# ----------------------------------------------------------------------------------------------
# Max pooling semantics: ties, NaN, infinities, unpooling
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dims", [1, 2])
def test_max_pool_ties_pick_torchs_index(dims):
    # Few distinct values: nearly every window has ties; the first maximum in row-major order wins.
    x = torch.randint(0, 3, (2, 4, 11, 10) if dims == 2 else (2, 4, 23)).double()
    for k, s, p, d in [(3, 1, 1, 1), (3, 2, 1, 1), (2, 2, 0, 1), (3, 1, 1, 2), (4, 3, 2, 1)]:
        fc, tf = (FC.max_pool2d, F.max_pool2d) if dims == 2 else (FC.max_pool1d, F.max_pool1d)
        ours, theirs = fc(x, k, s, p, d, True, True), tf(x, k, s, p, d, True, True)
        assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1]), (k, s, p, d)
    fa, ta = (FC.adaptive_max_pool2d, F.adaptive_max_pool2d) if dims == 2 else (FC.adaptive_max_pool1d,
                                                                                 F.adaptive_max_pool1d)
    # 4 gives uneven adaptive windows; the second size divides the input (the windowed-kernel route)
    for out_size in (4, (1, 5) if dims == 2 else 1):
        ours, theirs = fa(x, out_size, True), ta(x, out_size, True)
        assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1]), out_size


def test_max_pool_nan_wins_and_infinities():
    x = torch.randn(2, 3, 9, 11)
    x[0, 0, 1, 1] = float("nan")
    x[0, 1, 4, 4:7] = float("nan")                # several NaNs in one window: torch reports the last one
    x[1, 2] = float("-inf")                        # windows of -inf only
    x[1, 1, 3, 3] = float("inf")
    for k, s, p in [(3, 2, 1), (3, 1, 0), (2, 2, 1)]:
        ours, theirs = FC.max_pool2d(x, k, s, p, return_indices=True), F.max_pool2d(x, k, s, p, return_indices=True)
        assert torch.equal(ours[0].isnan(), theirs[0].isnan())
        torch.testing.assert_close(ours[0], theirs[0], equal_nan=True)
        assert torch.equal(ours[1], theirs[1])
    for out_size in (1, 3, (4, 5)):
        ours, theirs = FC.adaptive_max_pool2d(x, out_size, True), F.adaptive_max_pool2d(x, out_size, True)
        torch.testing.assert_close(ours[0], theirs[0], equal_nan=True)
        assert torch.equal(ours[1], theirs[1])


def test_max_pool_window_outside_input():
    # Dilation can place every tap of a window outside the input. torch returns -inf and an index past
    # the plane (its backward then writes out of bounds); fastconv returns the same forward result and
    # a backward that drops the gradient of such windows.
    x = torch.randn(1, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    ours = FC.max_pool2d(x, 2, 1, 1, 3, return_indices=True)
    theirs = F.max_pool2d(x.detach(), 2, 1, 1, 3, return_indices=True)
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
    assert torch.isinf(ours[0]).all() and (ours[1] >= 4).all()
    ours[0].sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_indices_work_with_max_unpool():
    x = torch.randn(2, 3, 10, 12)
    out, idx = FC.max_pool2d(x, 2, 2, return_indices=True)
    ref_out, ref_idx = F.max_pool2d(x, 2, 2, return_indices=True)
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(F.max_unpool2d(out, idx, 2, 2, output_size=x.shape[-2:]),
                               F.max_unpool2d(ref_out, ref_idx, 2, 2, output_size=x.shape[-2:]))
    x1 = torch.randn(2, 3, 15)
    out1, idx1 = FC.max_pool1d(x1, 3, 2, 1, return_indices=True)
    torch.testing.assert_close(F.max_unpool1d(out1, idx1, 3, 2, 1, output_size=x1.shape[-1:]),
                               F.max_unpool1d(*F.max_pool1d(x1, 3, 2, 1, return_indices=True), 3, 2, 1,
                                              output_size=x1.shape[-1:]))


# ----------------------------------------------------------------------------------------------
# Layouts and shapes: batch 0, unbatched, non-contiguous, channels_last, empty adaptive output
# ----------------------------------------------------------------------------------------------

POOL_CALLS_2D = [
    ("max_pool2d", dict(kernel_size=3, stride=2, padding=1, return_indices=True)),
    ("max_pool2d", dict(kernel_size=(2, 3), stride=1, dilation=2, ceil_mode=True)),
    ("avg_pool2d", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)),
    ("avg_pool2d", dict(kernel_size=2, divisor_override=3)),
    ("adaptive_avg_pool2d", dict(output_size=(3, 5))),
    ("adaptive_max_pool2d", dict(output_size=(4, 3), return_indices=True)),
]
POOL_CALLS_1D = [
    ("max_pool1d", dict(kernel_size=3, stride=2, padding=1, return_indices=True)),
    ("avg_pool1d", dict(kernel_size=4, stride=3, padding=2, ceil_mode=True)),
    ("adaptive_avg_pool1d", dict(output_size=5)),
    ("adaptive_max_pool1d", dict(output_size=4, return_indices=True)),
]


def _call(name, module, x, kwargs):
    return getattr(module, name)(x, **kwargs)


@pytest.mark.parametrize("name,kwargs", POOL_CALLS_2D + POOL_CALLS_1D, ids=lambda v: v if isinstance(v, str) else "")
def test_batch_zero_and_unbatched(name, kwargs):
    two_d = name.endswith("2d")
    spatial = (9, 10) if two_d else (13,)
    empty = torch.randn(0, 3, *spatial, dtype=torch.float64, requires_grad=True)
    ours, theirs = _call(name, FC, empty, kwargs), _call(name, F, empty, kwargs)
    ours, theirs = (ours if isinstance(ours, tuple) else (ours,)), (theirs if isinstance(theirs, tuple) else (theirs,))
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape and a.dtype == b.dtype
    ours[0].sum().backward()
    assert empty.grad.shape == empty.shape
    unbatched = torch.randn(3, *spatial, dtype=torch.float64, requires_grad=True)
    _compare(lambda t: _call(name, FC, t, kwargs), lambda t: _call(name, F, t, kwargs), unbatched, torch.float64)


@pytest.mark.parametrize("name,kwargs", POOL_CALLS_2D, ids=lambda v: v if isinstance(v, str) else "")
def test_noncontiguous_and_channels_last(name, kwargs):
    base = torch.randn(2, 6, 14, 12, dtype=torch.float64)
    layouts = [
        base[:, ::2, 1:, ::2],                                  # strided slices
        base.transpose(2, 3),                                   # transposed spatial dims
        base.contiguous(memory_format=torch.channels_last),
        base.permute(1, 0, 2, 3),                               # batch and channels swapped
        base[:1, :1].expand(3, 4, 14, 12),                      # zero strides
    ]
    for x in layouts:
        x = x.detach().requires_grad_()
        _compare(lambda t: _call(name, FC, t, kwargs), lambda t: _call(name, F, t, kwargs), x, torch.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels", [20, 48])
def test_channels_last_kernel(channels, dtype):
    # Channels-last inputs with at least one vector of channels are pooled without an NCHW copy,
    # vectorised over channels; 20 and 48 channels also exercise the overlapping last channel block.
    x = torch.randn(2, channels, 11, 10, dtype=dtype)
    x[0, 3, 4, 4] = float("nan")
    x[1, 7, 2:5, 2:5] = float("-inf")
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    for k, s, p, d, ceil in [(3, 2, 1, 1, False), (2, 2, 0, 1, True), (3, 1, 1, 2, True), ((2, 3), (1, 2), (1, 0), 1, False)]:
        ours = FC.max_pool2d(x, k, s, p, d, ceil, return_indices=True)
        theirs = F.max_pool2d(x.detach().contiguous(), k, s, p, d, ceil, return_indices=True)
        torch.testing.assert_close(ours[0], theirs[0], equal_nan=True)
        assert torch.equal(ours[1], theirs[1])
        for count_include_pad, divisor in [(True, None), (False, None), (True, 5)]:
            if d != 1:
                continue
            ours = FC.avg_pool2d(x, k, s, p, ceil, count_include_pad, divisor)
            theirs = F.avg_pool2d(x.detach().contiguous(), k, s, p, ceil, count_include_pad, divisor)
            torch.testing.assert_close(ours, theirs, equal_nan=True, **TOL[dtype])
    clean = torch.randn(2, channels, 9, 9, dtype=dtype).contiguous(memory_format=torch.channels_last)
    clean.requires_grad_()
    _compare(lambda t: FC.max_pool2d(t, 3, 2, 1), lambda t: F.max_pool2d(t, 3, 2, 1), clean, dtype)
    _compare(lambda t: FC.avg_pool2d(t, 3, 2, 1), lambda t: F.avg_pool2d(t, 3, 2, 1), clean, dtype)


_ISA_CHECK = textwrap.dedent("""
    import torch, torch.nn.functional as F
    import fastconv, fastconv.functional as FC
    assert fastconv.build_info()["cpu_isa"] == "{isa}", fastconv.build_info()
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        # The values-only max pooling on rows long enough for its vector loops (windows side by side too).
        v = torch.randn(2, 3, 203, dtype=dtype)
        v[0, 1, ::7] = float("nan")
        v[1, 2, 40:80] = 1.5
        for k, s in [(4, 4), (3, 2), (2, 2), (5, 4)]:
            assert torch.equal(FC.max_pool1d(v, k, s).nan_to_num(7.0), F.max_pool1d(v, k, s).nan_to_num(7.0)), (k, s)
        for shape in [(2, 3, 13, 37), (1, 20, 9, 40)]:
            x = torch.randn(shape, dtype=dtype)
            x[0, 0, 1, 5] = float("nan")
            # The row sweep: max pooling values (no indices) and average pooling on NCHW planes.
            for k, s, p, d in [(3, 2, 1, 1), (3, 1, 1, 1), (2, 2, 0, 1), (2, 2, 1, 1), (3, 1, 1, 2), (5, 1, 2, 1)]:
                a, b = FC.max_pool2d(x, k, s, p, d), F.max_pool2d(x, k, s, p, d)
                assert torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0)), (k, s, p, d)
                if d == 1:
                    assert torch.equal(FC.avg_pool2d(x, k, s, p).nan_to_num(7.0), F.avg_pool2d(x, k, s, p).nan_to_num(7.0))
            for layout in (x, x.contiguous(memory_format=torch.channels_last)):
                for k, s, p, d in [(3, 2, 1, 1), (2, 2, 0, 1), (3, 1, 1, 2), (5, 3, 2, 1), (3, 4, 1, 1)]:
                    a, b = FC.max_pool2d(layout, k, s, p, d, True, True), F.max_pool2d(x, k, s, p, d, True, True)
                    assert torch.equal(a[1], b[1]) and torch.allclose(a[0], b[0], equal_nan=True), (k, s, p, d)
                    if d == 1:
                        a, b = FC.avg_pool2d(layout, k, s, p, True, False), F.avg_pool2d(x, k, s, p, True, False)
                        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True), (k, s, p)
                a, b = FC.adaptive_avg_pool2d(layout, (4, 7)), F.adaptive_avg_pool2d(x, (4, 7))
                assert torch.allclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True)
            y = torch.randn(shape, dtype=dtype, requires_grad=True)
            for fc, tf in [(lambda t: FC.avg_pool2d(t, 3, 2, 1), lambda t: F.avg_pool2d(t, 3, 2, 1)),
                           (lambda t: FC.max_pool2d(t, 3, 2, 1), lambda t: F.max_pool2d(t, 3, 2, 1))]:
                go = torch.randn_like(tf(y))
                ga, = torch.autograd.grad(fc(y), y, go)
                gb, = torch.autograd.grad(tf(y), y, go)
                assert torch.allclose(ga, gb, rtol=1e-5, atol=1e-6)
    print("ok")
""")


@pytest.mark.parametrize("isa", ["avx2", "baseline"])
def test_narrower_instruction_sets(isa):
    # The kernels are compiled per instruction set and the widest the CPU has is picked once per
    # process; FASTCONV_CPU_ISA forces a narrower one, so each variant runs in its own process.
    if fastconv.build_info()["cpu_isa"] == "baseline" and isa != "baseline":
        pytest.skip("this build or CPU has no wider kernels than the baseline")
    env = dict(os.environ, FASTCONV_CPU_ISA=isa)
    result = subprocess.run([sys.executable, "-c", _ISA_CHECK.format(isa=isa)], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stdout + result.stderr


@pytest.mark.parametrize("name", ["adaptive_avg_pool2d", "adaptive_max_pool2d"])
def test_adaptive_empty_output(name):
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    for out_size in [(0, 3), 0]:
        out = _call(name, FC, x, dict(output_size=out_size))
        assert out.shape == _call(name, F, x.detach(), dict(output_size=out_size)).shape
        # An empty output has a zero gradient (torch's own backward raises here).
        assert torch.equal(torch.autograd.grad(out, x, torch.ones_like(out))[0], torch.zeros_like(x))
    x0 = torch.randn(0, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    out = _call(name, FC, x0, dict(output_size=2))
    assert torch.autograd.grad(out, x0, torch.ones_like(out))[0].shape == x0.shape
    # An empty channel dim: adaptive average pooling allows it, as torch does.
    empty_c = torch.randn(2, 0, 5, 5)
    if name == "adaptive_avg_pool2d":
        assert FC.adaptive_avg_pool2d(empty_c, 2).shape == F.adaptive_avg_pool2d(empty_c, 2).shape


# ----------------------------------------------------------------------------------------------
# Gradients: gradcheck, determinism, thread counts
# ----------------------------------------------------------------------------------------------

GRADCHECK_CALLS = [
    lambda x: FC.max_pool2d(x, 3, 2, 1),
    lambda x: FC.max_pool2d(x, (2, 3), (1, 2), (1, 0), (2, 1), ceil_mode=True),
    lambda x: FC.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False),
    lambda x: FC.avg_pool2d(x, (3, 2), 1, (1, 0), divisor_override=5),
    lambda x: FC.adaptive_avg_pool2d(x, (3, 4)),
    lambda x: FC.adaptive_avg_pool2d(x, (9, 8)),
    lambda x: FC.adaptive_max_pool2d(x, (3, 2)),
    lambda x: FC.max_pool1d(x.flatten(2), 4, 3, 2, ceil_mode=True),
    lambda x: FC.avg_pool1d(x.flatten(2), 3, 2, 1),
    lambda x: FC.adaptive_avg_pool1d(x.flatten(2), 7),
    lambda x: FC.adaptive_max_pool1d(x.flatten(2), 5),
]


@pytest.mark.parametrize("index", range(len(GRADCHECK_CALLS)))
def test_gradcheck(index):
    x = torch.randn(2, 2, 7, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(GRADCHECK_CALLS[index], (x,))


def test_backward_is_deterministic_and_thread_count_independent():
    x = torch.randn(4, 8, 33, 31, requires_grad=True)
    calls = [lambda t: FC.max_pool2d(t, 3, 1, 1), lambda t: FC.avg_pool2d(t, 3, 2, 1, ceil_mode=True),
             lambda t: FC.adaptive_avg_pool2d(t, 7), lambda t: FC.adaptive_max_pool2d(t, (5, 9))]
    previous = torch.get_num_threads()
    try:
        for call in calls:
            results = []
            for threads in (2, 2, 1):
                torch.set_num_threads(threads)
                out = call(x)
                grad_out = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
                results.append((out, _grads(out, x, grad_out)))
            for out, grad in results[1:]:
                assert torch.equal(out, results[0][0]) and torch.equal(grad, results[0][1])
    finally:
        torch.set_num_threads(previous)


def test_double_backward_raises():
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(FC.avg_pool2d(x, 2).pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        gx.sum().backward()


# ----------------------------------------------------------------------------------------------
# Operators: opcheck, torch.compile
# ----------------------------------------------------------------------------------------------


def test_opcheck_every_pooling_op():
    x = torch.randn(2, 3, 9, 8, requires_grad=True)
    xd = x.detach()
    window = ([3, 2], [2, 1], [1, 1], [1, 2], True)
    torch.library.opcheck(ops.max_pool2d, (x, *window))
    torch.library.opcheck(ops.max_pool2d, (x[0], [2, 2], [2, 2], [0, 0], [1, 1], False))
    torch.library.opcheck(ops.max_pool2d_values, (xd, *window))
    out, idx = ops.max_pool2d(xd, *window)
    torch.library.opcheck(ops.max_pool2d_backward, (torch.randn_like(out), xd, idx, *window))
    avg = ([3, 3], [2, 2], [1, 1], True, False, None)
    torch.library.opcheck(ops.avg_pool2d, (x, *avg))
    torch.library.opcheck(ops.avg_pool2d, (x, [2, 2], [1, 1], [0, 0], False, True, 3))
    out = ops.avg_pool2d(xd, *avg)
    torch.library.opcheck(ops.avg_pool2d_backward, (torch.randn_like(out), xd, *avg))
    torch.library.opcheck(ops.adaptive_avg_pool2d, (x, [4, 5]))
    torch.library.opcheck(ops.adaptive_avg_pool2d_backward, (torch.randn(2, 3, 4, 5), xd))
    torch.library.opcheck(ops.adaptive_max_pool2d, (x, [4, 3]))
    _, idx = ops.adaptive_max_pool2d(xd, [4, 3])
    torch.library.opcheck(ops.adaptive_max_pool2d_backward, (torch.randn(2, 3, 4, 3), xd, idx))
    # Channels-last inputs take their own kernels; outputs and input gradients come channels-last, as the
    # fake kernels say.
    x_cl = torch.randn(2, 20, 9, 8).contiguous(memory_format=torch.channels_last).requires_grad_()
    xd_cl = x_cl.detach()
    torch.library.opcheck(ops.max_pool2d, (x_cl, *window))
    torch.library.opcheck(ops.max_pool2d_values, (xd_cl, *window))
    out, idx = ops.max_pool2d(xd_cl, *window)
    torch.library.opcheck(ops.max_pool2d_backward, (torch.randn_like(out), xd_cl, idx, *window))
    torch.library.opcheck(ops.avg_pool2d, (x_cl, *avg))
    torch.library.opcheck(ops.avg_pool2d_backward, (torch.randn_like(ops.avg_pool2d(xd_cl, *avg)), xd_cl, *avg))
    torch.library.opcheck(ops.adaptive_avg_pool2d, (x_cl, [4, 5]))
    torch.library.opcheck(ops.adaptive_avg_pool2d_backward, (torch.randn(2, 20, 4, 5), xd_cl))
    torch.library.opcheck(ops.adaptive_max_pool2d, (x_cl, [3, 4]))
    _, idx = ops.adaptive_max_pool2d(xd_cl, [3, 4])
    torch.library.opcheck(ops.adaptive_max_pool2d_backward, (torch.randn(2, 20, 3, 4), xd_cl, idx))


def _memory_format(t):
    if t.is_contiguous():
        return "contiguous"
    return "channels_last" if t.is_contiguous(memory_format=torch.channels_last) else "strided"


@pytest.mark.parametrize("layout", memory_formats.POOL_LAYOUTS)
def test_outputs_and_input_gradients_keep_torchs_memory_format(layout):
    # torch gives pooling outputs, indices and input gradients the input's (suggested) memory format.
    x = memory_formats.pool_input(layout, lambda *shape: torch.randn(*shape, dtype=torch.float64))
    for name, call in memory_formats.POOL_CALLS:
        ours_x, theirs_x = x.clone().requires_grad_(), x.clone().requires_grad_()
        ours, theirs = memory_formats.as_tuple(call(FC, ours_x)), memory_formats.as_tuple(call(F, theirs_x))
        for a, b in zip(ours, theirs):
            assert a.stride() == b.stride(), (name, a.stride(), b.stride())
            torch.testing.assert_close(a, b)
        with torch.no_grad():  # the values-only max pooling
            assert memory_formats.as_tuple(call(FC, x))[0].stride() == ours[0].stride(), name
        # The backward ops themselves, called as autograd calls them.
        grad = torch.randn_like(ours[0])
        if name == "max_pool2d":
            grad_input = ops.max_pool2d_backward(grad, x, ours[1], [3, 3], [2, 2], [1, 1], [1, 1], False)
        elif name == "avg_pool2d":
            grad_input = ops.avg_pool2d_backward(grad, x, [2, 2], [2, 2], [0, 0], False, True, None)
        elif name == "adaptive_avg_pool2d":
            grad_input = ops.adaptive_avg_pool2d_backward(grad, x)
        else:
            grad_input = ops.adaptive_max_pool2d_backward(grad, x, ours[1])
        (expected,) = torch.autograd.grad(theirs[0], theirs_x, grad)
        assert _memory_format(grad_input) == _memory_format(expected) == _memory_format(ours[0]), name
        torch.testing.assert_close(grad_input, expected)


def test_torch_compile_fullgraph_matches_eager():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(4, 3, 3, 3) * 0.3)

        def forward(self, x):
            y = torch.nn.functional.conv2d(x, self.w, padding=1)
            a = FC.max_pool2d(y, 3, 2, 1)
            b = FC.avg_pool2d(y, 2, ceil_mode=True, count_include_pad=False)
            c = FC.adaptive_avg_pool2d(a, (3, None)).sum() + FC.adaptive_max_pool2d(b, 2).sum()
            d = FC.max_pool1d(y.flatten(2), 4, 3, 1).sum() + FC.avg_pool1d(y.flatten(2), 3).sum()
            e = FC.adaptive_avg_pool1d(y.flatten(2), 5).sum() + FC.adaptive_max_pool1d(y.flatten(2), 6).sum()
            return c + d + e

    torch.manual_seed(0)
    net = Net()
    x = torch.randn(2, 3, 11, 10)
    eager = net(x)
    eager_grads = torch.autograd.grad(eager, list(net.parameters()))
    compiled = torch.compile(net, fullgraph=True)
    out = compiled(x)
    grads = torch.autograd.grad(out, list(net.parameters()))
    torch.testing.assert_close(out, eager)
    for g1, g2 in zip(grads, eager_grads):
        torch.testing.assert_close(g1, g2)


# ----------------------------------------------------------------------------------------------
# Bad input: same exception class as torch
# ----------------------------------------------------------------------------------------------

X4, X3 = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8)
BAD_CALLS = [
    ("max_pool2d", (X4, 0)), ("max_pool2d", (X4, -1, 1)), ("max_pool2d", (X4, 2, 0)), ("max_pool2d", (X4, 2, -1)),
    ("max_pool2d", (X4, 2, 1, -1)), ("max_pool2d", (X4, 3, 1, 2)), ("max_pool2d", (X4, 3, 1, 2, 2)),
    ("max_pool2d", (X4, 2, 1, 0, 0)), ("max_pool2d", (X4, 9)), ("max_pool2d", (X4, (1, 2, 3))),
    ("max_pool2d", (X4, 2, 2, ())), ("max_pool2d", (X4, 2.0)), ("max_pool2d", (X4, (2, 2.5))),
    ("max_pool2d", (torch.randn(3, 8), 2)), ("max_pool2d", (torch.randn(1, 1, 3, 8, 8), 2)),
    ("max_pool2d", (torch.randn(2, 0, 8, 8), 2)), ("max_pool2d", (torch.randn(2, 3, 0, 8), 2)),
    ("max_pool2d", (torch.randn(0, 8, 8), 2)), ("max_pool2d", ([1.0, 2.0], 2)),
    ("avg_pool2d", (X4, 0)), ("avg_pool2d", (X4, 2, 0)), ("avg_pool2d", (X4, 2, 1, -1)), ("avg_pool2d", (X4, 3, 1, 2)),
    ("avg_pool2d", (X4, 9)), ("avg_pool2d", (X4, 2, 2, 0, False, True, 0)), ("avg_pool2d", (X4, 2, 2, 0, False, True, 2.5)),
    ("avg_pool2d", (torch.randn(3, 8), 2)), ("avg_pool2d", (torch.randn(8), 2)),
    ("avg_pool2d", (torch.randn(1, 1, 3, 8, 8), 2)), ("avg_pool2d", (torch.randn(2, 0, 8, 8), 2)),
    ("avg_pool2d", (X4, (2, 2, 2))),
    ("max_pool1d", (X3, 0)), ("max_pool1d", (X3, 2, 0)), ("max_pool1d", (X3, 2, 1, -1)), ("max_pool1d", (X3, 3, 1, 2)),
    ("max_pool1d", (X3, 2, 1, 0, 0)), ("max_pool1d", (X3, 9)), ("max_pool1d", (X3, (2, 2))),
    ("max_pool1d", (torch.randn(8), 2)), ("max_pool1d", (X4, 2)), ("max_pool1d", (torch.randn(2, 0, 8), 2)),
    ("max_pool1d", (torch.randn(2, 3, 0), 2)),
    ("avg_pool1d", (X3, 0)), ("avg_pool1d", (X3, 2, -1)), ("avg_pool1d", (X3, 3, 1, 2)), ("avg_pool1d", (X3, 9)),
    ("avg_pool1d", (X3, 2.0)), ("avg_pool1d", (torch.randn(8), 2)), ("avg_pool1d", (X4, 2)),
    ("adaptive_avg_pool2d", (X4, (-1, 2))), ("adaptive_avg_pool2d", (X4, (2, 2, 2))), ("adaptive_avg_pool2d", (X4, (2,))),
    ("adaptive_avg_pool2d", (X4, None)), ("adaptive_avg_pool2d", (X4, 2.0)), ("adaptive_avg_pool2d", (X4, (2.0, 2))),
    ("adaptive_avg_pool2d", (torch.randn(3, 8), 2)), ("adaptive_avg_pool2d", (torch.randn(2, 3, 0, 8), 2)),
    ("adaptive_max_pool2d", (X4, (-1, 2))), ("adaptive_max_pool2d", (X4, (2, 2, 2))), ("adaptive_max_pool2d", (X4, None)),
    ("adaptive_max_pool2d", (torch.randn(2, 0, 8, 8), 2)), ("adaptive_max_pool2d", (torch.randn(1, 1, 3, 8, 8), 2)),
    ("adaptive_avg_pool1d", (X3, -1)), ("adaptive_avg_pool1d", (X3, (2, 2))), ("adaptive_avg_pool1d", (X3, (None,))),
    ("adaptive_avg_pool1d", (torch.randn(8), 2)), ("adaptive_avg_pool1d", (torch.randn(2, 3, 0), 2)),
    ("adaptive_max_pool1d", (X3, -1)), ("adaptive_max_pool1d", (X3, None)), ("adaptive_max_pool1d", (X4, 2)),
    ("adaptive_max_pool1d", (torch.randn(2, 0, 8), 2)),
    # torch checks every argument's type before any length or rank (TypeError first) ...
    ("avg_pool2d", (torch.randn(3, 8), (1, 2, 3), 2.0)), ("max_pool2d", (torch.randn(3, 8), 2.0)),
    ("max_pool2d", (X4, (2, 2, 2), 2.0)), ("adaptive_avg_pool1d", (X4, (2.0,))),
    # ... then lengths before avg_pool2d's rank (IndexError) ...
    ("avg_pool2d", (torch.randn(3, 8), (1, 2, 3))), ("avg_pool2d", (torch.randn(3, 8), 2, 2, 0, False, True, 0)),
    # ... a bool is refused as an int only in first place of a sequence ...
    ("max_pool2d", (X4, (True, 2))), ("max_pool2d", (X4, [True])), ("adaptive_max_pool2d", (X4, (True, 2))),
    # ... and adaptive 2-D output sizes given as a sequence need a longer input (ValueError).
    ("adaptive_avg_pool2d", (torch.randn(3, 8), (1, 1))), ("adaptive_max_pool2d", (X4, (2, 2, 2, 2))),
    ("adaptive_avg_pool2d", (X4, (2, 2, 2))), ("adaptive_avg_pool2d", (torch.randn(8), 1)),
    ("adaptive_avg_pool2d", (X4, 2.5)), ("adaptive_max_pool2d", (torch.randn(3, 8), 1)),
]


@pytest.mark.parametrize("name,args", BAD_CALLS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(BAD_CALLS)])
def test_bad_input_raises_like_torch(name, args):
    with pytest.raises(Exception) as theirs:
        getattr(F, name)(*args)
    with pytest.raises(Exception) as ours:
        getattr(FC, name)(*args)
    assert type(ours.value) is type(theirs.value), (ours.value, theirs.value)
    assert str(ours.value)


def test_torch_quirks_that_are_not_errors():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    # A bool after the first entry of a sequence counts as an int.
    assert torch.equal(FC.max_pool2d(x, (2, True)), F.max_pool2d(x, (2, True)))
    torch.testing.assert_close(FC.avg_pool2d(x, 2, 2, (0, True)), F.avg_pool2d(x, 2, 2, (0, True)))
    torch.testing.assert_close(FC.adaptive_avg_pool2d(x, (3, True)), F.adaptive_avg_pool2d(x, (3, True)))
    # None entries keep the input's size, also in an output_size with more than 2 entries... which then
    # fails the length check, as in torch.
    with pytest.raises(RuntimeError):
        FC.adaptive_avg_pool2d(x, (None, None, None))


@pytest.mark.parametrize("shape", [(3, 8), (2, 3, 4, 5, 6), (2, 0, 5, 5), (2, 3, 0, 4), (0, 0, 0, 0), (3, 4, 0)])
def test_global_average_accepts_what_torch_mean_accepts(shape):
    # torch computes an adaptive average to 1 x 1 as a mean over the last two dims: any rank >= 2,
    # empty dims included (an empty plane averages to NaN), and a plain mean's gradient.
    # output_size 1 and (1, 1) (nn.AdaptiveAvgPool2d((1, 1)), ResNet's head) go straight to the op from 3 dims.
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    for size in (1, (1, 1)) if len(shape) >= 3 else (1,):
        for t in (x, x.to(memory_format=torch.channels_last)) if len(shape) == 4 else (x,):
            ours, theirs = FC.adaptive_avg_pool2d(t, size), F.adaptive_avg_pool2d(t, size)
            assert ours.shape == theirs.shape and ours.stride() == theirs.stride(), size
            torch.testing.assert_close(ours, theirs, equal_nan=True)
            grad_out = torch.randn_like(theirs)
            torch.testing.assert_close(_grads(ours, x, grad_out), _grads(theirs, x, grad_out))
    for bad in (x.detach().long(), x.detach().bool()):
        with pytest.raises(RuntimeError):
            F.adaptive_avg_pool2d(bad, 1)
        with pytest.raises(RuntimeError):
            FC.adaptive_avg_pool2d(bad, 1)
    x1 = torch.randn(shape[-2:], dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(FC.adaptive_avg_pool1d(x1, 1), F.adaptive_avg_pool1d(x1, 1), equal_nan=True)


def test_error_messages_name_the_argument():
    with pytest.raises(RuntimeError, match=r"padding should be at most half of kernel size.*padding=\[2, 2\]"):
        FC.max_pool2d(X4, 3, 1, 2)
    with pytest.raises(RuntimeError, match=r"max_pool1d\(\): stride must be greater than zero, but got stride=0"):
        FC.max_pool1d(X3, 2, 0)
    with pytest.raises(RuntimeError, match=r"output size .* is too small"):
        FC.avg_pool2d(X4, 9)
    with pytest.raises(RuntimeError, match=r"output_size must be greater than or equal to 0.*\[-1, 2\]"):
        FC.adaptive_max_pool2d(X4, (-1, 2))
    for bad in (X4.half(), X4.to(torch.int64), X4.bfloat16()):
        with pytest.raises(RuntimeError, match="float32 and float64"):
            FC.max_pool2d(bad, 2)
        with pytest.raises(RuntimeError, match="float32 and float64"):
            FC.adaptive_avg_pool2d(bad, 2)


def test_backward_ops_check_their_arguments():
    x = torch.randn(2, 3, 8, 8)
    out, idx = ops.max_pool2d(x, [2, 2], [2, 2], [0, 0], [1, 1], False)
    with pytest.raises(RuntimeError, match="grad_output of size"):
        ops.max_pool2d_backward(torch.randn(2, 3, 5, 4), x, idx, [2, 2], [2, 2], [0, 0], [1, 1], False)
    with pytest.raises(RuntimeError, match="indices must be int64"):
        ops.max_pool2d_backward(out, x, idx.int(), [2, 2], [2, 2], [0, 0], [1, 1], False)
    with pytest.raises(RuntimeError, match="dtype"):
        ops.avg_pool2d_backward(out.double(), x, [2, 2], [2, 2], [0, 0], False, True, None)
    with pytest.raises(RuntimeError, match="divisor_override"):
        ops.avg_pool2d(x, [2, 2], [2, 2], [0, 0], False, True, 0)
    # Indices that name no element of the plane get no gradient (and never write out of bounds).
    bad_idx = idx.clone()
    bad_idx[0, 0, 0, 0], bad_idx[1, 2, 3, 3] = -5, 64
    grad = ops.max_pool2d_backward(torch.ones_like(out), x, bad_idx, [2, 2], [2, 2], [0, 0], [1, 1], False)
    assert grad.sum().item() == out.numel() - 2

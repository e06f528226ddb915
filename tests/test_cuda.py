"""fastconv's CUDA kernels against torch.nn.functional on CUDA and against fastconv's CPU kernels.

Skipped where torch sees no GPU. `python scripts/cuda_sim.py` runs this file on a machine without one:
it loads a build in which the CUDA kernels run on the host (CPU tensors), and the tests that need a
real device (CPU-vs-CUDA comparisons, CUDA graphs, device mixing, torch.compile, large tensors) skip.
"""
import itertools
import os
import random
import sys

import pytest
import torch
import torch.nn.functional as F

import fastconv
import fastconv.functional as FC
import memory_formats

SIM = getattr(sys.modules.get("fastconv._C"), "CUDA_SIM", False)
if not SIM and not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)
if not SIM and not fastconv.build_info()["cuda"]:
    # scripts/gpu_check.sh sets FASTCONV_REQUIRE_CUDA=1: there, a build without CUDA kernels is a failure.
    if os.environ.get("FASTCONV_REQUIRE_CUDA") == "1":
        raise RuntimeError("fastconv was built without CUDA kernels (FASTCONV_REQUIRE_CUDA=1)")
    pytest.skip("fastconv was built without CUDA kernels", allow_module_level=True)

DEVICE = torch.device("cpu") if SIM else torch.device("cuda")
ops = torch.ops.fastconv
needs_gpu = pytest.mark.skipif(SIM, reason="needs a real CUDA device, not the host emulation")
ALGOS = ("im2col", "direct")


@pytest.fixture(autouse=True)
def _exact_fp32():
    """torch's reference convolutions and matmuls in true float32 (no TF32), as fastconv computes."""
    if SIM:
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def randn(*shape, dtype=torch.float64, device=DEVICE, requires_grad=False):
    return torch.randn(*shape, dtype=dtype, device=device).requires_grad_(requires_grad)


def tolerance(dtype):
    return {torch.float64: 1e-10, torch.float32: 2e-4, torch.float16: 1e-2, torch.bfloat16: 6e-2}[dtype]


def assert_close_scaled(actual, expected, tol):
    """|actual - expected| <= tol * (max |expected| + 1), elementwise: a relative bound on the tensor."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = expected.abs().max().item() + 1 if expected.numel() else 1
    err = (actual.double() - expected.double()).abs().max().item() if expected.numel() else 0.0
    assert err <= tol * scale, f"max error {err:.3g} > {tol:.1g} * {scale:.3g}"


def run_with_grads(fn, inputs, grad_output=None):
    """fn(*inputs) and the gradients of <fn(...), grad_output> with respect to inputs that require grad."""
    out = fn(*inputs)
    if grad_output is None:
        grad_output = torch.randn_like(out)
    wrt = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    grads = torch.autograd.grad(out, wrt, grad_output) if wrt else ()
    return out, grads, grad_output


def cpu_kernel_registered(op):
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"fastconv::{op}", "CPU")


# ----------------------------------------------------------------------------------------------
# Convolution
# ----------------------------------------------------------------------------------------------

# N, C, H, W, out_channels, kernel (kh, kw), stride, padding, dilation, groups, bias
CONV2D_CASES = [
    (2, 4, 7, 9, 6, (3, 3), 1, 1, 1, 1, True),
    (2, 4, 7, 9, 6, (3, 2), (2, 1), (1, 0), (1, 2), 2, True),
    (1, 16, 6, 5, 16, (3, 3), 1, 1, 1, 1, False),  # channel blocks of 8 in both directions
    (1, 10, 5, 5, 20, (3, 3), 1, 0, 2, 1, True),  # 20 output channels: blocks of 8, 8, 4
    (2, 6, 8, 8, 12, (3, 3), 2, 1, 1, 6, True),  # depthwise, channel multiplier 2
    (3, 8, 9, 7, 8, (5, 5), 1, 2, 1, 8, True),  # depthwise 5x5
    (2, 6, 8, 8, 6, (1, 1), 1, 0, 1, 1, True),  # unit 1x1: the input is the column matrix
    (2, 6, 8, 8, 4, (1, 1), 2, 0, 1, 2, False),  # strided grouped 1x1
    (2, 16, 5, 6, 32, (2, 2), 1, 0, 1, 2, True),  # even kernel, 8 channels per group
    (1, 3, 20, 18, 5, (7, 7), 2, 3, 1, 1, True),  # stem-like 7x7 / 2
    (2, 2, 11, 13, 3, (3, 3), 3, 2, 3, 1, True),  # stride 3, dilation 3
    (1, 2, 19, 37, 3, (3, 3), 1, 1, 1, 1, True),  # several tiles in both directions
    (1, 9, 4, 40, 18, (2, 3), (1, 2), (1, 1), 1, 3, True),
]

# N, C, L, out_channels, kernel, stride, padding, dilation, groups, bias
CONV1D_CASES = [
    (2, 4, 30, 6, 3, 1, 1, 1, 1, True),
    (2, 6, 50, 6, 5, 2, 2, 2, 3, True),
    (1, 8, 300, 8, 3, 1, 1, 1, 8, False),  # depthwise, more than one 256-wide tile
    (3, 4, 17, 8, 1, 1, 0, 1, 1, True),  # pointwise
]


def conv2d_case_tensors(case, dtype=torch.float64, device=DEVICE):
    n, c, h, w, o, k, stride, padding, dilation, groups, bias = case
    x = randn(n, c, h, w, dtype=dtype, device=device, requires_grad=True)
    weight = randn(o, c // groups, *k, dtype=dtype, device=device, requires_grad=True)
    b = randn(o, dtype=dtype, device=device, requires_grad=True) if bias else None
    return x, weight, b, dict(stride=stride, padding=padding, dilation=dilation, groups=groups)


def conv1d_case_tensors(case, dtype=torch.float64, device=DEVICE):
    n, c, length, o, k, stride, padding, dilation, groups, bias = case
    x = randn(n, c, length, dtype=dtype, device=device, requires_grad=True)
    weight = randn(o, c // groups, k, dtype=dtype, device=device, requires_grad=True)
    b = randn(o, dtype=dtype, device=device, requires_grad=True) if bias else None
    return x, weight, b, dict(stride=stride, padding=padding, dilation=dilation, groups=groups)


def check_conv_against_torch(fc_fn, torch_fn, x, weight, b, params, algo, dtype):
    inputs = [x, weight] + ([b] if b is not None else [])
    out, grads, grad_out = run_with_grads(lambda *t: fc_fn(*t, **params, algo=algo), inputs)
    ref, ref_grads, _ = run_with_grads(lambda *t: torch_fn(*t, **params), inputs, grad_out)
    tol = tolerance(dtype)
    assert_close_scaled(out, ref, tol)
    for got, want in zip(grads, ref_grads):
        assert_close_scaled(got, want, tol)


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("case", CONV2D_CASES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_conv2d_matches_torch(case, algo, dtype):
    x, weight, b, params = conv2d_case_tensors(case, dtype)
    check_conv_against_torch(FC.conv2d, F.conv2d, x, weight, b, params, algo, dtype)


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("case", CONV1D_CASES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_conv1d_matches_torch(case, algo, dtype):
    x, weight, b, params = conv1d_case_tensors(case, dtype)
    check_conv_against_torch(FC.conv1d, F.conv1d, x, weight, b, params, algo, dtype)


def random_conv2d_case(seed):
    """A valid conv2d geometry drawn from a seeded generator: odd channel counts, strides, dilations, pads."""
    rng = random.Random(seed)
    groups = rng.choice([1, 1, 2, 3])
    cin_g, cout_g = rng.choice([1, 2, 3, 9]), rng.choice([1, 2, 3, 8, 9])
    kh, kw = rng.randint(1, 5), rng.randint(1, 5)
    stride, dilation, padding = [(rng.randint(1, 3), rng.randint(1, 3)) for _ in range(2)] + [
        (rng.randint(0, 3), rng.randint(0, 3))]
    h = rng.randint(max(1, dilation[0] * (kh - 1) + 1 - 2 * padding[0]), 20)
    w = rng.randint(max(1, dilation[1] * (kw - 1) + 1 - 2 * padding[1]), 40)
    return (rng.randint(1, 3), cin_g * groups, h, w, cout_g * groups, (kh, kw), stride, padding, dilation, groups,
            rng.random() < 0.7)


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("seed", range(12))
def test_conv2d_random_geometries(seed, algo):
    x, weight, b, params = conv2d_case_tensors(random_conv2d_case(seed))
    check_conv_against_torch(FC.conv2d, F.conv2d, x, weight, b, params, algo, torch.float64)


@pytest.mark.parametrize("algo", ALGOS)
def test_conv_output_mask(algo):
    """Each subset of gradients comes out alone, equal to the full backward's."""
    x, weight, b, params = conv2d_case_tensors(CONV2D_CASES[1])
    go = randn(*F.conv2d(x, weight, b, **params).shape)
    args = (params["stride"], params["padding"], params["dilation"])
    args = [list(a) if isinstance(a, tuple) else [a, a] for a in args]
    full = ops.conv2d_backward(go, x, weight, *args, params["groups"], [True, True, True], algo)
    for mask in itertools.product([False, True], repeat=3):
        grads = ops.conv2d_backward(go, x, weight, *args, params["groups"], list(mask), algo)
        for wanted, got, want in zip(mask, grads, full):
            if wanted:
                torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
            else:
                assert got.numel() == 0


@pytest.mark.parametrize("algo", ALGOS)
def test_conv_layouts_and_batch_edge_cases(algo):
    x, weight, b, params = conv2d_case_tensors(CONV2D_CASES[0])
    ref = F.conv2d(x, weight, b, **params)
    # channels_last input and weight, non-contiguous slices
    x_cl = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    w_cl = weight.detach().to(memory_format=torch.channels_last)
    assert_close_scaled(FC.conv2d(x_cl, w_cl, b, **params, algo=algo), ref, 1e-10)
    wide = randn(2, 8, 7, 18)
    sliced = wide[:, ::2, :, ::2]
    assert not sliced.is_contiguous()
    assert_close_scaled(FC.conv2d(sliced, weight, b, **params, algo=algo), F.conv2d(sliced, weight, b, **params), 1e-10)
    # unbatched input
    assert_close_scaled(FC.conv2d(x[0], weight, b, **params, algo=algo), F.conv2d(x[0], weight, b, **params), 1e-10)
    # batch 0: empty output, zero weight and bias gradients
    empty = randn(0, 4, 7, 9, requires_grad=True)
    out = FC.conv2d(empty, weight, b, **params, algo=algo)
    assert out.shape == F.conv2d(empty, weight, b, **params).shape
    gx, gw, gb = torch.autograd.grad(out, [empty, weight, b], torch.ones_like(out))
    assert gx.shape == empty.shape and gw.abs().sum() == 0 and gb.abs().sum() == 0


@pytest.mark.parametrize("algo", ALGOS)
def test_conv_memory_formats_match_torch(algo):
    # torch on the same device gives the output and the input and weight gradients the channels-last
    # format where the input or the weight suggests it (on CUDA: not in float64); fastconv's CUDA ops and
    # their fake kernels must do the same.
    channels_last = torch.channels_last
    mismatches = []
    for dtype, (x_shape, w_shape, stride, padding, groups) in itertools.product((torch.float64, torch.float32),
                                                                                 memory_formats.CONV_CASES):
        for x_cl, w_cl in itertools.product((False, True), repeat=2):
            x, w, b = randn(*x_shape, dtype=dtype), randn(*w_shape, dtype=dtype), randn(w_shape[0], dtype=dtype)
            x = x.contiguous(memory_format=channels_last) if x_cl else x
            w = w.contiguous(memory_format=channels_last) if w_cl else w
            args = ([stride] * 2, [padding] * 2, [1, 1], groups)
            out = ops.conv2d(x, w, b, *args, algo)
            ref = F.conv2d(x, w, b, stride, padding, 1, groups)
            assert_close_scaled(out, ref, tolerance(dtype))
            grad = torch.randn_like(ref)
            gi, gw, _ = ops.conv2d_backward(grad, x, w, *args, [True, True, False], algo)
            ref_gi, ref_gw, _ = torch.ops.aten.convolution_backward(grad, x, w, None, *args[:3], False, [0, 0],
                                                                     groups, [True, True, False])
            assert_close_scaled(gi, ref_gi, tolerance(dtype))
            assert_close_scaled(gw, ref_gw, tolerance(dtype))
            for name, ours, theirs in (("out", out, ref), ("grad_input", gi, ref_gi), ("grad_weight", gw, ref_gw)):
                if memory_formats.strides_that_matter(ours) != memory_formats.strides_that_matter(theirs):
                    mismatches.append((dtype, x_shape, w_shape, x_cl, w_cl, name, ours.stride(), theirs.stride()))
    assert not mismatches, mismatches
    for dtype in (torch.float64, torch.float32):
        x = randn(2, 16, 10, 9, dtype=dtype).contiguous(memory_format=channels_last)
        w = randn(32, 16, 3, 3, dtype=dtype)
        torch.library.opcheck(ops.conv2d, (x, w, None, [1, 1], [1, 1], [1, 1], 1, algo))
        torch.library.opcheck(ops.conv2d_backward,
                              (randn(2, 32, 10, 9, dtype=dtype), x, w, [1, 1], [1, 1], [1, 1], 1, [True, True, True], algo))


@pytest.mark.parametrize("algo", ALGOS)
def test_conv_zero_input_channels(algo):
    """torch's rule: a zero-channel input gives a zero-channel output; the bias gradient is zero."""
    x = randn(2, 0, 5, 5, requires_grad=True)
    weight = randn(3, 0, 3, 3, requires_grad=True)
    b = randn(3, requires_grad=True)
    out = FC.conv2d(x, weight, b, algo=algo)
    assert out.shape == F.conv2d(x, weight, b).shape == (2, 0, 3, 3)
    grads = torch.autograd.grad(out, [x, weight, b], torch.ones_like(out))
    assert [g.shape for g in grads] == [x.shape, weight.shape, b.shape]
    assert grads[2].abs().sum() == 0


def test_conv_padding_same_and_valid():
    x = randn(2, 3, 9, 8)
    weight = randn(4, 3, 4, 3)
    for padding in ("same", "valid"):
        for algo in ALGOS:
            assert_close_scaled(FC.conv2d(x, weight, padding=padding, dilation=2 if padding == "same" else 1,
                                          algo=algo),
                                F.conv2d(x, weight, padding=padding, dilation=2 if padding == "same" else 1), 1e-10)


@pytest.mark.parametrize("algo", ALGOS)
def test_conv1d_huge_dilation_uses_fallback_kernels(algo):
    """A window too wide for a shared-memory tile: the per-element kernels take over (direct)."""
    x = randn(2, 1, 13000, requires_grad=True)
    weight = randn(2, 1, 3, requires_grad=True)
    b = randn(2, requires_grad=True)
    params = dict(stride=1, padding=0, dilation=6200, groups=1)
    check_conv_against_torch(FC.conv1d, F.conv1d, x, weight, b, params, algo, torch.float64)


@pytest.mark.parametrize("case", [CONV2D_CASES[0], CONV2D_CASES[4], CONV2D_CASES[6], CONV2D_CASES[9]], ids=str)
@pytest.mark.parametrize("cap", ["one_row", "two_images"])
def test_im2col_chunks_stay_under_the_workspace_cap(case, cap, monkeypatch):
    """A small FASTCONV_IM2COL_WORKSPACE_BYTES forces chunks of output rows or of a few images."""
    n, c, h, w, o, k, stride, padding, dilation, groups, bias = case
    case = (5,) + case[1:]  # five images: chunks of two leave a remainder
    x, weight, b, params = conv2d_case_tensors(case)
    out_h, out_w = F.conv2d(x[:1], weight, **params).shape[2:]
    per_pixel_bytes = (c * k[0] * k[1] + o) * 8
    limit = 1 if cap == "one_row" else 2 * per_pixel_bytes * out_h * out_w
    monkeypatch.setenv("FASTCONV_IM2COL_WORKSPACE_BYTES", str(limit))
    stride2, padding2, dilation2 = ([v, v] if isinstance(v, int) else list(v) for v in (stride, padding, dilation))
    workspace = ops.conv2d_workspace_bytes(x, weight, stride2, padding2, dilation2, groups, "im2col")
    expected = per_pixel_bytes * (out_w if cap == "one_row" else 2 * out_h * out_w)
    assert workspace == expected
    # direct: only its backward's partial sums of grad_weight, one per weight element (a single slice here)
    assert ops.conv2d_workspace_bytes(x, weight, stride2, padding2, dilation2, groups, "direct") == weight.numel() * 8
    check_conv_against_torch(FC.conv2d, F.conv2d, x, weight, b, params, "im2col", torch.float64)


@pytest.mark.parametrize("case", [CONV2D_CASES[0], CONV2D_CASES[4]], ids=str)
def test_conv_auto_algo(case):
    """algo="auto" at the op level: each pass runs one of the two algorithms, bit for bit."""
    x, weight, b, params = conv2d_case_tensors(case)
    x, weight, b = x.detach(), weight.detach(), b.detach()
    args = [list(v) if isinstance(v, tuple) else [v, v] for v in (params["stride"], params["padding"],
                                                                 params["dilation"])]
    groups = params["groups"]
    out = ops.conv2d(x, weight, b, *args, groups, "auto")
    assert any(torch.equal(out, ops.conv2d(x, weight, b, *args, groups, algo)) for algo in ALGOS)
    go = torch.randn_like(out)
    for i in range(3):  # each gradient alone
        mask = [j == i for j in range(3)]
        got = ops.conv2d_backward(go, x, weight, *args, groups, mask, "auto")[i]
        assert any(torch.equal(got, ops.conv2d_backward(go, x, weight, *args, groups, mask, algo)[i])
                   for algo in ALGOS)
    workspace = ops.conv2d_workspace_bytes(x, weight, *args, groups, "auto")
    assert workspace <= max(ops.conv2d_workspace_bytes(x, weight, *args, groups, algo) for algo in ALGOS)


def test_im2col_workspace_default_cap():
    x = randn(64, 64, 56, 56, dtype=torch.float32)
    weight = randn(64, 64, 3, 3, dtype=torch.float32)
    bytes_ = ops.conv2d_workspace_bytes(x, weight, [1, 1], [1, 1], [1, 1], 1, "im2col")
    assert 0 < bytes_ <= 64 << 20


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("case", [CONV2D_CASES[1], CONV2D_CASES[4], CONV2D_CASES[6]], ids=str)
def test_conv_gradcheck(case, algo):
    n, c, h, w, o, k, stride, padding, dilation, groups, bias = case
    small = (1, c, min(h, 6), min(w, 6), o, k, stride, padding, dilation, groups, bias)
    x, weight, b, params = conv2d_case_tensors(small)
    fn = lambda *t: FC.conv2d(*t, **params, algo=algo)  # noqa: E731
    # fast_mode (random projections of the Jacobian) keeps the host emulation quick
    assert torch.autograd.gradcheck(fn, (x, weight, b) if b is not None else (x, weight), fast_mode=SIM)


@pytest.mark.parametrize("algo", ALGOS)
def test_conv1d_gradcheck(algo):
    x, weight, b, params = conv1d_case_tensors((2, 4, 9, 4, 3, 2, 1, 2, 2, True))
    assert torch.autograd.gradcheck(lambda *t: FC.conv1d(*t, **params, algo=algo), (x, weight, b), fast_mode=SIM)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("case", [CONV2D_CASES[0], CONV2D_CASES[2], CONV2D_CASES[4], CONV2D_CASES[6]], ids=str)
def test_conv_reduced_precision(case, algo, dtype):
    """half / bfloat16 against float32 on the same (rounded) values."""
    x, weight, b, params = conv2d_case_tensors(case, dtype)
    inputs = [x, weight] + ([b] if b is not None else [])
    out, grads, grad_out = run_with_grads(lambda *t: FC.conv2d(*t, **params, algo=algo), inputs)
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    upcast = [t.detach().float().requires_grad_() for t in inputs]
    ref, ref_grads, _ = run_with_grads(lambda *t: F.conv2d(*t, **params), upcast, grad_out.float())
    assert_close_scaled(out, ref, tolerance(dtype))
    for got, want in zip(grads, ref_grads):
        assert_close_scaled(got, want, tolerance(dtype))


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("groups", [1, 16])
def test_conv_backward_is_bitwise_repeatable(algo, groups):
    n, c, size = (2, 16, 6) if SIM else (8, 16, 24)  # the host emulation is slow
    x = randn(n, c, size, size, dtype=torch.float32, requires_grad=True)
    weight = randn(c, c // groups, 3, 3, dtype=torch.float32, requires_grad=True)
    b = randn(c, dtype=torch.float32, requires_grad=True)
    go = randn(n, c, size, size, dtype=torch.float32)
    runs = [torch.autograd.grad(FC.conv2d(x, weight, b, padding=1, groups=groups, algo=algo), [x, weight, b], go)
            for _ in range(3)]
    for other in runs[1:]:
        for a, c in zip(runs[0], other):
            assert torch.equal(a, c)


@needs_gpu
@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("case", [CONV2D_CASES[1], CONV2D_CASES[4], CONV2D_CASES[9]], ids=str)
def test_conv_cuda_matches_fastconv_cpu(case, algo):
    x, weight, b, params = conv2d_case_tensors(case, torch.float64, torch.device("cpu"))
    inputs = [x, weight, b]
    cpu_out, cpu_grads, grad_out = run_with_grads(lambda *t: FC.conv2d(*t, **params, algo=algo), inputs)
    dev_inputs = [t.detach().to(DEVICE).requires_grad_() for t in inputs]
    out, grads, _ = run_with_grads(lambda *t: FC.conv2d(*t, **params, algo=algo), dev_inputs, grad_out.to(DEVICE))
    assert_close_scaled(out.cpu(), cpu_out, 1e-10)
    for got, want in zip(grads, cpu_grads):
        assert_close_scaled(got.cpu(), want, 1e-10)


@pytest.mark.parametrize("algo", ALGOS)
def test_conv_opcheck(algo):
    x, weight, b, _ = conv2d_case_tensors(CONV2D_CASES[1])
    torch.library.opcheck(ops.conv2d.default, (x, weight, b, [2, 1], [1, 0], [1, 2], 2, algo))
    go = randn(*ops.conv2d(x, weight, b, [2, 1], [1, 0], [1, 2], 2, algo).shape)
    torch.library.opcheck(ops.conv2d_backward.default,  # not differentiable itself: inputs without grad
                          (go, x.detach(), weight.detach(), [2, 1], [1, 0], [1, 2], 2, [True, True, True], algo))
    x1, w1, b1, _ = conv1d_case_tensors(CONV1D_CASES[1])
    torch.library.opcheck(ops.conv1d.default, (x1, w1, b1, [2], [2], [2], 3, algo))


@needs_gpu
def test_conv_rejects_mixed_devices():
    x = randn(1, 2, 5, 5)
    weight = randn(3, 2, 3, 3)
    with pytest.raises(RuntimeError, match="cpu"):
        FC.conv2d(x, weight.cpu())
    with pytest.raises(RuntimeError, match="cpu"):
        FC.conv2d(x.cpu(), weight)
    with pytest.raises(RuntimeError, match="cpu"):
        FC.conv2d(x, weight, randn(3, device="cpu"))
    go = randn(1, 3, 3, 3)
    with pytest.raises(RuntimeError, match="cpu"):
        ops.conv2d_backward(go.cpu(), x, weight, [1, 1], [0, 0], [1, 1], 1, [True, True, True], "im2col")


# ----------------------------------------------------------------------------------------------
# Pooling
# ----------------------------------------------------------------------------------------------

# input shape, kernel_size, stride, padding, dilation, ceil_mode
MAX_POOL2D_CASES = [
    ((2, 3, 9, 11), 3, 2, 1, 1, False),
    ((2, 3, 9, 11), (3, 2), (2, 1), (1, 1), (1, 2), True),
    ((1, 2, 10, 10), 2, None, 0, 1, True),
    ((3, 7, 8), 3, 1, 1, 2, False),  # unbatched
    ((2, 4, 7, 7), 4, 3, 2, 1, True),
    ((2, 1, 5, 6), 2, 1, 1, 3, False),  # dilated windows reaching into the padding
    ((1, 2, 1, 9), (1, 3), (1, 2), (0, 1), 1, True),
]

# input shape, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
AVG_POOL2D_CASES = [
    ((2, 3, 9, 11), 3, 2, 1, False, True, None),
    ((2, 3, 9, 11), 3, 2, 1, True, False, None),
    ((2, 3, 9, 11), (3, 2), (2, 3), (1, 1), True, True, None),
    ((1, 2, 8, 8), 2, None, 0, False, True, 3),
    ((3, 7, 8), 4, 3, 2, True, False, 5),  # unbatched
    ((2, 2, 5, 5), 5, 1, 2, False, False, None),
]

# input shape, output_size
ADAPTIVE_CASES = [
    ((2, 3, 9, 11), (3, 4)),
    ((2, 3, 7, 7), 1),
    ((1, 2, 5, 6), (7, 9)),  # larger than the input: overlapping windows
    ((3, 10, 13), (4, None)),  # unbatched, None keeps the width
    ((2, 2, 8, 8), (8, 3)),
]


def pool_input(shape, dtype=torch.float64, device=DEVICE):
    return randn(*shape, dtype=dtype, device=device, requires_grad=True)


def check_pool_against_torch(fc_fn, torch_fn, x, dtype=torch.float64, with_indices=False):
    out, grads, grad_out = run_with_grads(fc_fn, [x])
    ref, ref_grads, _ = run_with_grads(torch_fn, [x], grad_out)
    tol = tolerance(dtype)
    assert_close_scaled(out, ref, tol)
    assert_close_scaled(grads[0], ref_grads[0], tol)
    if with_indices:
        assert torch.equal(fc_fn(x.detach(), return_indices=True)[1], torch_fn(x.detach(), return_indices=True)[1])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", MAX_POOL2D_CASES, ids=str)
def test_max_pool2d_matches_torch(case, dtype):
    shape, kernel, stride, padding, dilation, ceil_mode = case
    x = pool_input(shape, dtype)

    def call(fn):
        return lambda t, return_indices=False: fn(t, kernel, stride, padding, dilation, ceil_mode=ceil_mode,
                                                  return_indices=return_indices)

    check_pool_against_torch(call(FC.max_pool2d), call(F.max_pool2d), x, dtype, with_indices=True)
    # Without a gradient to compute, the values-only kernel.
    x_nograd = x.detach()
    torch.testing.assert_close(call(FC.max_pool2d)(x_nograd), call(F.max_pool2d)(x_nograd), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", AVG_POOL2D_CASES, ids=str)
def test_avg_pool2d_matches_torch(case, dtype):
    shape, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override = case
    x = pool_input(shape, dtype)

    def call(fn):
        return lambda t: fn(t, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)

    check_pool_against_torch(call(FC.avg_pool2d), call(F.avg_pool2d), x, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", ADAPTIVE_CASES, ids=str)
def test_adaptive_pool2d_matches_torch(case, dtype):
    shape, size = case
    x = pool_input(shape, dtype)
    check_pool_against_torch(lambda t: FC.adaptive_avg_pool2d(t, size), lambda t: F.adaptive_avg_pool2d(t, size), x,
                             dtype)
    check_pool_against_torch(lambda t, return_indices=False: FC.adaptive_max_pool2d(t, size, return_indices),
                             lambda t, return_indices=False: F.adaptive_max_pool2d(t, size, return_indices), x, dtype,
                             with_indices=True)


@pytest.mark.parametrize("seed", range(16))
def test_pools_random_geometries(seed):
    """Seeded random windows, strides, paddings, dilations, ceil_mode, divisors, adaptive sizes."""
    rng = random.Random(seed)
    kernel = (rng.randint(1, 4), rng.randint(1, 4))
    stride = (rng.randint(1, 3), rng.randint(1, 3))
    dilation = (rng.randint(1, 3), rng.randint(1, 3))
    ceil_mode = rng.random() < 0.5
    max_pad = [rng.randint(0, k // 2) for k in kernel]  # torch: at most half the (undilated) kernel
    avg_pad = [rng.randint(0, k // 2) for k in kernel]
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dilation)]
    size = [rng.randint(max(1, span[i] - 2 * max_pad[i], kernel[i] - 2 * avg_pad[i]), 13) for i in range(2)]
    x = pool_input((2, 3, *size))

    def max_call(m):
        return lambda t, return_indices=False: m.max_pool2d(t, kernel, stride, max_pad, dilation, ceil_mode,
                                                            return_indices)

    out, idx = max_call(FC)(x.detach(), True)
    ref, ref_idx = max_call(F)(x.detach(), True)
    assert torch.equal(out, ref) and torch.equal(idx, ref_idx)
    if ref.isfinite().all():  # a window wholly in the padding has no element (torch's CPU backward breaks there)
        check_pool_against_torch(max_call(FC), max_call(F), x)
    count_include_pad, divisor = rng.random() < 0.5, rng.choice([None, None, 2, 5])
    check_pool_against_torch(lambda t: FC.avg_pool2d(t, kernel, stride, avg_pad, ceil_mode, count_include_pad, divisor),
                             lambda t: F.avg_pool2d(t, kernel, stride, avg_pad, ceil_mode, count_include_pad, divisor),
                             x)
    out_size = (rng.randint(1, 15), rng.randint(1, 15))
    for ours, theirs in ((FC.adaptive_avg_pool2d, F.adaptive_avg_pool2d),
                         (FC.adaptive_max_pool2d, F.adaptive_max_pool2d)):
        check_pool_against_torch(lambda t: ours(t, out_size), lambda t: theirs(t, out_size), x)


def test_pool1d_matches_torch():
    x = pool_input((2, 3, 23))
    cases = [
        (lambda m: lambda t: m.max_pool1d(t, 3, 2, 1, 2, True)),
        (lambda m: lambda t: m.avg_pool1d(t, 4, 3, 2, True, False)),
        (lambda m: lambda t: m.avg_pool1d(t, 3)),
        (lambda m: lambda t: m.adaptive_avg_pool1d(t, 7)),
        (lambda m: lambda t: m.adaptive_max_pool1d(t, 5)),
    ]
    for make in cases:
        check_pool_against_torch(make(FC), make(F), x)


def test_pool_layouts_and_empty_batch():
    x = pool_input((2, 4, 9, 10))
    x_cl = x.detach().to(memory_format=torch.channels_last)
    sliced = randn(2, 8, 9, 20)[:, ::2, :, ::2]
    for t in (x_cl, sliced):
        assert_close_scaled(FC.max_pool2d(t, 3, 2, 1), F.max_pool2d(t, 3, 2, 1), 0)
        assert_close_scaled(FC.avg_pool2d(t, 3, 2, 1), F.avg_pool2d(t, 3, 2, 1), 1e-12)
        assert_close_scaled(FC.adaptive_avg_pool2d(t, 4), F.adaptive_avg_pool2d(t, 4), 1e-12)
        assert_close_scaled(FC.adaptive_max_pool2d(t, 4), F.adaptive_max_pool2d(t, 4), 0)
    empty = pool_input((0, 3, 8, 8))
    for fn in (lambda m, t: m.max_pool2d(t, 2), lambda m, t: m.avg_pool2d(t, 2),
               lambda m, t: m.adaptive_avg_pool2d(t, 3), lambda m, t: m.adaptive_max_pool2d(t, 3)):
        out = fn(FC, empty)
        assert out.shape == fn(F, empty).shape
        (grad,) = torch.autograd.grad(out, [empty], torch.ones_like(out))
        assert grad.shape == empty.shape
    assert FC.adaptive_avg_pool2d(x, (0, 3)).shape == (2, 4, 0, 3)


@pytest.mark.parametrize("layout", memory_formats.POOL_LAYOUTS)
def test_pool_memory_formats_match_torch(layout):
    # Outputs, indices and input gradients in the input's (suggested) memory format, as torch gives them.
    x = memory_formats.pool_input(layout, randn)
    strides = memory_formats.strides_that_matter
    for name, call in memory_formats.POOL_CALLS:
        ours_x, theirs_x = x.clone().requires_grad_(), x.clone().requires_grad_()
        ours, theirs = memory_formats.as_tuple(call(FC, ours_x)), memory_formats.as_tuple(call(F, theirs_x))
        for a, b in zip(ours, theirs):
            assert strides(a) == strides(b), (name, a.stride(), b.stride())
            assert_close_scaled(a, b, 1e-12)
        with torch.no_grad():  # max pooling without indices takes its own kernel
            assert memory_formats.as_tuple(call(FC, x))[0].stride() == ours[0].stride(), name
        grad = torch.randn_like(theirs[0])
        (grad_ours,) = torch.autograd.grad(ours[0], ours_x, grad)
        (grad_theirs,) = torch.autograd.grad(theirs[0], theirs_x, grad)
        assert strides(grad_ours) == strides(grad_theirs), (name, grad_ours.stride(), grad_theirs.stride())
        assert_close_scaled(grad_ours, grad_theirs, 1e-12)


def test_max_pools_propagate_nan_and_keep_torch_indices():
    x = randn(1, 2, 6, 6)
    x[0, 0, 1, 1] = float("nan")
    x[0, 0, 2, 2] = float("nan")  # two NaNs in one window: torch keeps the last
    x[0, 1] = float("-inf")  # all -inf: index of the window's first element
    out, idx = FC.max_pool2d(x, 3, 2, 1, return_indices=True)
    ref, ref_idx = F.max_pool2d(x, 3, 2, 1, return_indices=True)
    assert torch.equal(out.isnan(), ref.isnan()) and torch.equal(idx, ref_idx)
    assert torch.equal(out[~out.isnan()], ref[~ref.isnan()])
    out, idx = FC.adaptive_max_pool2d(x, 4, return_indices=True)
    ref, ref_idx = F.adaptive_max_pool2d(x, 4, return_indices=True)
    assert torch.equal(out.isnan(), ref.isnan()) and torch.equal(idx, ref_idx)


def test_pool_gradcheck():
    x = pool_input((1, 2, 6, 7))
    checks = [
        lambda t: FC.max_pool2d(t, 3, 2, 1, 2, True),
        lambda t: FC.avg_pool2d(t, 3, 2, 1, True, False),
        lambda t: FC.avg_pool2d(t, 2, 1, 1, False, True, 3),
        lambda t: FC.adaptive_avg_pool2d(t, (4, 5)),
        lambda t: FC.adaptive_max_pool2d(t, (3, 4)),
    ]
    for fn in checks:
        assert torch.autograd.gradcheck(fn, (x,), fast_mode=SIM)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_pool_reduced_precision(dtype):
    x = pool_input((2, 3, 11, 12), dtype)
    for make in (lambda m: lambda t: m.max_pool2d(t, 3, 2, 1),
                 lambda m: lambda t: m.avg_pool2d(t, 3, 2, 1, True, False),
                 lambda m: lambda t: m.adaptive_avg_pool2d(t, (5, 4)),
                 lambda m: lambda t: m.adaptive_max_pool2d(t, (5, 4))):
        out, (grad,), grad_out = run_with_grads(make(FC), [x])
        assert out.dtype == dtype and grad.dtype == dtype
        x32 = x.detach().float().requires_grad_()
        ref, (ref_grad,), _ = run_with_grads(make(F), [x32], grad_out.float())
        assert_close_scaled(out, ref, tolerance(dtype))
        assert_close_scaled(grad, ref_grad, tolerance(dtype))


def test_pool_backward_is_bitwise_repeatable():
    x = pool_input((4, 8, 33, 31), torch.float32)
    for fn in (lambda t: FC.max_pool2d(t, 3, 1, 1), lambda t: FC.avg_pool2d(t, 3, 1, 1),
               lambda t: FC.adaptive_avg_pool2d(t, 9), lambda t: FC.adaptive_max_pool2d(t, 9)):
        out = fn(x)
        go = torch.randn_like(out)
        first = torch.autograd.grad(fn(x), [x], go)[0]
        for _ in range(2):
            assert torch.equal(torch.autograd.grad(fn(x), [x], go)[0], first)


def test_pool_opcheck():
    x = pool_input((2, 3, 9, 11))
    torch.library.opcheck(ops.max_pool2d.default, (x, [3, 2], [2, 1], [1, 1], [1, 2], True))
    torch.library.opcheck(ops.avg_pool2d.default, (x, [3, 3], [2, 2], [1, 1], True, False, None))
    torch.library.opcheck(ops.avg_pool2d.default, (x, [2, 2], [1, 1], [0, 0], False, True, 3))
    torch.library.opcheck(ops.adaptive_avg_pool2d.default, (x, [4, 5]))
    torch.library.opcheck(ops.adaptive_max_pool2d.default, (x, [4, 5]))
    out, idx = ops.max_pool2d(x, [3, 2], [2, 1], [1, 1], [1, 2], True)
    x = x.detach()  # backward ops are not differentiable themselves
    torch.library.opcheck(ops.max_pool2d_backward.default,
                          (torch.randn_like(out), x, idx, [3, 2], [2, 1], [1, 1], [1, 2], True))
    avg = ops.avg_pool2d(x, [3, 2], [2, 1], [1, 1], True, False, None)
    torch.library.opcheck(ops.avg_pool2d_backward.default,
                          (torch.randn_like(avg), x, [3, 2], [2, 1], [1, 1], True, False, None))
    out, idx = ops.adaptive_max_pool2d(x, [4, 5])
    torch.library.opcheck(ops.adaptive_max_pool2d_backward.default, (torch.randn_like(out), x, idx))
    torch.library.opcheck(ops.adaptive_avg_pool2d_backward.default, (torch.randn_like(out), x))


@needs_gpu
def test_pool_cuda_matches_fastconv_cpu():
    if not cpu_kernel_registered("max_pool2d"):
        pytest.skip("fastconv's CPU pooling kernels are not in this build")
    x_cpu = pool_input((2, 3, 9, 11), device=torch.device("cpu"))
    x_dev = x_cpu.detach().to(DEVICE).requires_grad_()
    for make in (lambda t: FC.max_pool2d(t, 3, 2, 1, 2, True),
                 lambda t: FC.avg_pool2d(t, 3, 2, 1, True, False, None),
                 lambda t: FC.adaptive_avg_pool2d(t, (4, 5)),
                 lambda t: FC.adaptive_max_pool2d(t, (4, 5))):
        cpu_out, (cpu_grad,), go = run_with_grads(make, [x_cpu])
        out, (grad,), _ = run_with_grads(make, [x_dev], go.to(DEVICE))
        assert_close_scaled(out.cpu(), cpu_out, 1e-12)
        assert_close_scaled(grad.cpu(), cpu_grad, 1e-12)


@needs_gpu
def test_pool_rejects_mixed_devices():
    x = pool_input((1, 2, 6, 6))
    out, idx = ops.max_pool2d(x, [2, 2], [2, 2], [0, 0], [1, 1], False)
    with pytest.raises(RuntimeError, match="cpu"):
        ops.max_pool2d_backward(out.cpu(), x, idx, [2, 2], [2, 2], [0, 0], [1, 1], False)
    with pytest.raises(RuntimeError, match="cpu"):
        ops.max_pool2d_backward(out, x, idx.cpu(), [2, 2], [2, 2], [0, 0], [1, 1], False)
    with pytest.raises(RuntimeError, match="cpu"):
        ops.avg_pool2d_backward(out.cpu(), x, [2, 2], [2, 2], [0, 0], False, True, None)
    with pytest.raises(RuntimeError, match="cpu"):
        ops.adaptive_avg_pool2d_backward(out.cpu(), x)


@needs_gpu
@pytest.mark.slow
def test_pool_indices_past_int32():
    """More than 2**31 input elements: the kernels switch to 64-bit index math."""
    free, _ = torch.cuda.mem_get_info()
    if free < 12 << 30:
        pytest.skip("needs about 12 GiB of free GPU memory")
    x = torch.randn(2, 1, 32768, 32769, device=DEVICE, dtype=torch.float16)
    assert x.numel() > 2**31
    out = FC.avg_pool2d(x, 2)
    assert_close_scaled(out[1, 0, -3:], F.avg_pool2d(x[1:, :, -6:], 2)[0, 0], tolerance(torch.float16))
    out, idx = FC.max_pool2d(x, 2, return_indices=True)
    ref, ref_idx = F.max_pool2d(x[1:, :, -6:], 2, return_indices=True)
    assert torch.equal(out[1, 0, -3:], ref[0, 0])
    del x, out, idx


# ----------------------------------------------------------------------------------------------
# torch.compile and CUDA graphs
# ----------------------------------------------------------------------------------------------


def small_network(x, w1, b1, w2, algo):
    y = FC.conv2d(x, w1, b1, padding=1, algo=algo)
    y = FC.max_pool2d(torch.relu(y), 2)
    y = FC.conv2d(y, w2, stride=2, groups=4, algo=algo)
    y = FC.avg_pool2d(y, 2, 1, 1, count_include_pad=False)
    return FC.adaptive_avg_pool2d(y, 1).flatten(1).square().sum() + FC.adaptive_max_pool2d(y, 2).sum()


def network_tensors(dtype=torch.float32):
    x = randn(2, 3, 16, 16, dtype=dtype)
    w1 = randn(8, 3, 3, 3, dtype=dtype, requires_grad=True)
    b1 = randn(8, dtype=dtype, requires_grad=True)
    w2 = randn(8, 2, 3, 3, dtype=dtype, requires_grad=True)
    return x, w1, b1, w2


@needs_gpu
@pytest.mark.parametrize("algo,backend", [("im2col", "inductor"), ("direct", "aot_eager")])
def test_torch_compile_fullgraph(algo, backend):
    x, w1, b1, w2 = network_tensors()
    eager = small_network(x, w1, b1, w2, algo)
    eager_grads = torch.autograd.grad(eager, [w1, b1, w2])
    compiled = torch.compile(small_network, fullgraph=True, backend=backend)
    out = compiled(x, w1, b1, w2, algo)
    grads = torch.autograd.grad(out, [w1, b1, w2])
    assert_close_scaled(out, eager, 1e-4)
    for got, want in zip(grads, eager_grads):
        assert_close_scaled(got, want, 1e-4)


@needs_gpu
@pytest.mark.parametrize("algo", ALGOS)
def test_cuda_graph_captures_forward_and_backward(algo):
    x, w1, b1, w2 = network_tensors()
    params = [w1, b1, w2]
    static_x = x.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up (allocator, cuBLAS handles) outside the capture
        for _ in range(3):
            for p in params:
                p.grad = None
            small_network(static_x, *params, algo).backward()
    torch.cuda.current_stream().wait_stream(side)
    for p in params:
        p.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = small_network(static_x, *params, algo)
        static_loss.backward()
    new_x = randn(*x.shape, dtype=x.dtype)
    static_x.copy_(new_x)
    graph.replay()
    torch.cuda.synchronize()
    captured = [p.grad.clone() for p in params]
    loss = small_network(new_x, *params, algo)
    expected = torch.autograd.grad(loss, params)
    assert_close_scaled(static_loss.detach(), loss.detach(), 1e-5)
    for got, want in zip(captured, expected):
        assert_close_scaled(got, want, 1e-5)


@needs_gpu
@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_torchvision_model_on_cuda_matches_unconverted_in_float64(arch):
    """A whole converted network on the GPU: the same eval outputs and train-mode gradients as torch's
    layers in float64, where rounding cannot hide a wrong kernel."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(num_classes=10).double().to(DEVICE)
    converted = fastconv.convert(model)
    x = randn(2, 3, 64, 64)
    for m in (model, converted):
        m.eval()
    with torch.no_grad():
        assert_close_scaled(converted(x), model(x), 1e-10)
    grads = []
    for m in (model, converted):
        m.train()
        torch.manual_seed(7)  # the same dropout mask on both sides
        m(x).logsumexp(1).sum().backward()
        grads.append({name: p.grad for name, p in m.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name, want in grads[0].items():
        got = grads[1][name]
        err = (got - want).abs().max().item()
        assert err <= 1e-9 * (want.abs().max().item() + 1), f"grad of {name}: max error {err:.3g}"

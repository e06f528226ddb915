"""conv1d / conv2d on CPU: both algorithms against torch.nn.functional, autograd, ops, errors."""
import itertools

import pytest
import torch
import torch.nn.functional as F

import fastconv
from fastconv import functional as FC
import memory_formats

ALGOS = ["im2col", "direct", "auto"]
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float64: dict(rtol=1e-10, atol=1e-10)}

# (N, Cin, H, W, Cout, kernel, stride, padding, dilation, groups, bias)
CONV2D_CASES = [
    (2, 3, 9, 10, 8, 3, 1, 1, 1, 1, True),
    (1, 4, 11, 7, 6, 3, 2, 0, 2, 2, False),
    (2, 6, 8, 8, 6, 3, 1, 1, 1, 6, True),          # depthwise
    (2, 6, 8, 9, 12, 3, 2, 1, 1, 6, True),         # depthwise, channel multiplier 2
    (3, 8, 5, 5, 4, 1, 1, 0, 1, 1, True),          # 1x1 unit stride: no column buffer
    (2, 8, 6, 7, 4, 1, 2, 0, 1, 2, False),         # strided 1x1, grouped
    (2, 5, 10, 10, 4, (2, 3), (2, 1), (1, 0), (1, 2), 1, True),
    (1, 3, 16, 16, 4, 7, 2, 3, 1, 1, False),       # ResNet stem shape, smaller
    (2, 4, 7, 7, 4, 5, 3, 2, 1, 4, True),
    (1, 2, 4, 4, 3, 4, 1, 3, 2, 1, True),          # padding larger than half the kernel
    (2, 4, 3, 12, 6, (3, 1), 1, (0, 0), 1, 2, True),
    (1, 1, 1, 1, 1, 1, 1, 0, 1, 1, True),
    (1, 3, 6, 6, 2, 6, 1, 0, 1, 1, False),         # kernel covers the whole input
    # Enough output channels per group for the register-blocked direct kernels (vectors of channels),
    # and planes large enough for their pixel tiles.
    (2, 8, 16, 17, 20, 3, 1, 1, 1, 1, True),
    (1, 6, 25, 21, 33, 3, 2, 2, 2, 1, False),
    (2, 32, 12, 13, 32, 3, 1, 1, 1, 2, True),
    (1, 16, 13, 14, 17, (3, 5), 1, (2, 1), 1, 1, True),
    (2, 40, 12, 12, 48, 1, 1, 0, 1, 1, False),
    (1, 3, 30, 30, 24, 7, 2, 3, 1, 1, False),
    (1, 12, 16, 16, 16, 3, 1, 4, 3, 1, True),
    (1, 8, 12, 12, 16, 3, 1, 3, 1, 1, True),        # padding wider than the kernel's reach
    # Strided layers with 16+ input channels per group: the direct input gradient runs per stride phase.
    (2, 16, 11, 12, 24, 3, 2, 1, 1, 1, True),
    (1, 32, 9, 9, 16, (3, 2), (2, 3), (1, 2), 1, 2, False),
    (1, 16, 7, 8, 16, 4, 3, 3, 1, 1, True),
    (2, 16, 12, 12, 16, 3, 2, 0, 1, 1, False),      # the last input row and column receive no gradient
    (2, 16, 9, 13, 16, 3, 2, 1, 1, 1, True),        # stride-2 rows merged from two phases: an odd width
    (1, 16, 10, 11, 16, 5, 2, 2, 1, 1, False),      # the same with an even padding (other phase first)
    # 1x1 layers on planes of 512+ pixels: the weight gradient by row dot products (partial blocks of
    # rows and columns, a plane that is no multiple of the vector width, groups).
    (2, 5, 23, 29, 7, 1, 1, 0, 1, 1, True),
    (2, 6, 24, 24, 4, 1, 1, 0, 1, 2, False),
    (4, 4, 12, 13, 9, 1, 1, 0, 1, 1, True),         # expanding, 156 pixels: three images per dot product, then one
    (2, 3, 70, 66, 5, 1, 1, 0, 1, 1, False),        # 3 input channels: chunks of 4096 pixels, a plane of 4096 + 524
    # Strided 1x1 layers: the weight gradient by dot products over a compact copy of the pixels read (552
    # of them; 156, expanding), an input gradient whose products merge many small images (15-pixel
    # outputs, 13 images, groups, unequal strides). The last row and column of odd inputs are never read.
    (2, 5, 47, 45, 7, 1, 2, 0, 1, 1, True),
    (3, 4, 24, 25, 8, 1, 2, 0, 1, 1, True),
    (13, 6, 10, 9, 4, 1, (2, 3), 0, 1, 2, False),
    # Grouped layers with whole vectors of input channels per group: the blocked kernels read each group's
    # padded pixels group-major (forward, input gradient, weight gradient; strided, dilated, three groups).
    (2, 64, 9, 10, 64, 3, 1, 1, 1, 2, True),
    (2, 32, 11, 10, 96, 3, 2, 1, 1, 2, False),
    (1, 48, 10, 10, 96, 3, 1, 2, 2, 3, True),
    # A small output with many weights: fewer tiles than threads need, a block's tiles split between them
    # (each packs the block), a partial last channel block.
    (1, 64, 5, 5, 72, 3, 1, 1, 1, 1, False),
    # Depthwise and narrow groups through the plane kernels on phase planes (strided forward and weight
    # gradient) and upsampled output gradients (input gradient): rows of whole vectors and of partial
    # ones, stride 3 with dilation, 15 output channels per group (blocks of 8, 4, 2 and 1), 25 and 8 taps,
    # a padding past the kernel's reach.
    (2, 16, 14, 14, 16, 3, 2, 1, 1, 16, True),
    (1, 4, 40, 37, 4, 3, 2, 1, 1, 4, False),
    (2, 3, 19, 23, 3, 3, 3, 2, 2, 3, True),
    (2, 4, 12, 13, 30, 5, 1, 2, 1, 2, True),
    (1, 4, 6, 6, 4, 3, 2, 3, 1, 2, True),
    (2, 6, 9, 20, 6, (2, 4), (2, 1), (1, 2), 1, 6, False),
    (1, 2, 5, 64, 2, 3, 1, 1, 1, 2, False),
    (2, 16, 9, 11, 16, 3, 1, 1, 1, 2, True),       # 8 channels per group each side: eight outputs at a time
    (2, 24, 9, 10, 24, 3, 1, 1, 1, 2, True),       # 12 per group each side: eight outputs, then four
    (1, 20, 10, 9, 10, 3, 2, 1, 1, 2, False),      # 10 input and 5 output channels per group, stride 2
    # Blocked kernels on inputs of 2 and 4 channels (interleaved into the padded copy, no transpose).
    (2, 2, 11, 12, 16, 3, 1, 1, 1, 1, True),
    (1, 4, 9, 13, 20, 3, 2, 1, 1, 1, False),
]

# (N, Cin, L, Cout, kernel, stride, padding, dilation, groups, bias)
CONV1D_CASES = [
    (2, 3, 20, 8, 3, 1, 1, 1, 1, True),
    (2, 4, 33, 6, 5, 2, 2, 3, 2, False),
    (1, 1, 100, 8, 25, 4, 10, 1, 1, True),          # long strided front end
    (3, 6, 17, 6, 3, 1, 2, 2, 6, True),            # depthwise dilated
    (2, 8, 9, 4, 1, 1, 0, 1, 1, True),
    (2, 8, 300, 24, 5, 1, 2, 1, 1, True),          # direct: forward and input gradient along rows, blocked weight gradient
    (2, 1, 300, 200, 10, 5, 0, 1, 1, True),        # 1-channel front end: one-panel GEMM, auto's im2col
    # The direct kernels along rows (conv_rows.cpp) and the channels-last blocked ones, by pass: 20 input
    # channels (blocked forward, rows input gradient, blocked weight gradient); 270 output entries (blocked
    # input gradient); partial pieces of outputs and a partial channel block, dilated (rows everywhere);
    # stride 3 with 14 entries (the weight gradient's runs reordered by phase, masked row ends); rows longer
    # than a slice; short rows summed over several images per call.
    (2, 20, 70, 24, 3, 1, 1, 1, 1, True),
    (2, 24, 130, 90, 3, 1, 2, 1, 1, False),
    (3, 5, 150, 13, 4, 1, 3, 2, 1, True),
    (2, 2, 203, 10, 7, 3, 2, 1, 1, True),
    (1, 4, 2100, 6, 3, 1, 1, 2, 1, False),
    (5, 3, 40, 7, 3, 1, 0, 1, 1, True),
    (1, 70, 1030, 70, 2, 1, 0, 3, 1, False),       # the weight gradient's passes over part of the channels
    (2, 20, 90, 12, 3, 1, 3, 3, 1, True),          # dilated: forward along rows with 20 channels
    (1, 100, 60, 8, 3, 1, 2, 2, 1, False),         # dilated with 300 entries: blocked forward
]


def _pair(v):
    return v if isinstance(v, tuple) else (v, v)


def _make(shape_x, shape_w, cout, bias, dtype):
    x = torch.randn(shape_x, dtype=dtype, requires_grad=True)
    w = torch.randn(shape_w, dtype=dtype, requires_grad=True)
    b = torch.randn(cout, dtype=dtype, requires_grad=True) if bias else None
    return x, w, b


def _check_against_torch(ours, theirs, tensors, tol):
    out, ref = ours(), theirs()
    torch.testing.assert_close(out, ref, **tol)
    grad_out = torch.randn_like(ref)
    leaves = [t for t in tensors if t is not None]
    got = torch.autograd.grad(out, leaves, grad_out)
    want = torch.autograd.grad(ref, leaves, grad_out)
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("case", CONV2D_CASES)
def test_conv2d_matches_torch(case, algo, dtype):
    n, cin, h, w_, cout, k, s, p, d, g, bias = case
    kh, kw = _pair(k)
    x, w, b = _make((n, cin, h, w_), (cout, cin // g, kh, kw), cout, bias, dtype)
    _check_against_torch(
        lambda: FC.conv2d(x, w, b, s, p, d, g, algo=algo), lambda: F.conv2d(x, w, b, s, p, d, g), (x, w, b), TOL[dtype]
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("case", CONV1D_CASES)
def test_conv1d_matches_torch(case, algo, dtype):
    n, cin, length, cout, k, s, p, d, g, bias = case
    x, w, b = _make((n, cin, length), (cout, cin // g, k), cout, bias, dtype)
    _check_against_torch(
        lambda: FC.conv1d(x, w, b, s, p, d, g, algo=algo), lambda: F.conv1d(x, w, b, s, p, d, g), (x, w, b), TOL[dtype]
    )


@pytest.mark.parametrize("algo", ["im2col", "direct"])
@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("kernel,dilation", [(3, 1), (4, 1), ((2, 5), (3, 1)), (4, 2)])
def test_conv2d_string_padding(algo, padding, kernel, dilation):
    kh, kw = _pair(kernel)
    x, w, b = _make((2, 4, 9, 8), (6, 2, kh, kw), 6, True, torch.float64)
    _check_against_torch(
        lambda: FC.conv2d(x, w, b, 1, padding, dilation, 2, algo=algo),
        lambda: F.conv2d(x, w, b, 1, padding, dilation, 2),
        (x, w, b), TOL[torch.float64],
    )


@pytest.mark.parametrize("algo", ["im2col", "direct"])
@pytest.mark.parametrize("kernel,dilation", [(3, 1), (4, 1), (6, 3)])
def test_conv1d_same_padding(algo, kernel, dilation):
    x, w, b = _make((2, 3, 15), (4, 3, kernel), 4, True, torch.float64)
    _check_against_torch(
        lambda: FC.conv1d(x, w, b, 1, "same", dilation, algo=algo),
        lambda: F.conv1d(x, w, b, 1, "same", dilation),
        (x, w, b), TOL[torch.float64],
    )


@pytest.mark.parametrize("algo", ["im2col", "direct"])
def test_unbatched_inputs(algo):
    x, w, b = _make((3, 8, 9), (4, 3, 3, 3), 4, True, torch.float64)
    _check_against_torch(
        lambda: FC.conv2d(x, w, b, padding=1, algo=algo), lambda: F.conv2d(x, w, b, padding=1), (x, w, b),
        TOL[torch.float64],
    )
    x1, w1, b1 = _make((3, 12), (5, 3, 3), 5, True, torch.float64)
    _check_against_torch(
        lambda: FC.conv1d(x1, w1, b1, algo=algo), lambda: F.conv1d(x1, w1, b1), (x1, w1, b1), TOL[torch.float64]
    )


@pytest.mark.parametrize("algo", ["im2col", "direct"])
def test_batch_zero(algo):
    x = torch.randn(0, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(8, dtype=torch.float64, requires_grad=True)
    out = FC.conv2d(x, w, b, padding=1, algo=algo)
    assert out.shape == F.conv2d(x, w, b, padding=1).shape == (0, 8, 6, 6)
    out.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros_like(b))


@pytest.mark.parametrize("algo", ["im2col", "direct"])
def test_noncontiguous_and_channels_last(algo):
    base = torch.randn(2, 6, 12, 10, dtype=torch.float64)
    w = torch.randn(4, 6, 3, 3, dtype=torch.float64)
    cases = [
        base[:, :, ::2, 1:],                                   # strided slice
        base.transpose(2, 3),                                  # transposed spatial dims
        base.contiguous(memory_format=torch.channels_last),    # NHWC storage
        torch.randn(1, 6, 1, 10, dtype=torch.float64).expand(2, 6, 5, 10),  # broadcast input
    ]
    for x in cases:
        want = F.conv2d(x.contiguous(), w, padding=1)
        torch.testing.assert_close(FC.conv2d(x, w, padding=1, algo=algo), want, **TOL[torch.float64])
    w_cl = w.contiguous(memory_format=torch.channels_last)
    w_expanded = torch.randn(1, 6, 3, 3, dtype=torch.float64).expand(4, 6, 3, 3)
    for weight in (w_cl, w_expanded, w.transpose(2, 3)):
        torch.testing.assert_close(
            FC.conv2d(base, weight, algo=algo), F.conv2d(base, weight.contiguous()), **TOL[torch.float64]
        )


def test_output_mask_returns_only_requested_gradients():
    x, w, b = _make((2, 4, 6, 6), (4, 4, 3, 3), 4, True, torch.float64)
    go = torch.randn(2, 4, 4, 4, dtype=torch.float64)
    for mask in itertools.product([False, True], repeat=3):
        grads = torch.ops.fastconv.conv2d_backward(go, x, w, [1, 1], [0, 0], [1, 1], 1, list(mask), "im2col")
        for requested, grad, like in zip(mask, grads, (x, w, b)):
            assert grad.shape == (like.shape if requested else (0,))
    # Only the weight needs a gradient: autograd must not ask for the others.
    x.requires_grad_(False)
    FC.conv2d(x, w, None).sum().backward()
    assert x.grad is None and w.grad is not None


@pytest.mark.parametrize("algo", ["im2col", "direct"])
@pytest.mark.parametrize(
    "args",
    [
        dict(shape=(2, 4, 5, 6), weight=(6, 2, 3, 2), stride=(2, 1), padding=(1, 0), dilation=1, groups=2),
        dict(shape=(1, 3, 7, 7), weight=(3, 1, 3, 3), stride=1, padding=2, dilation=2, groups=3),
        dict(shape=(2, 2, 4, 5), weight=(3, 2, 1, 1), stride=1, padding=0, dilation=1, groups=1),
    ],
)
def test_gradcheck_conv2d(algo, args):
    x = torch.randn(args["shape"], dtype=torch.float64, requires_grad=True)
    w = torch.randn(args["weight"], dtype=torch.float64, requires_grad=True)
    b = torch.randn(args["weight"][0], dtype=torch.float64, requires_grad=True)
    fn = lambda x, w, b: FC.conv2d(x, w, b, args["stride"], args["padding"], args["dilation"], args["groups"], algo=algo)
    assert torch.autograd.gradcheck(fn, (x, w, b))


@pytest.mark.parametrize("algo", ["im2col", "direct"])
def test_gradcheck_conv1d(algo):
    x = torch.randn(2, 4, 11, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 2, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: FC.conv1d(x, w, b, 2, 1, 2, 2, algo=algo), (x, w, b))


@pytest.mark.parametrize("algo", ["im2col", "direct"])
def test_opcheck(algo):
    x = torch.randn(2, 4, 7, 6, requires_grad=True)
    w = torch.randn(6, 2, 3, 3, requires_grad=True)
    b = torch.randn(6, requires_grad=True)
    x1 = torch.randn(2, 3, 12, requires_grad=True)
    w1 = torch.randn(4, 3, 3, requires_grad=True)
    b1 = torch.randn(4, requires_grad=True)
    torch.library.opcheck(torch.ops.fastconv.conv1d, (x1, w1, b1, [2], [1], [1], 1, algo))
    torch.library.opcheck(torch.ops.fastconv.conv2d, (x, w, b, [2, 1], [1, 1], [1, 2], 2, algo))
    torch.library.opcheck(torch.ops.fastconv.conv2d, (x, w, None, [1, 1], [0, 0], [1, 1], 2, algo))
    go = torch.randn(2, 6, 4, 4)
    # Backward ops run inside autograd's backward pass, on tensors that do not require grad.
    x, w, x1, w1 = (t.detach() for t in (x, w, x1, w1))
    torch.library.opcheck(
        torch.ops.fastconv.conv2d_backward, (go, x, w, [2, 1], [1, 1], [1, 2], 2, [True, True, True], algo)
    )
    torch.library.opcheck(
        torch.ops.fastconv.conv2d_backward, (go, x, w, [2, 1], [1, 1], [1, 2], 2, [False, True, False], algo)
    )
    torch.library.opcheck(
        torch.ops.fastconv.conv1d_backward,
        (torch.randn(2, 4, 6), x1, w1, [2], [1], [1], 1, [True, True, False], algo),
    )


@pytest.mark.parametrize("algo", ALGOS)
def test_channels_last_formats_match_torch(algo):
    # torch gives a 2-D convolution's output and its input and weight gradients the channels-last format
    # where the input or the weight suggests it: dense, strided, grouped, depthwise and 1x1 layers, in
    # float32 (the blocked kernel writes channels-last tiles directly) and float64.
    channels_last = torch.channels_last
    _strides = memory_formats.strides_that_matter
    checked = 0
    for dtype in (torch.float32, torch.float64):
        for x_shape, w_shape, stride, padding, groups in memory_formats.CONV_CASES:
            for x_cl, w_cl in ((True, False), (False, True), (True, True), (False, False)):
                x = torch.randn(x_shape, dtype=dtype)
                w = torch.randn(w_shape, dtype=dtype)
                x = x.contiguous(memory_format=channels_last) if x_cl else x
                w = w.contiguous(memory_format=channels_last) if w_cl else w
                b = torch.randn(w_shape[0], dtype=dtype)
                args = ([stride] * 2, [padding] * 2, [1, 1], groups)
                out = torch.ops.fastconv.conv2d(x, w, b, *args, algo)
                ref = F.conv2d(x, w, b, stride, padding, 1, groups)
                assert _strides(out) == _strides(ref), (x_shape, w_shape, x_cl, w_cl, out.stride(), ref.stride())
                torch.testing.assert_close(out, ref, **TOL[dtype])
                grad = torch.randn_like(ref)
                gi, gw, _ = torch.ops.fastconv.conv2d_backward(grad, x, w, *args, [True, True, False], algo)
                ref_gi, ref_gw, _ = torch.ops.aten.convolution_backward(grad, x, w, None, *args[:3], False, [0, 0],
                                                                         groups, [True, True, False])
                assert _strides(gi) == _strides(ref_gi) and _strides(gw) == _strides(ref_gw), (x_shape, w_shape, x_cl, w_cl)
                torch.testing.assert_close(gi, ref_gi, **TOL[dtype])
                torch.testing.assert_close(gw, ref_gw, **TOL[dtype])
                checked += 1
    assert checked == 40
    # The fake kernels give the same strides (torch.compile, meta tensors).
    x = torch.randn(2, 16, 10, 9).contiguous(memory_format=channels_last)
    w = torch.randn(32, 16, 3, 3)
    torch.library.opcheck(torch.ops.fastconv.conv2d, (x, w, None, [1, 1], [1, 1], [1, 1], 1, algo))
    torch.library.opcheck(torch.ops.fastconv.conv2d, (x.contiguous(), w.contiguous(memory_format=channels_last),
                                                      None, [2, 1], [1, 0], [1, 1], 1, algo))
    torch.library.opcheck(torch.ops.fastconv.conv2d_backward,
                          (torch.randn(2, 32, 10, 9), x, w, [1, 1], [1, 1], [1, 1], 1, [True, True, True], algo))


def test_determinism_bitwise():
    x, w, b = _make((4, 8, 12, 12), (8, 4, 3, 3), 8, True, torch.float32)
    for algo in ("im2col", "direct"):
        grads = []
        for _ in range(2):
            out = FC.conv2d(x, w, b, padding=1, groups=2, algo=algo)
            grads.append(torch.autograd.grad(out, (x, w, b), torch.ones_like(out)))
        for g1, g2 in zip(*grads):
            assert torch.equal(g1, g2)


def test_im2col_workspace_cap_blocks_rows(monkeypatch):
    x, w, b = _make((3, 5, 17, 13), (7, 5, 3, 3), 7, True, torch.float64)
    full = FC.conv2d(x, w, b, padding=1, algo="im2col")
    grads_full = torch.autograd.grad(full, (x, w, b), torch.ones_like(full))
    args = (x, w, [1, 1], [1, 1], [1, 1], 1, "im2col")
    unbounded = torch.ops.fastconv.conv2d_workspace_bytes(*args)
    # A cap smaller than one image's column buffer forces blocks of output rows.
    monkeypatch.setenv("FASTCONV_IM2COL_WORKSPACE_BYTES", str(5 * 9 * 13 * 8 * 3))
    capped = torch.ops.fastconv.conv2d_workspace_bytes(*args)
    assert capped < unbounded
    blocked = FC.conv2d(x, w, b, padding=1, algo="im2col")
    torch.testing.assert_close(blocked, full, rtol=1e-12, atol=1e-12)
    for g1, g2 in zip(torch.autograd.grad(blocked, (x, w, b), torch.ones_like(blocked)), grads_full):
        torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-12)
    # direct needs no column buffer: its plane kernels (7 output channels) use, per thread, a padded copy
    # of one image's planes (its 5 input planes, or the 7 output-gradient planes of the input gradient)
    # and the grids of up to eight outputs computed together.
    direct = torch.ops.fastconv.conv2d_workspace_bytes(x, w, [1, 1], [1, 1], [1, 1], 1, "direct")
    assert 0 < direct <= torch.get_num_threads() * 8 * (7 * (19 * 15 + 2 + 64) + 8 * (17 * 15 + 64))


def test_torch_compile_fullgraph():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w1 = torch.nn.Parameter(torch.randn(8, 3, 3, 3) * 0.2)
            self.w2 = torch.nn.Parameter(torch.randn(8, 1, 3, 3) * 0.2)
            self.w3 = torch.nn.Parameter(torch.randn(4, 8, 5) * 0.2)

        def forward(self, x):
            y = torch.relu(FC.conv2d(x, self.w1, padding="same"))
            y = FC.conv2d(y, self.w2, stride=2, padding=1, groups=8, algo="direct")
            return FC.conv1d(y.flatten(2), self.w3, padding=2).sum()

    net = Net()
    x = torch.randn(2, 3, 10, 10)
    compiled = torch.compile(net, fullgraph=True)
    eager_out = net(x)
    eager_grads = torch.autograd.grad(eager_out, list(net.parameters()))
    compiled_out = compiled(x)
    compiled_grads = torch.autograd.grad(compiled_out, list(net.parameters()))
    torch.testing.assert_close(compiled_out, eager_out)
    for g1, g2 in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(g1, g2)


# Each entry: what to call, as keyword overrides of a valid conv2d call. torch and fastconv must raise
# the same exception class.
BAD_CONV2D_CALLS = [
    dict(padding=-1),
    dict(padding="foo"),
    dict(padding="same", stride=2),
    dict(stride=0),
    dict(stride=(1, -1)),
    dict(dilation=0),
    dict(groups=0),
    dict(groups=4),                                   # 6 channels not divisible
    dict(weight=torch.randn(4, 4, 3, 3)),            # weight/input channel mismatch
    dict(weight=torch.randn(3, 3, 3, 3), groups=2),  # out_channels not divisible by groups
    dict(weight=torch.randn(4, 6, 9, 9)),            # kernel larger than padded input
    dict(bias=torch.randn(3)),                       # bias of the wrong length
    dict(bias=torch.randn(4, 1)),
    dict(input=torch.randn(6, 5)),                   # wrong dims
    dict(input=torch.randn(1, 1, 6, 5, 5)),
    dict(weight=torch.randn(4, 6, 3)),               # weight dims
    dict(input=torch.randn(1, 6, 5, 5, dtype=torch.float64)),  # dtype mismatch
    dict(padding=(1, 1, 1)),
    dict(stride=(1, 1, 1)),
]


@pytest.mark.parametrize("overrides", BAD_CONV2D_CALLS, ids=lambda o: ",".join(sorted(o)))
def test_bad_conv2d_raises_like_torch(overrides):
    call = dict(input=torch.randn(1, 6, 5, 5), weight=torch.randn(4, 6, 3, 3), bias=None, stride=1, padding=0,
                dilation=1, groups=1)
    call.update(overrides)
    with pytest.raises(Exception) as theirs:
        F.conv2d(**call)
    with pytest.raises(Exception) as ours:
        FC.conv2d(**call)
    assert type(ours.value) is type(theirs.value), (ours.value, theirs.value)
    assert str(ours.value)


def test_bad_conv1d_raises_like_torch():
    x, w = torch.randn(2, 4, 10), torch.randn(3, 4, 3)
    for kwargs in (dict(padding=-2), dict(stride=0), dict(groups=3), dict(padding="nope"), dict(padding=(1, 1))):
        with pytest.raises(Exception) as theirs:
            F.conv1d(x, w, **kwargs)
        with pytest.raises(Exception) as ours:
            FC.conv1d(x, w, **kwargs)
        assert type(ours.value) is type(theirs.value), kwargs
    with pytest.raises(RuntimeError, match="Expected 2D \\(unbatched\\) or 3D"):
        FC.conv1d(torch.randn(2, 4, 10, 1), w)


def test_error_messages_name_the_problem():
    with pytest.raises(RuntimeError, match=r"6 channels, groups=2\), got 4"):
        FC.conv2d(torch.randn(1, 6, 5, 5), torch.randn(4, 4, 3, 3), groups=2)
    with pytest.raises(RuntimeError, match="float32 and float64"):
        FC.conv2d(torch.randn(1, 3, 5, 5).half(), torch.randn(4, 3, 3, 3).half())
    with pytest.raises(RuntimeError, match="float32 and float64"):
        FC.conv2d(torch.randint(0, 3, (1, 3, 5, 5)), torch.randint(0, 3, (4, 3, 3, 3)))
    with pytest.raises(ValueError, match="algo"):
        FC.conv2d(torch.randn(1, 3, 5, 5), torch.randn(4, 3, 3, 3), algo="winograd")
    with pytest.raises(RuntimeError, match="bias"):
        FC.conv2d(torch.randn(1, 3, 5, 5), torch.randn(4, 3, 3, 3), torch.randn(5))


def test_threads_agree():
    x, w, b = _make((3, 8, 14, 14), (16, 8, 3, 3), 16, True, torch.float32)
    previous = torch.get_num_threads()
    results = {}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for algo in ("im2col", "direct"):
                out = FC.conv2d(x, w, b, padding=1, algo=algo)
                results[threads, algo] = (out, *torch.autograd.grad(out, (x, w, b), torch.ones_like(out)))
    finally:
        torch.set_num_threads(previous)
    for algo in ("im2col", "direct"):
        for a, c in zip(results[1, algo], results[2, algo]):
            torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-4)


def test_double_backward_raises():
    x, w, b = _make((1, 2, 5, 5), (3, 2, 3, 3), 3, True, torch.float64)
    out = FC.conv2d(x, w, b)
    (gx,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        gx.sum().backward()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("length", [1, 31, 32, 33, 95, 1000, 16001])
def test_bias_gradient_is_the_sum_of_the_output_gradient(length, dtype):
    # Summed in double in groups of lanes and then the rest: every element counts, to float rounding.
    x = torch.randn(2, 3, length, dtype=dtype)
    w, b = torch.randn(4, 3, 1, dtype=dtype), torch.randn(4, dtype=dtype)
    grad_out = torch.randn(2, 4, length, dtype=dtype) * 1000
    gb = torch.ops.fastconv.conv1d_backward(grad_out, x, w, [1], [0], [1], 1, [False, False, True], "auto")[2]
    torch.testing.assert_close(gb, grad_out.double().sum((0, 2)).to(dtype), rtol=1e-6, atol=1e-6)
    # Through autograd (torch's own float sum rounds more than these sums in double: they are compared with
    # the double reference).
    b.requires_grad_()
    ours = torch.autograd.grad(FC.conv1d(x, w, b), b, grad_out)[0]
    torch.testing.assert_close(ours, grad_out.double().sum((0, 2)).to(dtype), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512"])
def test_every_cpu_isa_path(isa):
    """Each compiled micro-kernel variant (forced with FASTCONV_CPU_ISA) gives torch's results."""
    import os
    import subprocess
    import sys

    script = """
import torch, torch.nn.functional as F, fastconv
import fastconv
from fastconv import functional as FC
torch.manual_seed(0)
for dtype in (torch.float32, torch.float64):
    for (cin, cout, k, s, p, g, algo) in [(5, 13, 3, 1, 1, 1, "im2col"), (8, 40, 1, 1, 0, 1, "im2col"),
                                          (6, 9, 3, 2, 0, 3, "im2col"), (5, 37, 3, 1, 1, 1, "direct"),
                                          (6, 34, 3, 2, 2, 2, "direct")]:
        x = torch.randn(2, cin, 11, 37, dtype=dtype, requires_grad=True)
        w = torch.randn(cout, cin // g, k, k, dtype=dtype, requires_grad=True)
        out, ref = FC.conv2d(x, w, None, s, p, 1, g, algo=algo), F.conv2d(x, w, None, s, p, 1, g)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
        for a, b in zip(torch.autograd.grad(out.sum(), (x, w)), torch.autograd.grad(ref.sum(), (x, w))):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # An output over 8 MiB: the direct kernel writes it with non-temporal stores.
    x, w = torch.randn(3, 8, 129, 128, dtype=dtype), torch.randn(64, 8, 3, 3, dtype=dtype)
    torch.testing.assert_close(FC.conv2d(x, w, None, 1, 1, algo="direct"), F.conv2d(x, w, None, 1, 1),
                               rtol=1e-4, atol=1e-4)
    # The plane kernels' streamed planes (depthwise output and input gradient over 8 MiB, unaligned planes).
    x = torch.randn(2, 64, 129, 129, dtype=dtype, requires_grad=True)
    w = torch.randn(64, 1, 3, 3, dtype=dtype, requires_grad=True)
    out, ref = FC.conv2d(x, w, None, 1, 1, 1, 64, algo="direct"), F.conv2d(x, w, None, 1, 1, 1, 64)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.autograd.grad(out.sum(), x)[0], torch.autograd.grad(ref.sum(), x)[0],
                               rtol=1e-4, atol=1e-4)
    # The plane kernels at the instruction set's own vector width: 4 channels per group, and depthwise rows
    # of 33 pixels at stride 1 and 2 (3x3 and 5x5), forward, input and weight gradients.
    for (cin, cout, k, s, p, g) in [(8, 16, 3, 1, 1, 4), (8, 16, 3, 2, 1, 4), (6, 6, 3, 1, 1, 6),
                                    (6, 6, 3, 2, 1, 6), (6, 6, 5, 1, 2, 6)]:
        x = torch.randn(2, cin, 21, 33, dtype=dtype, requires_grad=True)
        w = torch.randn(cout, cin // g, k, k, dtype=dtype, requires_grad=True)
        out, ref = FC.conv2d(x, w, None, s, p, 1, g, algo="direct"), F.conv2d(x, w, None, s, p, 1, g)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
        for a, b in zip(torch.autograd.grad(out.sum(), (x, w)), torch.autograd.grad(ref.sum(), (x, w))):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # Depthwise on small planes: narrow rows and flat planes (stride 1, 3x3 and 5x5; AVX-512), channel
    # blocks (the last one partial, stride 2, a padding past the kernel's half).
    for stride, k, p in ((1, 3, 1), (1, 5, 2), (2, 3, 1), (1, 3, 2)):
        x = torch.randn(2, 20, 14, 13, dtype=dtype, requires_grad=True)
        w = torch.randn(20, 1, k, k, dtype=dtype, requires_grad=True)
        out, ref = FC.conv2d(x, w, None, stride, p, 1, 20, algo="direct"), F.conv2d(x, w, None, stride, p, 1, 20)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
        for a, b in zip(torch.autograd.grad(out.sum(), (x, w)), torch.autograd.grad(ref.sum(), (x, w))):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # The bias gradient's sums (vectorised per instruction set), whole groups of lanes and the rest.
    for length in (1, 31, 32, 33, 200):
        x = torch.randn(3, 2, length, dtype=dtype)
        w = torch.randn(5, 2, 1, dtype=dtype)
        grad_out = torch.randn(3, 5, length, dtype=dtype)
        gb = torch.ops.fastconv.conv1d_backward(grad_out, x, w, [1], [0], [1], 1, [False, False, True], "auto")[2]
        torch.testing.assert_close(gb, grad_out.double().sum((0, 2)).to(dtype), rtol=1e-6, atol=1e-6)
print(fastconv.build_info()["cpu_isa"])
"""
    env = dict(os.environ, FASTCONV_CPU_ISA=isa)
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    # The forced ISA is used unless the CPU lacks it (then the widest it supports is).
    assert result.stdout.strip().splitlines()[-1] in {isa, "avx2", "baseline"}


@pytest.mark.parametrize("groups", [1, 2])
def test_im2col_merges_small_planes_across_images(groups):
    # 10x10 outputs: the im2col forward merges about 1024 / 100 = 11 images per GEMM, so a batch of 13
    # runs one merged GEMM and a partial one; a batch of 1 runs unmerged.
    for batch in (13, 1):
        x, w, b = _make((batch, 4, 12, 12), (6, 4 // groups, 3, 3), 6, True, torch.float64)
        expected = F.conv2d(x, w, b, groups=groups)
        got = FC.conv2d(x, w, b, groups=groups, algo="im2col")
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
        for ours, theirs in zip(torch.autograd.grad(got, (x, w, b), torch.ones_like(got)),
                                torch.autograd.grad(expected, (x, w, b), torch.ones_like(expected))):
            torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)


def test_strided_pointwise_weight_gradient_under_a_workspace_cap(monkeypatch):
    # A strided 1x1 layer's weight gradient by dot products reads a compact copy of the pixels it uses
    # (here 24 x 23 = 552 of them per image); a cap of two images' copies makes it go two images at a
    # time, the last chunk one image, summed into the same weight gradient. Under that cap the forward
    # reads the input itself instead of a compact copy of all five images.
    x, w, b = _make((5, 5, 47, 45), (7, 5, 1, 1), 7, True, torch.float64)
    ref = F.conv2d(x, w, b, stride=2)
    grad_out = torch.randn_like(ref)
    want = torch.autograd.grad(ref, (x, w, b), grad_out)
    args = (x, w, [2, 2], [0, 0], [1, 1], 1, "im2col")
    unbounded = torch.ops.fastconv.conv2d_workspace_bytes(*args)
    assert unbounded >= 5 * 5 * 24 * 23 * 8  # the forward's compact copy of every image's picked pixels
    monkeypatch.setenv("FASTCONV_IM2COL_WORKSPACE_BYTES", str(2 * 5 * 24 * 23 * 8))
    assert torch.ops.fastconv.conv2d_workspace_bytes(*args) < unbounded
    out = FC.conv2d(x, w, b, stride=2, algo="im2col")
    torch.testing.assert_close(out, ref, **TOL[torch.float64])
    for got, expected in zip(torch.autograd.grad(out, (x, w, b), grad_out), want):
        torch.testing.assert_close(got, expected, **TOL[torch.float64])


def test_direct_weight_gradient_over_many_images():
    # A long reduction: the weight gradient sums passes of output pixels over five large images, the
    # passes crossing from one image to the next (127 x 127 planes).
    x = torch.randn(5, 4, 127, 127, dtype=torch.float64, requires_grad=True)
    w = torch.randn(64, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    out, ref = FC.conv2d(x, w, None, 1, 1, algo="direct"), F.conv2d(x, w, None, 1, 1)
    grad_out = torch.randn_like(ref)
    # The 41 MB output is written past the caches, its planes (127 x 127) not aligned to the vectors.
    torch.testing.assert_close(out, ref, **TOL[torch.float64])
    (got,) = torch.autograd.grad(out, [w], grad_out)
    (want,) = torch.autograd.grad(ref, [w], grad_out)
    torch.testing.assert_close(got, want, **TOL[torch.float64])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("x_shape,w_shape,stride,groups", [((2, 16, 48, 48), (160, 16, 3, 3), 1, 1),
                                                           ((3, 24, 40, 40), (96, 8, 3, 3), 2, 3)])
def test_direct_forward_with_several_channel_blocks_pixel_major(x_shape, w_shape, stride, groups, dtype):
    # Over 64 tiles of output pixels, several channel blocks (or groups) and packed weights smaller than
    # half the input: the blocked forward runs its items pixel group by pixel group, each thread packing
    # every block.
    x, w, b = torch.randn(x_shape, dtype=dtype), torch.randn(w_shape, dtype=dtype), torch.randn(w_shape[0], dtype=dtype)
    torch.testing.assert_close(FC.conv2d(x, w, b, stride, 1, 1, groups, algo="direct"),
                               F.conv2d(x, w, b, stride, 1, 1, groups), **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("x_shape,w_shape,stride,padding", [((1, 320, 7, 7), (122, 320, 3, 3), 1, 1),
                                                            ((1, 128, 7, 7), (320, 128, 3, 3), 1, 1),
                                                            ((1, 128, 13, 13), (320, 128, 5, 5), 2, 2),
                                                            ((1, 112, 5, 6), (120, 112, 5, 5), 1, 2)])
def test_direct_blocks_packed_in_channel_chunks(x_shape, w_shape, stride, padding, dtype):
    # One image of few pixels and packed weight blocks over 640 KiB: with one or two threads (each then
    # takes all of a block's pixels), each block is packed and summed a chunk of input channels at a time,
    # in the forward (a last block of 58 or 26 channels) and in the input gradient (the layer's weight read
    # transposed, and tap-major by stride phase).
    x, w, b = _make(x_shape, w_shape, w_shape[0], True, dtype)
    # Sums of up to 8000 float32 products of magnitude ~200: an absolute tolerance for that.
    tol = TOL[dtype] if dtype == torch.float64 else dict(rtol=1e-4, atol=2e-3)
    _check_against_torch(lambda: FC.conv2d(x, w, b, stride, padding, algo="direct"),
                         lambda: F.conv2d(x, w, b, stride, padding), (x, w, b), tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("x_shape,w_shape,stride,padding,dilation,groups", [
    ((2, 32, 7, 7), (64, 32, 3, 3), 1, 1, 1, 1),        # a row per tile (ResNet's layer4)
    ((1, 16, 14, 14), (64, 16, 3, 3), 1, 1, 1, 1),      # two tiles per row
    ((2, 16, 14, 14), (64, 16, 3, 3), 2, 1, 1, 1),      # strided: the input gradient by phases
    ((1, 16, 7, 7), (64, 16, 5, 5), 1, 2, 1, 1),        # two pixels in the padding: no edge skipped
    ((1, 16, 14, 14), (64, 16, 3, 3), 1, 2, 2, 1),      # dilated
    ((1, 16, 7, 9), (64, 16, 3, 3), 1, (1, 0), 1, 1),   # padded rows only
    ((1, 16, 9, 7), (64, 16, 3, 3), 1, (0, 1), 1, 1),   # padded columns only
    ((1, 16, 3, 3), (64, 16, 3, 3), 1, 3, 1, 1),        # taps reading nothing but padding
    ((1, 32, 7, 7), (128, 16, 3, 3), 1, 1, 1, 2),       # two groups
    ((1, 16, 7, 7), (64, 16, 1, 3), 1, (0, 1), 1, 1),   # a 1x3 kernel
    ((2, 16, 12, 12), (64, 16, 3, 3), 1, 1, 1, 1),      # rows of 12: whole tiles of 6 (AVX2) and 4 (baseline)
])
def test_direct_tiles_skip_padding(x_shape, w_shape, stride, padding, dilation, groups, dtype):
    # Output rows of whole tiles (7 pixels on AVX-512's 7 x 64 tile; 12-pixel rows for the other
    # instruction sets' tiles): each tile leaves out the taps that read only padding and the multiply-adds
    # of a first or last pixel beside the row; every other product must stay.
    x, w, b = _make(x_shape, w_shape, w_shape[0], True, dtype)
    _check_against_torch(lambda: FC.conv2d(x, w, b, stride, padding, dilation, groups, algo="direct"),
                         lambda: F.conv2d(x, w, b, stride, padding, dilation, groups), (x, w, b), TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("width", [1, 2, 3, 5, 8, 12, 16, 31, 33])
def test_plane_kernels_on_every_row_width(width, dtype):
    # Rows of every length class the plane kernels copy inline (one element up to two 64-byte vectors,
    # then a longer run), at stride 1 and 2: forward, input and weight gradients against torch.
    for stride in (1, 2):
        x, w, b = _make((2, 3, 4, width), (6, 1, 3, 3), 6, True, dtype)
        _check_against_torch(lambda: FC.conv2d(x, w, b, stride, 1, 1, 3, algo="direct"),
                             lambda: F.conv2d(x, w, b, stride, 1, 1, 3), (x, w, b), TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_plane_kernels_stream_large_planes(dtype):
    # Depthwise and 2-per-group outputs and input gradients of 8-32 MiB are written past the caches, a
    # plane at a time from an unaligned start; 32 MiB and more are written normally.
    for shape in [(2, 64, 129, 129), (1, 64, 261, 255)]:
        for groups, cout in ((64, 64), (32, 64)):
            x, w, b = _make(shape, (cout, 64 // groups, 3, 3), cout, True, dtype)
            # Each float32 weight gradient sums 33k-66k products: an absolute tolerance for that.
            tol = TOL[dtype] if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-2)
            _check_against_torch(lambda: FC.conv2d(x, w, b, 1, 1, 1, groups, algo="direct"),
                                 lambda: F.conv2d(x, w, b, 1, 1, 1, groups), (x, w, b), tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_depthwise_planes_stream_aligned_rows(dtype):
    # A 12.6 MB depthwise output and input gradient whose rows are whole 64-byte vectors (128 pixels) from an
    # aligned tensor: streamed from the correlation itself, with no staging plane; both gradients in one pass.
    n = 4 if dtype == torch.float32 else 2
    x, w, b = _make((n, 48, 128, 128), (48, 1, 3, 3), 48, True, dtype)
    tol = TOL[dtype] if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-2)
    _check_against_torch(lambda: FC.conv2d(x, w, b, 1, 1, 1, 48, algo="direct"),
                         lambda: F.conv2d(x, w, b, 1, 1, 1, 48), (x, w, b), tol)


def test_direct_forward_of_a_large_aligned_output():
    # 3 x 64 x 128 x 128 float32 outputs (12.6 MB): planes and tiles aligned to the vectors, so every
    # full block is written with non-temporal stores; the stride-2 stem shape crosses images mid-tile.
    for x_shape, w_shape, stride, padding in [((3, 16, 128, 128), (64, 16, 3, 3), 1, 1),
                                              ((4, 3, 224, 224), (64, 3, 7, 7), 2, 3)]:
        x, w = torch.randn(x_shape), torch.randn(w_shape)
        torch.testing.assert_close(FC.conv2d(x, w, None, stride, padding, algo="direct"),
                                   F.conv2d(x, w, None, stride, padding), **TOL[torch.float32])


# (N, C, H, W, kernel, stride, padding, dilation): depthwise layers, which run in channel blocks (a vector
# of channels per pixel), with a partial last block (20, 33 or 17 channels), strides, dilation, a padding
# past the kernel's reach (at stride 1 the input gradient then takes the plane kernels), a 1-row plane, and
# planes of several strips of rows (each strip's rows rebuilt, the padding rows zeroed again).
DEPTHWISE_BLOCK_CASES = [
    (3, 20, 14, 14, 3, 1, 2, 1),
    (2, 20, 100, 90, 3, 1, 1, 1),
    (1, 17, 101, 70, 5, 3, 2, 2),
    (2, 24, 150, 40, (7, 3), (2, 1), (3, 1), 1),
    # Strided input gradients by phases (a padding past the kernel's reach; a stride past the kernel keeps
    # the plane kernels).
    (2, 20, 9, 11, 2, 3, 0, 1),
    (2, 20, 10, 10, 3, 2, 3, 1),
    (2, 20, 11, 9, (3, 2), 2, (1, 0), (1, 2)),
    (2, 40, 15, 13, 3, 2, 1, 1),
    (2, 33, 9, 9, 5, 1, 4, 2),
    (2, 32, 7, 7, 3, 1, 3, 1),
    (2, 48, 6, 6, 3, 3, 0, 1),
    (2, 24, 1, 50, (1, 7), (1, 2), (0, 3), 1),
    (1, 16, 10, 10, 3, 1, 0, 1),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", DEPTHWISE_BLOCK_CASES)
def test_depthwise_channel_blocks(case, dtype):
    n, c, h, w_, k, s, p, d = case
    kh, kw = _pair(k)
    x, w, b = _make((n, c, h, w_), (c, 1, kh, kw), c, True, dtype)
    # A float32 weight gradient over the large planes sums up to 18k products: an absolute tolerance for that.
    tol = TOL[dtype] if dtype == torch.float64 or h * w_ <= 1024 else dict(rtol=1e-4, atol=1e-2)
    _check_against_torch(lambda: FC.conv2d(x, w, b, s, p, d, c, algo="direct"),
                         lambda: F.conv2d(x, w, b, s, p, d, c), (x, w, b), tol)


# (N, C, H, W, kernel, stride, padding): depthwise 3x3 and 5x5 layers whose input and output rows hold 14
# or more pixels, computed on NCHW planes (forward and input gradient, stride 1 and 2): rows narrower than
# a vector of floats, row counts that are not a multiple of four, odd widths, paddings from none to the
# kernel's reach, and wide rows of whole vectors.
DEPTHWISE_NCHW_CASES = [
    (2, 5, 14, 16, 3, 1, 0),
    (2, 3, 20, 33, 3, 1, 0),
    (1, 4, 17, 16, 3, 1, 2),
    (2, 3, 9, 47, 5, 1, 2),
    (2, 3, 11, 40, 5, 2, 1),
    (3, 4, 29, 30, 3, 2, 1),
    (2, 2, 8, 112, 3, 1, 1),
    (1, 3, 6, 30, 3, 2, 0),
    (2, 4, 5, 64, 5, 2, 4),
    (1, 2, 3, 40, 5, 1, 4),
    (2, 3, 31, 29, 3, 2, 1),
]


# Layers whose weight gradient also runs on NCHW planes (input rows of 56 or more pixels, at stride 2 of at
# most 64, or wider in one pass with the input gradient): output rows that end inside a vector, row counts
# that are not a multiple of four, 3x3 and 5x5, with and without padding.
DEPTHWISE_NCHW_WEIGHT_CASES = [
    (2, 3, 9, 57, 3, 1, 1),
    (3, 4, 6, 60, 5, 1, 2),
    (2, 3, 7, 56, 3, 2, 1),
    (2, 2, 5, 63, 5, 2, 0),
    (1, 2, 4, 112, 3, 1, 0),
    (2, 3, 7, 113, 3, 2, 1),
    (1, 2, 6, 70, 5, 2, 2),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", DEPTHWISE_NCHW_CASES + DEPTHWISE_NCHW_WEIGHT_CASES)
def test_depthwise_nchw_planes(case, dtype):
    n, c, h, w_, k, s, p = case
    x, w, b = _make((n, c, h, w_), (c, 1, k, k), c, True, dtype)
    _check_against_torch(lambda: FC.conv2d(x, w, b, s, p, 1, c, algo="direct"),
                         lambda: F.conv2d(x, w, b, s, p, 1, c), (x, w, b), TOL[dtype])


def _check_weight_gradient_on_threads(x, w, grad_out, stride, padding, groups):
    """The weight gradient alone and with the input gradient, on 1 and 2 threads: each against torch (which
    must be finite, the inputs' non-finite pixels being read by no output), and bitwise equal across the
    thread counts (each channel's sums are one thread's, in a fixed order)."""
    want = torch.autograd.grad(F.conv2d(x, w, None, stride, padding, 1, groups), [x, w], grad_out)
    assert torch.isfinite(want[1]).all()
    previous = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out = lambda: FC.conv2d(x, w, None, stride, padding, 1, groups, algo="direct")  # noqa: E731
            weight_only = torch.autograd.grad(out(), [w], grad_out)
            both = torch.autograd.grad(out(), [x, w], grad_out)
            results.append((*weight_only, *both))
    finally:
        torch.set_num_threads(previous)
    weight_only, grad_input, grad_weight = results[0]
    torch.testing.assert_close(weight_only, want[1], **TOL[torch.float32])
    torch.testing.assert_close(grad_weight, want[1], **TOL[torch.float32])
    torch.testing.assert_close(grad_input, want[0], **TOL[torch.float32])
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_depthwise_nchw_weight_gradient_unread_pixels_and_threads():
    # 58-pixel rows at stride 2 without padding: column 57 is read by no output, but by the lanes past the
    # end of each output row's last vector; an infinite input there must not reach the weight gradient,
    # computed alone or in one pass with the input gradient.
    x = torch.randn(2, 4, 6, 58)
    x[1, 2, 3, 57] = float("inf")
    x.requires_grad_()
    w = torch.randn(4, 1, 3, 3, requires_grad=True)
    _check_weight_gradient_on_threads(x, w, torch.randn(2, 4, 2, 28), 2, 0, 4)


# (N, C, H, W, kernel): depthwise 3x3 and 5x5 layers at stride 1 with the padding (k - 1) / 2, whose planes
# keep their shape through every pass. With AVX-512 their forward and input gradient run on narrow rows (rows
# of at most a vector: two to a vector under half of one with a 3x3 kernel) or flat planes (to 28 pixels),
# and their weight gradient on narrow rows (rows of at most two vectors, not two to a vector). The cases:
# planes of exactly a vector of floats; planes shorter than a group of rows (7 rows of one vector, 4 of two),
# as long as one, a row longer (a 5x5 kernel's group reading rows outside the plane on both sides), or with
# groups whose loads would pass the plane's end; rows of exactly one and two vectors (no lanes past the
# row); odd and even row pairs, one-pixel rows; one-row planes; kernels wider than the plane; and small
# planes where the last planes of the tensor are read from a copy (flat planes).
DEPTHWISE_SAME_SHAPE_CASES = [
    (2, 3, 4, 4, 3),
    (3, 5, 7, 7, 3),
    (2, 4, 13, 11, 3),
    (2, 3, 3, 20, 3),
    (1, 2, 20, 3, 5),
    (2, 3, 28, 28, 5),
    (2, 2, 17, 1, 3),
    (1, 3, 1, 28, 3),
    (2, 3, 5, 5, 5),
    (1, 6, 14, 14, 3),
    (2, 3, 15, 16, 3),
    (2, 3, 9, 32, 3),
    (1, 4, 22, 7, 3),
    (2, 3, 6, 6, 3),
    (2, 2, 8, 9, 5),
    (1, 3, 30, 12, 3),
    (2, 2, 11, 24, 5),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", DEPTHWISE_SAME_SHAPE_CASES)
def test_depthwise_same_shape_planes(case, dtype):
    n, c, h, w_, k = case
    x, w, b = _make((n, c, h, w_), (c, 1, k, k), c, True, dtype)
    _check_against_torch(lambda: FC.conv2d(x, w, b, 1, (k - 1) // 2, 1, c, algo="direct"),
                         lambda: F.conv2d(x, w, b, 1, (k - 1) // 2, 1, c), (x, w, b), TOL[dtype])


@pytest.mark.parametrize("shape", [(2, 4, 14, 14), (2, 4, 9, 28), (2, 4, 7, 7), (2, 4, 6, 5), (4, 16, 7, 7),
                                   (2, 4, 9, 56), (2, 4, 6, 57)])
def test_depthwise_stride1_planes_keep_non_finite_inputs_in_place(shape):
    # Rows are loaded whole vectors at a time, into the next row (narrow and flat planes) or masked at their
    # ends (wider rows): an infinite or NaN input reaches only the outputs, input-gradient pixels and
    # weight-gradient taps that read it, as in torch (a tap whose column never reaches the pixel keeps a
    # finite gradient).
    x = torch.randn(shape)
    x[0, 1, 3, 0] = float("inf")
    x[1, 2, shape[2] - 1, shape[3] - 1] = float("nan")
    x[1, 3, 2, min(16, shape[3] - 1)] = float("-inf")
    x = x.requires_grad_()
    w = torch.randn(shape[1], 1, 3, 3, requires_grad=True)
    out, ref = FC.conv2d(x, w, None, 1, 1, 1, shape[1], algo="direct"), F.conv2d(x, w, None, 1, 1, 1, shape[1])
    torch.testing.assert_close(out, ref, equal_nan=True, **TOL[torch.float32])
    grad_out = torch.randn_like(ref)
    got = torch.autograd.grad(out, [x, w], grad_out)
    want = torch.autograd.grad(ref, [x, w], grad_out)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, equal_nan=True, **TOL[torch.float32])
    assert torch.isfinite(got[1][0]).all() and torch.isfinite(got[1][1, 0, :, 2]).all()


@pytest.mark.parametrize("shape", [(3, 32, 14, 14), (2, 32, 9, 28)])
def test_depthwise_same_shape_planes_weight_gradient_threads(shape):
    # The weight gradient on narrow rows (rows of one and two vectors): each channel's images are summed by
    # one thread, so 1 and 2 threads give the same bits. (32 channels: without AVX-512 these layers' weight
    # gradient runs in channel blocks, which give the same bits where every thread has a block.)
    x = torch.randn(shape, requires_grad=True)
    w = torch.randn(shape[1], 1, 3, 3, requires_grad=True)
    _check_weight_gradient_on_threads(x, w, torch.randn(shape), 1, 1, shape[1])


def test_depthwise_same_shape_planes_stream_large_outputs():
    # 48 x 960 x 7 x 7 float32 (9 MB): each output and input-gradient plane is staged and written past the
    # caches; a non-finite input stays in its own pixels' outputs (the planes around it are read in place).
    x = torch.randn(48, 960, 7, 7)
    x[5, 7, 0, 0] = float("inf")
    x = x.requires_grad_()
    w = torch.randn(960, 1, 3, 3, requires_grad=True)
    out, ref = FC.conv2d(x, w, None, 1, 1, 1, 960, algo="direct"), F.conv2d(x, w, None, 1, 1, 1, 960)
    torch.testing.assert_close(out, ref, **TOL[torch.float32])
    grad_out = torch.randn_like(ref)
    (got,), (want,) = torch.autograd.grad(out, [x], grad_out), torch.autograd.grad(ref, [x], grad_out)
    torch.testing.assert_close(got, want, **TOL[torch.float32])


# (N, C, H, W): float32 depthwise 3x3 layers at stride 1 and padding 1 whose rows are under half a vector,
# which with AVX-512 run as runs of whole planes, a vector of 16 floats across row and plane ends (the lane
# masks repeat every lcm(H W, 16) elements, a run's length in planes): rows of 1 to 7 pixels; planes of
# exactly 16 pixels (no vector meets two planes) and of 49 (15 of every 49 vectors do); one channel (every
# plane the same taps); runs whose planes wrap from the last channel to the first and from one image to the
# next; a last run shorter than the others, ending inside a vector; and enough planes for both threads.
# Their weight gradient runs on runs of planes from batch 4 where a run's planes are whole channels (16
# channels of 7x7 or 5x5 planes, 8 of 6x5, one of 16 pixels): those cases, and ones just outside.
DEPTHWISE_PLANE_RUN_CASES = [
    (2, 3, 16, 1),
    (3, 5, 8, 2),
    (2, 7, 9, 3),
    (1, 1, 4, 4),
    (2, 3, 5, 5),
    (3, 5, 3, 6),
    (3, 5, 7, 7),
    (2, 17, 11, 7),
    (5, 40, 7, 7),
    (3, 70, 6, 5),
    (4, 16, 7, 7),
    (6, 48, 7, 7),
    (5, 32, 5, 5),
    (4, 8, 6, 5),
    (4, 3, 16, 1),
    (4, 2, 4, 4),
    (3, 16, 7, 7),
]


@pytest.mark.parametrize("case", DEPTHWISE_PLANE_RUN_CASES)
def test_depthwise_plane_runs(case):
    n, c, h, w_ = case
    x, w, b = _make((n, c, h, w_), (c, 1, 3, 3), c, True, torch.float32)
    _check_against_torch(lambda: FC.conv2d(x, w, b, 1, 1, 1, c, algo="direct"),
                         lambda: F.conv2d(x, w, b, 1, 1, 1, c), (x, w, b), TOL[torch.float32])


@pytest.mark.parametrize("channels", [70, 64])
def test_depthwise_plane_runs_threads_agree_bitwise(channels):
    # Each output pixel is summed in one fixed order whichever thread's run it falls in, and each weight
    # gradient (on runs of planes with 64 channels, in channel blocks with 70) by one thread.
    x = torch.randn(5, channels, 7, 7, requires_grad=True)
    w, b = torch.randn(channels, 1, 3, 3, requires_grad=True), torch.randn(channels)
    grad_out = torch.randn(5, channels, 7, 7)
    previous = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out = FC.conv2d(x, w, b, 1, 1, 1, channels, algo="direct")
            results.append((out, *torch.autograd.grad(out, [x, w], grad_out)))
    finally:
        torch.set_num_threads(previous)
    for a, c in zip(*results):
        assert torch.equal(a, c)
    ref = F.conv2d(x, w, b, 1, 1, 1, channels)
    torch.testing.assert_close(results[0][0], ref, **TOL[torch.float32])
    for got, want in zip(results[0][1:], torch.autograd.grad(ref, [x, w], grad_out)):
        torch.testing.assert_close(got, want, **TOL[torch.float32])


# (N, C, H, W, kernel, padding): depthwise 3x3 and 5x5 layers at stride 2 whose input rows fit two vectors
# and output rows one, whose three passes run row by row on the planes in place (AVX-512; the forward two
# output rows to a vector where the input rows fit one vector and the output rows half of one): odd and even
# sizes, paddings from none to the kernel's reach, rows of exactly two vectors of floats (32) or of doubles
# (16), output rows of exactly half a vector, 1x1 planes, one-row outputs, planes whose last rows end inside a
# vector.
DEPTHWISE_STRIDE2_ROWS_CASES = [
    (2, 5, 14, 14, 3, 1),
    (2, 3, 28, 28, 3, 1),
    (3, 4, 7, 7, 3, 1),
    (2, 3, 13, 9, 3, 0),
    (2, 3, 9, 13, 3, 2),
    (1, 3, 15, 15, 5, 2),
    (2, 2, 10, 27, 5, 1),
    (2, 3, 12, 12, 5, 4),
    (2, 3, 1, 1, 3, 1),
    (1, 2, 2, 28, 3, 1),
    (2, 3, 25, 26, 5, 0),
    (2, 3, 6, 32, 3, 1),
    (2, 3, 5, 16, 5, 2),
    # Enough planes for several threads' ranges, which start inside an image.
    (2, 200, 14, 14, 3, 1),
    (3, 100, 28, 28, 3, 1),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", DEPTHWISE_STRIDE2_ROWS_CASES)
def test_depthwise_stride2_narrow_rows(case, dtype):
    n, c, h, w_, k, p = case
    x, w, b = _make((n, c, h, w_), (c, 1, k, k), c, True, dtype)
    _check_against_torch(lambda: FC.conv2d(x, w, b, 2, p, 1, c, algo="direct"),
                         lambda: F.conv2d(x, w, b, 2, p, 1, c), (x, w, b), TOL[dtype])


def test_depthwise_stride2_narrow_rows_keep_non_finite_inputs_in_place():
    # Each row's vectors are read past the row (into the next rows) and those lanes dropped: an infinite
    # input reaches only the outputs whose taps read it, as in torch.
    x = torch.randn(2, 6, 14, 14)
    x[1, 2, 3, 13] = float("inf")
    x[0, 4, 13, 0] = float("nan")
    w = torch.randn(6, 1, 3, 3)
    for padding in (0, 1):
        torch.testing.assert_close(FC.conv2d(x, w, None, 2, padding, 1, 6, algo="direct"),
                                   F.conv2d(x, w, None, 2, padding, 1, 6), equal_nan=True, **TOL[torch.float32])


def test_depthwise_stride2_narrow_rows_weight_gradient_unread_pixels_and_threads():
    # Without padding, a 28x28 plane's last row and column are read by no output of a 3x3 stride-2 layer,
    # but by the lanes past each 13-pixel output row: an infinite input there must not reach the weight
    # gradient. (32 channels: without AVX-512 the weight gradient then takes channel blocks, one thread's
    # sums each, where the plane kernels' sums depend on the number of threads.)
    x = torch.randn(3, 32, 28, 28)
    x[1, 2, 3, 27] = float("inf")
    x[2, 20, 27, 2] = float("-inf")
    x.requires_grad_()
    w = torch.randn(32, 1, 3, 3, requires_grad=True)
    _check_weight_gradient_on_threads(x, w, torch.randn(3, 32, 13, 13), 2, 0, 32)


# (N, C, H, W, kernel, padding): stride-2 depthwise layers whose rows are too wide for the narrow-row kernels
# (with AVX-512 their forward reads the input and their input gradient the output gradient in place): odd
# and even widths, a width just past two vectors of floats, paddings from none to the kernel's reach.
DEPTHWISE_STRIDE2_WIDE_CASES = [
    (2, 3, 40, 40, 5, 1),
    (2, 3, 9, 57, 3, 0),
    (1, 2, 7, 113, 3, 2),
    (2, 2, 6, 64, 5, 3),
    (1, 3, 5, 34, 3, 1),
    (2, 2, 11, 48, 5, 4),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", DEPTHWISE_STRIDE2_WIDE_CASES)
def test_depthwise_stride2_wide_rows(case, dtype):
    # The forward with a bias; the input gradient alone (the weight needs none) and with the weight gradient.
    n, c, h, w_, k, p = case
    x, w, b = _make((n, c, h, w_), (c, 1, k, k), c, True, dtype)
    with torch.no_grad():
        torch.testing.assert_close(FC.conv2d(x, w, b, 2, p, 1, c, algo="direct"), F.conv2d(x, w, b, 2, p, 1, c),
                                   **TOL[dtype])
    want = F.conv2d(x, w, None, 2, p, 1, c)
    grad_out = torch.randn_like(want)
    expected = torch.autograd.grad(want, (x, w), grad_out)
    alone = torch.autograd.grad(FC.conv2d(x, w.detach(), None, 2, p, 1, c, algo="direct"), x, grad_out)[0]
    torch.testing.assert_close(alone, expected[0], **TOL[dtype])
    both = torch.autograd.grad(FC.conv2d(x, w, None, 2, p, 1, c, algo="direct"), (x, w), grad_out)
    for a, e in zip(both, expected):
        torch.testing.assert_close(a, e, **TOL[dtype])


@pytest.mark.parametrize("width", [128, 120])
def test_depthwise_stride2_wide_rows_stream_large_input_gradients(width):
    # 11-12.6 MB input gradients: streamed past the caches, from the kernel itself where the rows are whole
    # aligned vectors (128 pixels), through a staging plane otherwise (120).
    x, w, _ = _make((4, 48, width, width), (48, 1, 3, 3), 48, False, torch.float32)
    want = F.conv2d(x, w, None, 2, 1, 1, 48)
    grad_out = torch.randn_like(want)
    expected = torch.autograd.grad(want, (x, w), grad_out)
    alone = torch.autograd.grad(FC.conv2d(x, w.detach(), None, 2, 1, 1, 48, algo="direct"), x, grad_out)[0]
    torch.testing.assert_close(alone, expected[0], **TOL[torch.float32])
    both = torch.autograd.grad(FC.conv2d(x, w, None, 2, 1, 1, 48, algo="direct"), (x, w), grad_out)
    torch.testing.assert_close(both[0], expected[0], **TOL[torch.float32])
    torch.testing.assert_close(both[1], expected[1], rtol=1e-4, atol=1e-2)  # sums of 57k products


@pytest.mark.parametrize("shape", [(8, 64, 128, 128), (9, 64, 120, 120)])
def test_depthwise_stride2_wide_rows_stream_large_outputs(shape):
    # 8.3-8.4 MB forward outputs: streamed past the caches, from the kernel itself where the output rows are
    # whole aligned vectors (64 pixels), through a staging plane otherwise (60).
    x, w, b = _make(shape, (64, 1, 3, 3), 64, True, torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(FC.conv2d(x, w, b, 2, 1, 1, 64, algo="direct"), F.conv2d(x, w, b, 2, 1, 1, 64),
                                   **TOL[torch.float32])


def test_depthwise_stride2_wide_rows_keep_non_finite_inputs_in_place():
    # The forward reads each row by loads masked to the row: an infinite or NaN input at a row's ends or in
    # the plane's corners reaches only the outputs whose taps read it, as in torch.
    x = torch.randn(2, 4, 9, 58)
    x[0, 1, 3, 0] = float("inf")
    x[0, 2, 4, 57] = float("nan")
    x[1, 0, 0, 0] = float("-inf")
    x[1, 3, 8, 57] = float("inf")
    x[1, 2, 5, 31] = float("nan")
    w = torch.randn(4, 1, 5, 5)
    for k, padding in ((3, 0), (3, 1), (5, 1), (5, 2)):
        kernel = w[:, :, :k, :k].contiguous()
        torch.testing.assert_close(FC.conv2d(x, kernel, None, 2, padding, 1, 4, algo="direct"),
                                   F.conv2d(x, kernel, None, 2, padding, 1, 4), equal_nan=True,
                                   **TOL[torch.float32])


def test_depthwise_stride2_wide_rows_input_gradient_non_finite():
    # A non-finite output gradient at the rows' ends reaches only the input pixels its taps reach, as in
    # torch; an infinite weight reaches every input pixel its tap reads from a real output gradient, and
    # with AVX-512 (the output gradient read in place) those only: the other instruction sets' kernel runs
    # over the output gradient upsampled with zeros, and 0 * Inf reaches the rest of the plane.
    x = torch.randn(2, 4, 9, 58, requires_grad=True)
    w = torch.randn(4, 1, 3, 3)
    for padding, rows, columns in ((0, 4, 28), (1, 5, 29)):
        grad_out = torch.randn(2, 4, rows, columns)
        grad_out[0, 1, 2, columns - 1] = float("inf")
        grad_out[1, 3, rows - 1, 0] = float("nan")
        grad_out[1, 2, 0, columns - 1] = float("-inf")
        got = torch.autograd.grad(FC.conv2d(x, w, None, 2, padding, 1, 4, algo="direct"), x, grad_out)[0]
        want = torch.autograd.grad(F.conv2d(x, w, None, 2, padding, 1, 4), x, grad_out)[0]
        assert not want.isfinite().all()
        torch.testing.assert_close(got, want, equal_nan=True, **TOL[torch.float32])
    w_inf = w.clone()
    w_inf[2, 0, 1, 0] = float("inf")
    finite_out = torch.randn(2, 4, 5, 29)
    got = torch.autograd.grad(FC.conv2d(x, w_inf, None, 2, 1, 1, 4, algo="direct"), x, finite_out)[0]
    reached = F.conv_transpose2d(torch.ones_like(finite_out), w_inf.isinf().float(), None, 2, 1, (0, 1), 4) > 0
    assert not got[reached].isfinite().any()
    if fastconv.build_info()["cpu_isa"] != "avx512":
        return
    assert got[~reached].isfinite().all()
    w_zero = torch.where(w_inf.isinf(), torch.zeros_like(w_inf), w_inf)
    want = torch.autograd.grad(F.conv2d(x, w_zero, None, 2, 1, 1, 4), x, finite_out)[0]
    torch.testing.assert_close(got[~reached], want[~reached], **TOL[torch.float32])

def test_depthwise_channel_blocks_threads_agree_bitwise():
    # Each channel block's weight gradient is one thread's sum over the images in order.
    x, w, b = _make((4, 64, 12, 12), (64, 1, 3, 3), 64, True, torch.float32)
    previous = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out = FC.conv2d(x, w, b, 1, 1, 1, 64, algo="direct")
            results.append((out, *torch.autograd.grad(out, (x, w, b), torch.ones_like(out))))
    finally:
        torch.set_num_threads(previous)
    for a, c in zip(*results):
        assert torch.equal(a, c)

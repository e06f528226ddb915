"""Property-based tests: random conv and pool calls, valid and invalid, against torch.nn.functional.

Every drawn call is made twice, once through torch.nn.functional and once through fastconv.functional,
with the same arguments. Where torch raises, fastconv must raise the same exception class; where torch
returns, fastconv must return the same values (float64, tight tolerance), the same indices, and the
same gradients for a random grad_output.

The draws favour valid calls but reach every parameter at and past its limits: zero-size batch,
channel and spatial dimensions, unbatched inputs, kernels that exactly fit or just miss the padded
input, zero and negative strides/paddings/dilations/groups, string padding, channel counts that don't
match the weight or don't divide by groups, biases of the wrong length, parameter lists of the wrong
length and wrongly typed parameters.

Examples per test: FASTCONV_HYPOTHESIS_EXAMPLES (default 150, enough for CI at a few seconds a test);
run e.g. FASTCONV_HYPOTHESIS_EXAMPLES=20000 locally for the long mode.
"""
import os
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import functional as FC

EXAMPLES = int(os.environ.get("FASTCONV_HYPOTHESIS_EXAMPLES", "150"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    # The default (CI) run draws the same examples every time, so it is reproducible; setting
    # FASTCONV_HYPOTHESIS_EXAMPLES (the long mode) draws fresh ones.
    derandomize="FASTCONV_HYPOTHESIS_EXAMPLES" not in os.environ,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TOL = dict(rtol=1e-10, atol=1e-10)


def _devices():
    devices = [pytest.param("cpu")]
    if torch.cuda.is_available() and fastconv.build_info()["cuda"]:
        devices.append(pytest.param("cuda", marks=pytest.mark.cuda))
    return devices


# ----------------------------------------------------------------------------------------------
# Drawing helpers
# ----------------------------------------------------------------------------------------------


def _mostly(draw, valid, bad, one_in=8, edge=False):
    """Draws from `valid`, except about one time in `one_in` from `bad` (shrinks towards valid).
    Within a call drawn as valid (see _broken), always from `valid`, unless `bad` holds legal edge
    values (edge=True: zero sizes, unbatched input) that valid calls take too."""
    if not edge and not _broken(draw):
        return draw(valid)
    return draw(bad) if draw(st.integers(0, one_in - 1)) == one_in - 1 else draw(valid)


def _broken(draw):
    """Whether the call being drawn may take invalid values: decided once per example, so that about
    half the calls are well-formed (they may still fail torch's size checks at the limits)."""
    state = draw(st.shared(st.booleans(), key="broken"))
    return state


# Values of the wrong type for an int parameter: torch's argument parser rejects them with TypeError.
WRONG_TYPES = st.sampled_from([1.0, 2.5, True, None, "1"])


def _int_param(draw, dims, values, bad_values):
    """A stride/padding/dilation/kernel_size argument: an int, a list of 1 or `dims` ints, or past its
    limits (bad values, a list of the wrong length, a wrongly typed value or entry)."""
    per_dim = [_mostly(draw, values, bad_values) for _ in range(dims)]
    form = draw(st.integers(0, 39))
    if form < 20 and len(set(per_dim)) == 1:
        return per_dim[0]
    if form < 30 or not _broken(draw):
        return [per_dim[0]] if form < 24 and len(set(per_dim)) == 1 else tuple(per_dim)
    if form < 33:
        return tuple(per_dim) + (per_dim[0],)  # one value too many
    if form < 35 and dims == 2:
        return ()
    if form < 37:
        return draw(WRONG_TYPES)
    if form < 39:
        return tuple(per_dim[:-1]) + (draw(WRONG_TYPES),)
    return tuple(per_dim)


def _call(fn, kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about even kernels with padding='same'
        try:
            return fn(**kwargs), None
        except Exception as exc:  # noqa: BLE001 - the class is what the test compares
            return None, exc


def _grads(out, leaves, grad_out):
    """Gradients of <out, grad_out> w.r.t. leaves; zeros where a leaf does not reach the output."""
    if not out.requires_grad:
        return [torch.zeros_like(t) for t in leaves]
    grads = torch.autograd.grad(out, leaves, grad_out, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, leaves)]


def _assert_same_behaviour(ours, theirs, kwargs, leaves, seed, reference_grads=None):
    """Runs both; same exception class, or same outputs and gradients. `reference_grads(grad_out)`, when
    given, stands in for torch's backward (see test_pool_matches_torch)."""
    want, their_exc = _call(theirs, kwargs)
    got, our_exc = _call(ours, kwargs)
    event(f"torch raised {type(their_exc).__name__}" if their_exc is not None else "torch returned")
    if their_exc is not None:
        assert our_exc is not None, f"torch raised {type(their_exc).__name__}: {their_exc}; fastconv returned"
        assert type(our_exc) is type(their_exc), (
            f"torch raised {type(their_exc).__name__}: {their_exc}\nfastconv raised {type(our_exc).__name__}: {our_exc}"
        )
        assert str(our_exc), "fastconv raised an exception without a message"
        return
    assert our_exc is None, f"torch returned {tuple(want.shape)}; fastconv raised {type(our_exc).__name__}: {our_exc}"
    if isinstance(want, tuple):  # (values, indices)
        assert isinstance(got, tuple) and len(got) == len(want)
        assert got[1].dtype == want[1].dtype and torch.equal(got[1], want[1]), "indices differ"
        got, want = got[0], want[0]
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, want.shape, got.dtype, want.dtype)
    if want.numel() == 0:
        # Nothing to compare; the shape may be too large for a contiguous tensor (torch returns views).
        grad_out = torch.empty(0, dtype=want.dtype, device=want.device).view(want.shape)
    else:
        torch.testing.assert_close(got, want, equal_nan=True, **TOL)
        gen = torch.Generator(device=want.device).manual_seed(seed)
        grad_out = torch.randn(want.shape, dtype=want.dtype, device=want.device, generator=gen)
    try:
        want_grads = reference_grads(grad_out) if reference_grads else _grads(want, leaves, grad_out)
    except RuntimeError:
        # torch's backward rejects a few outputs its forward accepts (an adaptive pooling to size 0);
        # there is no gradient to compare, fastconv's backward just has to run.
        event("torch's backward raised")
        want_grads = [None] * len(leaves)
    for g, w, leaf in zip(_grads(got, leaves, grad_out), want_grads, leaves):
        assert g.shape == leaf.shape
        if w is not None:
            torch.testing.assert_close(g, w, equal_nan=True, **TOL)


def _randn(shape, seed, device, requires_grad=True):
    gen = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, dtype=torch.float64, generator=gen).to(device)
    return t.requires_grad_(requires_grad)


# ----------------------------------------------------------------------------------------------
# Convolution
# ----------------------------------------------------------------------------------------------


@st.composite
def conv_calls(draw, device):
    dims = draw(st.sampled_from([1, 2]))
    groups = _mostly(draw, st.integers(1, 3), st.sampled_from([0, -1, 4]))
    g = max(groups, 1)
    cin_g = _mostly(draw, st.integers(1, 3), st.just(0), edge=True)
    # Wide groups (8+ output channels) reach the vectorised direct kernel and full GEMM tiles.
    cout_g = _mostly(draw, st.one_of(st.integers(1, 3), st.integers(8, 18)), st.just(0))
    cin = _mostly(draw, st.just(cin_g * g), st.sampled_from([cin_g * g + 1, max(cin_g * g - 1, 0)]))
    cout = _mostly(draw, st.just(cout_g * g), st.just(cout_g * g + 1))
    weight_cin = _mostly(draw, st.just(cin_g), st.just(cin_g + 1))
    kernel = [_mostly(draw, st.integers(1, 4), st.just(0)) for _ in range(dims)]
    weight_dims = _mostly(draw, st.just(dims + 2), st.sampled_from([dims + 1, dims + 3]), one_in=24)
    weight_shape = ([cout, weight_cin] + kernel + [2, 2])[:weight_dims]

    batch = _mostly(draw, st.integers(1, 2), st.sampled_from([0, None]), one_in=4, edge=True)  # None: unbatched
    spatial = [_mostly(draw, st.integers(1, 9), st.just(0), one_in=12, edge=True) for _ in range(dims)]
    input_shape = ([] if batch is None else [batch]) + [cin] + spatial
    if _broken(draw) and draw(st.integers(0, 11)) == 0:
        input_shape = input_shape + [3]  # one dim too many

    # Huge values: a stride past any size (one output), dilations and paddings whose size arithmetic
    # must not overflow (torch rejects paddings above 2**62 - 1; an empty call returns a huge empty shape).
    stride = _int_param(draw, dims, st.integers(1, 3), st.sampled_from([0, -1, 2**31 + 1, 2**63 - 1]))
    dilation = _int_param(draw, dims, st.integers(1, 3), st.sampled_from([0, -2, 2**40]))
    if draw(st.integers(0, 4)) == 0:
        padding = draw(st.sampled_from(["same", "valid", "full"] if _broken(draw) else ["same", "valid"]))
    else:
        padding = _int_param(draw, dims, st.integers(0, 3), st.sampled_from([-1, 2**40, 2**62]))

    bias_kind = draw(st.sampled_from(["none", "ok", "ok", "short", "2d"] if _broken(draw) else ["none", "ok"]))
    seed = draw(st.integers(0, 2**31 - 1))
    x = _randn(input_shape, seed, device)
    w = _randn(weight_shape, seed + 1, device)
    bias = {
        "none": None,
        "ok": lambda: _randn([cout], seed + 2, device),
        "short": lambda: _randn([cout + 1], seed + 2, device),
        "2d": lambda: _randn([1, cout], seed + 2, device),
    }[bias_kind]
    b = bias() if bias is not None else None
    kwargs = dict(input=x, weight=w, bias=b, stride=stride, padding=padding, dilation=dilation, groups=groups)
    algo = draw(st.sampled_from(["auto", "im2col", "direct"]))
    leaves = [t for t in (x, w, b) if t is not None]
    return dims, kwargs, algo, leaves, seed


def _torch_disagrees_with_its_shape_rule(theirs, kwargs):
    """Whether torch's CPU result has another shape than its own meta (shape-only) kernel gives: torch's
    dilated convolution cuts paddings of 2**31 or more to 32 bits and silently returns a wrong, small
    output. Returns the correct shape then, or the meta kernel's error where the correct output is too
    large to describe (a size overflow, for which the CPU kernel returned a small output), else None."""
    want, exc = _call(theirs, kwargs)
    if exc is not None:
        return None
    meta = {k: v.detach().to("meta") if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    meta_out, meta_exc = _call(theirs, meta)
    if meta_exc is not None:
        return meta_exc if isinstance(meta_exc, RuntimeError) and "overflow" in str(meta_exc) else None
    return None if meta_out.shape == want.shape else meta_out.shape


@pytest.mark.parametrize("device", _devices())
@SETTINGS
@given(data=st.data())
def test_conv_matches_torch(device, data):
    dims, kwargs, algo, leaves, seed = data.draw(conv_calls(device))
    ours = FC.conv1d if dims == 1 else FC.conv2d
    theirs = F.conv1d if dims == 1 else F.conv2d
    truth = _torch_disagrees_with_its_shape_rule(theirs, kwargs)
    if truth is not None:
        # torch is no oracle here: fastconv must give the true shape, or fail to allocate it (raise, where
        # the true shape overflows).
        event("torch's result contradicts its shape rule")
        got, exc = _call(lambda **kw: ours(**kw, algo=algo), kwargs)
        if isinstance(truth, Exception):
            assert isinstance(exc, RuntimeError), (exc, truth)
        else:
            assert isinstance(exc, RuntimeError) or (exc is None and got.shape == truth), (exc, truth)
        return
    _assert_same_behaviour(lambda **kw: ours(**kw, algo=algo), theirs, kwargs, leaves, seed)


# ----------------------------------------------------------------------------------------------
# Pooling
# ----------------------------------------------------------------------------------------------


def _pool_input(draw, dims, seed, device):
    batch = _mostly(draw, st.integers(1, 2), st.sampled_from([0, None]), one_in=4, edge=True)
    channels = _mostly(draw, st.integers(1, 3), st.just(0), one_in=12, edge=True)
    spatial = [_mostly(draw, st.integers(1, 9), st.just(0), one_in=12, edge=True) for _ in range(dims)]
    shape = ([] if batch is None else [batch]) + [channels] + spatial
    if _broken(draw) and draw(st.integers(0, 11)) == 0:
        shape = [2] + shape if len(shape) == dims + 2 else shape[1:]  # one dim too many / too few
    return _randn(shape, seed, device)


@st.composite
def pool_calls(draw, device):
    dims = draw(st.sampled_from([1, 2]))
    kind = draw(st.sampled_from(["max", "avg", "adaptive_avg", "adaptive_max"]))
    seed = draw(st.integers(0, 2**31 - 1))
    x = _pool_input(draw, dims, seed, device)
    kwargs = dict(input=x)
    if kind in ("max", "avg"):
        # Huge values: torch's pooling takes 32-bit ints (2**31 is an error). (max_pool1d takes int64
        # when no gradient is needed, not the case here: the inputs require grad. torch hangs or crashes
        # on huge kernels and dilations there; test_robustness covers that path's strides.)
        huge = [2**31]
        kwargs["kernel_size"] = _int_param(draw, dims, st.integers(1, 4), st.sampled_from([0, -1] + huge))
        if draw(st.integers(0, 2)) == 0:
            kwargs["stride"] = draw(st.sampled_from([None, ()]))  # default: the kernel size
        else:
            kwargs["stride"] = _int_param(draw, dims, st.integers(1, 3), st.sampled_from([0, -1, 2**31, 2**63 - 1]))
        # Padding reaches past half the kernel (invalid) now and then.
        kwargs["padding"] = _int_param(draw, dims, st.integers(0, 2), st.sampled_from([-1, 3, 2**31]))
        kwargs["ceil_mode"] = draw(st.booleans())
        if kind == "max":
            kwargs["dilation"] = _int_param(draw, dims, st.integers(1, 3), st.sampled_from([0, -1] + huge))
            kwargs["return_indices"] = draw(st.booleans())
        else:
            kwargs["count_include_pad"] = draw(st.booleans())
            if dims == 2:
                kwargs["divisor_override"] = _mostly(
                    draw, st.one_of(st.none(), st.integers(-2, 5).filter(bool)), st.just(0), one_in=4
                )
    else:
        def one_size():
            valid = _mostly(draw, st.integers(1, 5), st.sampled_from([0, None]), one_in=5, edge=True)
            return _mostly(draw, st.just(valid), st.one_of(st.just(-1), WRONG_TYPES))

        if draw(st.booleans()):
            kwargs["output_size"] = one_size()
        else:
            n = _mostly(draw, st.just(dims), st.just(dims + 1), one_in=16)
            kwargs["output_size"] = tuple(one_size() for _ in range(n))
        if kind == "adaptive_max":
            kwargs["return_indices"] = draw(st.booleans())
    name = f"{kind}_pool{dims}d"
    return name, kwargs, [x], seed


@pytest.mark.parametrize("device", _devices())
@SETTINGS
@given(data=st.data())
def test_pool_matches_torch(device, data):
    name, kwargs, leaves, seed = data.draw(pool_calls(device))
    reference = None
    if name.startswith("max_pool"):
        # A window that lies wholly in the padding (possible with dilation) gets -inf and an index past
        # the input in torch, and torch's backward then writes out of bounds (heap corruption). fastconv
        # returns the same values and index but its backward skips such indices; the expected gradient
        # is computed here from the indices instead of by torch's backward.
        x = kwargs["input"]
        try:
            _, idx = getattr(F, name)(**dict(kwargs, return_indices=True))
        except Exception:  # noqa: BLE001 - invalid call: compared as such below
            idx = None
        plane = x.shape[-1] * (x.shape[-2] if name.endswith("2d") else 1)
        if idx is not None and idx.numel() and (idx >= plane).any():
            event("torch index outside the input")

            def reference(grad_out):
                flat_idx = idx.reshape(-1, idx.shape[-1] * (idx.shape[-2] if name.endswith("2d") else 1))
                valid = flat_idx < plane
                grad = torch.zeros(flat_idx.shape[0], plane, dtype=x.dtype, device=x.device)
                grad.scatter_add_(1, flat_idx.clamp(max=plane - 1), grad_out.reshape(flat_idx.shape) * valid)
                return [grad.reshape(x.shape)]

    _assert_same_behaviour(getattr(FC, name), getattr(F, name), kwargs, leaves, seed, reference)

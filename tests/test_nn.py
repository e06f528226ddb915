"""fastconv.nn layers against the torch.nn layers they replace."""
import copy
import inspect
import io
import pickle

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fastconv
from fastconv import nn as fnn

CONV_CLASSES = [(torch.nn.Conv1d, fnn.Conv1d), (torch.nn.Conv2d, fnn.Conv2d)]
ALL_CLASSES = list(fnn.FASTCONV_LAYERS.items())


class _RecordOps(TorchDispatchMode):
    """Records the name of every operator that reaches the dispatcher."""

    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.name())
        return func(*args, **(kwargs or {}))


def ops_called(fn, *args):
    with _RecordOps() as rec:
        fn(*args)
    return rec.names


def twins(torch_cls, fast_cls, *args, **kwargs):
    """A torch.nn layer and its fastconv twin built from the same seed (hence the same weights)."""
    torch.manual_seed(1234)
    ref = torch_cls(*args, **kwargs)
    torch.manual_seed(1234)
    fast = fast_cls(*args, **kwargs)
    return ref, fast


def assert_same_forward_backward(ref, fast, x, atol=1e-10):
    """Outputs and every gradient (input, parameters) agree."""
    x_ref = x.clone().requires_grad_(True)
    x_fast = x.clone().requires_grad_(True)
    out_ref, out_fast = ref(x_ref), fast(x_fast)
    if isinstance(out_ref, tuple):
        assert torch.equal(out_ref[1], out_fast[1]), "indices differ"
        out_ref, out_fast = out_ref[0], out_fast[0]
    assert out_fast.shape == out_ref.shape and out_fast.dtype == out_ref.dtype
    torch.testing.assert_close(out_fast, out_ref, atol=atol, rtol=1e-7)
    grad = torch.randn_like(out_ref)
    out_ref.backward(grad)
    out_fast.backward(grad)
    torch.testing.assert_close(x_fast.grad, x_ref.grad, atol=atol, rtol=1e-7)
    for (name, p_ref), (_, p_fast) in zip(ref.named_parameters(), fast.named_parameters()):
        torch.testing.assert_close(p_fast.grad, p_ref.grad, atol=atol, rtol=1e-7, msg=f"grad of {name}")


# ---------------------------------------------------------------------------------------------
# Class structure: drop-in constructors, initialisation, state_dict
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("torch_cls,fast_cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_subclass_and_same_constructor(torch_cls, fast_cls):
    assert issubclass(fast_cls, torch_cls) and fast_cls.__name__ == torch_cls.__name__
    torch_params = dict(inspect.signature(torch_cls.__init__).parameters)
    fast_params = dict(inspect.signature(fast_cls.__init__).parameters)
    if fast_cls in (fnn.Conv1d, fnn.Conv2d):
        algo = fast_params.pop("algo")
        assert algo.kind is inspect.Parameter.KEYWORD_ONLY and algo.default == "auto"
    assert list(fast_params) == list(torch_params)
    for name, p in torch_params.items():
        assert fast_params[name].default == p.default, name


@pytest.mark.parametrize("torch_cls,fast_cls", CONV_CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("bias", [True, False])
def test_conv_same_init_and_state_dict(torch_cls, fast_cls, bias):
    ref, fast = twins(torch_cls, fast_cls, 4, 6, 3, groups=2, bias=bias)
    assert list(ref.state_dict()) == list(fast.state_dict())
    for key, value in ref.state_dict().items():
        assert torch.equal(fast.state_dict()[key], value), key
    # state_dicts move both ways
    other = fast_cls(4, 6, 3, groups=2, bias=bias)
    other.load_state_dict(ref.state_dict())
    assert torch.equal(other.weight, ref.weight)
    ref.load_state_dict(fast_cls(4, 6, 3, groups=2, bias=bias).state_dict())


@pytest.mark.parametrize("fast_cls", [fnn.Conv1d, fnn.Conv2d], ids=lambda c: c.__name__)
def test_conv_device_dtype_and_algo_arguments(fast_cls):
    layer = fast_cls(2, 3, 3, device="cpu", dtype=torch.float64, algo="direct")
    assert layer.weight.dtype == torch.float64 and layer.algo == "direct"
    with pytest.raises(ValueError, match="algo"):
        fast_cls(2, 3, 3, algo="winograd")
    with pytest.raises(ValueError, match="padding_mode"):
        fast_cls(2, 3, 3, padding_mode="mirror")


def test_repr_names_fastconv_and_algo():
    conv = fnn.Conv2d(3, 8, 3, padding=1, algo="im2col")
    assert repr(conv) == ("fastconv.Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), "
                          "algo='im2col')")
    assert "algo='auto'" in conv.__class__(3, 8, 3).extra_repr()
    assert repr(fnn.MaxPool2d(2)).startswith("fastconv.MaxPool2d(kernel_size=2")
    assert repr(fnn.AdaptiveAvgPool1d(4)) == "fastconv.AdaptiveAvgPool1d(output_size=4)"
    model = torch.nn.Sequential(fnn.Conv1d(1, 2, 3, padding_mode="circular", padding=1), torch.nn.ReLU())
    assert "fastconv.Conv1d(1, 2, kernel_size=(3,), stride=(1,), padding=(1,), padding_mode=circular" in repr(model)


# ---------------------------------------------------------------------------------------------
# Numerics: the same results as torch.nn, computed by fastconv
# ---------------------------------------------------------------------------------------------

CONV1D_CASES = [
    dict(kernel_size=3),
    dict(kernel_size=5, stride=2, padding=2, bias=False),
    dict(kernel_size=3, padding="same", dilation=2),
    dict(kernel_size=4, padding="same"),
    dict(kernel_size=3, padding="valid", groups=2),
    dict(kernel_size=3, padding=2, padding_mode="reflect"),
    dict(kernel_size=3, padding=1, padding_mode="replicate", stride=2),
    dict(kernel_size=4, padding="same", padding_mode="circular"),
]
CONV2D_CASES = [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=(3, 5), stride=(2, 1), padding=(1, 2), bias=False),
    dict(kernel_size=3, padding="same", dilation=(1, 2)),
    dict(kernel_size=3, groups=4),  # depthwise
    dict(kernel_size=1),
    dict(kernel_size=3, padding=1, padding_mode="reflect"),
    dict(kernel_size=(2, 3), padding=(1, 2), padding_mode="replicate", stride=2),
    dict(kernel_size=4, padding="same", padding_mode="circular"),
]


@pytest.mark.parametrize("algo", ["auto", "im2col", "direct"])
@pytest.mark.parametrize("kwargs", CONV1D_CASES, ids=str)
def test_conv1d_matches_torch(kwargs, algo):
    ref, fast = twins(torch.nn.Conv1d, fnn.Conv1d, 4, 6, dtype=torch.float64, **kwargs)
    fast.algo = algo
    x = torch.randn(3, 4, 17, dtype=torch.float64)
    assert_same_forward_backward(ref, fast, x)
    assert_same_forward_backward(ref, fast, x[0])  # unbatched


@pytest.mark.parametrize("algo", ["auto", "im2col", "direct"])
@pytest.mark.parametrize("kwargs", CONV2D_CASES, ids=str)
def test_conv2d_matches_torch(kwargs, algo):
    ref, fast = twins(torch.nn.Conv2d, fnn.Conv2d, 4, 8, dtype=torch.float64, **kwargs)
    fast.algo = algo
    x = torch.randn(2, 4, 9, 11, dtype=torch.float64)
    assert_same_forward_backward(ref, fast, x)
    assert_same_forward_backward(ref, fast, x[0])


def test_conv_float32_matches_torch():
    ref, fast = twins(torch.nn.Conv2d, fnn.Conv2d, 16, 32, 3, padding=1)
    assert_same_forward_backward(ref, fast, torch.randn(2, 16, 12, 12), atol=1e-4)


POOL_CASES = [
    (torch.nn.MaxPool1d, fnn.MaxPool1d, dict(kernel_size=3, stride=2, padding=1), 1),
    (torch.nn.MaxPool1d, fnn.MaxPool1d, dict(kernel_size=2, dilation=2, ceil_mode=True, return_indices=True), 1),
    (torch.nn.MaxPool2d, fnn.MaxPool2d, dict(kernel_size=3, stride=2, padding=1), 2),
    (torch.nn.MaxPool2d, fnn.MaxPool2d, dict(kernel_size=(2, 3), ceil_mode=True, return_indices=True), 2),
    (torch.nn.AvgPool1d, fnn.AvgPool1d, dict(kernel_size=3, stride=2, padding=1, count_include_pad=False), 1),
    (torch.nn.AvgPool1d, fnn.AvgPool1d, dict(kernel_size=2, ceil_mode=True), 1),
    (torch.nn.AvgPool2d, fnn.AvgPool2d, dict(kernel_size=3, stride=1, padding=1), 2),
    (torch.nn.AvgPool2d, fnn.AvgPool2d, dict(kernel_size=2, ceil_mode=True, divisor_override=3), 2),
    (torch.nn.AdaptiveAvgPool1d, fnn.AdaptiveAvgPool1d, dict(output_size=4), 1),
    (torch.nn.AdaptiveAvgPool2d, fnn.AdaptiveAvgPool2d, dict(output_size=(3, None)), 2),
    (torch.nn.AdaptiveAvgPool2d, fnn.AdaptiveAvgPool2d, dict(output_size=1), 2),
    (torch.nn.AdaptiveMaxPool1d, fnn.AdaptiveMaxPool1d, dict(output_size=5, return_indices=True), 1),
    (torch.nn.AdaptiveMaxPool2d, fnn.AdaptiveMaxPool2d, dict(output_size=(2, 4)), 2),
]


@pytest.mark.parametrize("torch_cls,fast_cls,kwargs,dims", POOL_CASES,
                         ids=[f"{c[1].__name__}-{c[2]}" for c in POOL_CASES])
def test_pool_matches_torch(torch_cls, fast_cls, kwargs, dims):
    ref, fast = torch_cls(**kwargs), fast_cls(**kwargs)
    x = torch.randn((2, 3, 9, 11)[-dims - 2:], dtype=torch.float64)
    assert_same_forward_backward(ref, fast, x)
    assert_same_forward_backward(ref, fast, x[0])
    assert repr(fast) == "fastconv." + repr(ref)


@pytest.mark.parametrize("fast_cls,args,dims,op", [
    (fnn.Conv1d, (2, 3, 3), 1, "fastconv::conv1d"),
    (fnn.Conv2d, (2, 3, 3), 2, "fastconv::conv2d"),
    (fnn.MaxPool1d, (2,), 1, "fastconv::max_pool2d_values"),  # no gradient needed: values only
    (fnn.MaxPool2d, (2,), 2, "fastconv::max_pool2d_values"),
    (fnn.AvgPool1d, (2,), 1, "fastconv::avg_pool2d"),
    (fnn.AvgPool2d, (2,), 2, "fastconv::avg_pool2d"),
    (fnn.AdaptiveAvgPool1d, (3,), 1, "fastconv::adaptive_avg_pool2d"),
    (fnn.AdaptiveAvgPool2d, (3,), 2, "fastconv::adaptive_avg_pool2d"),
    (fnn.AdaptiveMaxPool1d, (3,), 1, "fastconv::adaptive_max_pool2d"),
    (fnn.AdaptiveMaxPool2d, (3,), 2, "fastconv::adaptive_max_pool2d"),
], ids=lambda v: v.__name__ if isinstance(v, type) else None)
def test_layers_run_on_fastconv_kernels(fast_cls, args, dims, op):
    layer = fast_cls(*args)
    names = ops_called(layer, torch.randn((1, 2) + (8,) * dims))
    assert op in names
    assert not any(n.startswith("aten::") and ("conv" in n or "pool" in n) for n in names), names


# ---------------------------------------------------------------------------------------------
# Module machinery: copies, serialisation, hooks, .to(), modes, torch.compile
# ---------------------------------------------------------------------------------------------


def _small_model(algo="auto"):
    return torch.nn.Sequential(
        fnn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect", algo=algo),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        fnn.MaxPool2d(2),
        fnn.Conv2d(8, 8, 3, groups=8, padding=1),
        fnn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 4),
    )


def test_conv_copies_and_serialisation_keep_everything():
    conv = fnn.Conv2d(3, 4, 3, padding=2, dilation=2, padding_mode="replicate", algo="direct")
    x = torch.randn(2, 3, 8, 8)
    expected = conv(x)
    buffer = io.BytesIO()
    torch.save(conv, buffer)
    buffer.seek(0)
    copies = [copy.deepcopy(conv), pickle.loads(pickle.dumps(conv)), torch.load(buffer, weights_only=False)]
    for other in copies:
        assert type(other) is fnn.Conv2d and other.algo == "direct" and other.padding_mode == "replicate"
        assert torch.equal(other(x), expected)
    # the weights-only path: a state_dict saved from fastconv loads into torch.nn, and back
    buffer = io.BytesIO()
    torch.save(conv.state_dict(), buffer)
    buffer.seek(0)
    plain = torch.nn.Conv2d(3, 4, 3, padding=2, dilation=2, padding_mode="replicate")
    plain.load_state_dict(torch.load(buffer, weights_only=True))
    torch.testing.assert_close(plain(x), expected, atol=1e-5, rtol=1e-5)


def test_model_copies_and_serialisation():
    model = _small_model().eval()
    x = torch.randn(2, 3, 10, 10)
    expected = model(x)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model)), torch.load(buffer, weights_only=False)):
        assert [type(m) for m in other] == [type(m) for m in model]
        assert torch.equal(other(x), expected)


def test_unpickling_an_old_layer_without_algo():
    conv = fnn.Conv1d(1, 2, 3)
    del conv.algo
    assert pickle.loads(pickle.dumps(conv)).algo == "auto"


def test_hooks_fire():
    conv = fnn.Conv2d(2, 3, 3)
    seen = []
    conv.register_forward_pre_hook(lambda m, args: seen.append("pre"))
    handle = conv.register_forward_hook(lambda m, args, out: seen.append(("fwd", tuple(out.shape))))
    conv.register_full_backward_hook(lambda m, gin, gout: seen.append(("bwd", tuple(gin[0].shape))))
    x = torch.randn(1, 2, 5, 5, requires_grad=True)
    conv(x).sum().backward()
    assert seen == ["pre", ("fwd", (1, 3, 3, 3)), ("bwd", (1, 2, 5, 5))]
    handle.remove()
    seen.clear()
    conv(x)
    assert seen == ["pre"]


def test_to_and_train_eval():
    model = _small_model()
    assert model.training and all(m.training for m in model)
    model.eval()
    assert not any(m.training for m in model)
    model.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in model.parameters())
    out = model(torch.randn(1, 3, 6, 6, dtype=torch.float64))
    assert out.dtype == torch.float64 and out.shape == (1, 4)


def test_layer_and_torch_model_train_identically():
    """A few SGD steps on the same data give the same weights as the torch.nn model (float64)."""
    torch.manual_seed(0)
    fast = _small_model().double()
    plain = fastconv.revert(fast)
    assert not any(type(m).__module__ == "fastconv.nn" for m in plain.modules())
    opt_fast = torch.optim.SGD(fast.parameters(), lr=0.1, momentum=0.9)
    opt_plain = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        x, y = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.randint(0, 4, (4,))
        for model, opt in ((fast, opt_fast), (plain, opt_plain)):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    for (name, a), b in zip(fast.state_dict().items(), plain.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8, msg=name)


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    model = torch.nn.Sequential(
        fnn.Conv1d(2, 4, 3, padding=1), torch.nn.ReLU(), fnn.MaxPool1d(2),
        fnn.Conv1d(4, 4, 3, padding="same", padding_mode="circular"), fnn.AdaptiveAvgPool1d(2),
    )
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = torch.randn(3, 2, 16, requires_grad=True)
    expected = model(x)
    (grad_expected,) = torch.autograd.grad(expected.sum(), x)
    out = compiled(x)
    (grad,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(grad, grad_expected)

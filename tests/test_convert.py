"""fastconv.convert / fastconv.revert: layer swapping, what is kept, and real torchvision models."""
import warnings

import pytest
import torch
import torchvision

import fastconv
from fastconv import nn as fnn


def _count(model, classes):
    return sum(type(m) in classes for m in model.modules())


FAST_CLASSES = set(fnn.FASTCONV_LAYERS.values())
TORCH_CLASSES = set(fnn.FASTCONV_LAYERS)


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect")
        self.bn = torch.nn.BatchNorm2d(4)
        self.inner = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.MaxPool2d(2, ceil_mode=True))

    def forward(self, x):
        return self.inner(self.bn(self.conv(x)))


def _nested_model():
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        Block(),
        torch.nn.ModuleDict({"avg": torch.nn.AvgPool2d(2, count_include_pad=False)}),
        torch.nn.AdaptiveMaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(16, 3),
    )


def _run_nested(model, x):
    h = model[1](model[0](x))
    h = model[2]["avg"](h)
    return model[5](model[4](model[3](h)))


def test_convert_swaps_every_covered_layer_at_any_depth_and_keeps_outputs():
    model = _nested_model().eval()
    x = torch.randn(2, 3, 12, 12)
    expected = _run_nested(model, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing uncovered here: no warning
        fast = fastconv.convert(model)
    assert fast is not model
    assert _count(fast, TORCH_CLASSES) == 0 and _count(fast, FAST_CLASSES) == 5
    assert _count(model, FAST_CLASSES) == 0, "the original model must stay untouched"
    assert type(fast[1].conv) is fnn.Conv2d and fast[1].conv.padding_mode == "reflect"
    assert type(fast[1].inner[1]) is fnn.MaxPool2d and fast[1].inner[1].ceil_mode
    assert list(fast.state_dict()) == list(model.state_dict())
    torch.testing.assert_close(_run_nested(fast, x), expected, atol=1e-5, rtol=1e-5)


def test_convert_keeps_parameters_buffers_mode_dtype_and_hooks():
    model = _nested_model().double()
    model[1].train()
    model[1].bn.running_mean.fill_(0.5)
    model.eval()
    model[1].train()  # mixed modes must survive
    calls = []
    model[0].register_forward_hook(lambda m, i, o: calls.append("conv"))
    removed = model[3].register_forward_hook(lambda m, i, o: calls.append("removed"))
    model[1].inner[1].register_forward_pre_hook(lambda m, i: calls.append("pool"))

    fast = fastconv.convert(model, inplace=True, algo="direct")
    assert fast is model
    assert type(model[0]) is fnn.Conv2d and model[0].algo == "direct" and model[1].conv.algo == "direct"
    assert model[0].weight.dtype == torch.float64
    assert [m.training for m in model.modules()] == [m.training for m in _mode_reference()]
    assert torch.equal(model[1].bn.running_mean, torch.full((4,), 0.5, dtype=torch.float64))
    removed.remove()  # a handle made before the swap still works
    _run_nested(model, torch.randn(1, 3, 8, 8, dtype=torch.float64))
    assert calls == ["conv", "pool"]


def _mode_reference():
    model = _nested_model()
    model.eval()
    model[1].train()
    return model.modules()


def test_inplace_convert_keeps_parameter_identity_for_an_existing_optimizer():
    model = _nested_model()
    params = list(model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    fastconv.convert(model, inplace=True)
    assert all(a is b for a, b in zip(model.parameters(), params))
    _run_nested(model, torch.randn(2, 3, 8, 8)).sum().backward()
    before = model[0].weight.detach().clone()
    opt.step()
    assert not torch.equal(model[0].weight, before)


def test_shared_layers_stay_shared():
    conv = torch.nn.Conv1d(2, 2, 3, padding=1)
    model = torch.nn.Sequential(conv, torch.nn.ReLU(), conv)
    fast = fastconv.convert(model)
    assert type(fast[0]) is fnn.Conv1d and fast[0] is fast[2]
    assert len(list(fast.parameters())) == 2


def test_root_layer_is_converted_and_reverted():
    conv = torch.nn.Conv2d(1, 2, 3)
    fast = fastconv.convert(conv)
    assert type(fast) is fnn.Conv2d and type(conv) is torch.nn.Conv2d
    back = fastconv.revert(fast)
    assert type(back) is torch.nn.Conv2d and not hasattr(back, "algo")
    assert torch.equal(back.weight, conv.weight)


def test_uncovered_layers_are_listed_in_one_warning():
    class MyConv(torch.nn.Conv2d):  # a subclass may have its own forward: left alone
        pass

    model = torch.nn.Sequential(
        torch.nn.Conv3d(1, 1, 1),
        torch.nn.Sequential(torch.nn.ConvTranspose2d(1, 1, 2), torch.nn.LPPool2d(2, 2)),
        MyConv(1, 1, 1),
        torch.nn.MaxPool3d(2),
        torch.nn.Conv2d(1, 1, 1),
    )
    with pytest.warns(UserWarning) as record:
        fast = fastconv.convert(model)
    assert len(record) == 1
    message = str(record[0].message)
    for expected in ("0 (Conv3d)", "1.0 (ConvTranspose2d)", "1.1 (LPPool2d)", "2 (MyConv)", "3 (MaxPool3d)"):
        assert expected in message
    assert "5 layer(s)" in message
    assert type(fast[2]) is MyConv and type(fast[4]) is fnn.Conv2d


def test_convert_rejects_unknown_algo():
    with pytest.raises(ValueError, match="algo"):
        fastconv.convert(torch.nn.Conv2d(1, 1, 1), algo="fft")


def test_revert_restores_torch_layers():
    model = _nested_model().eval()
    fast = fastconv.convert(model)
    back = fastconv.revert(fast)
    assert _count(back, FAST_CLASSES) == 0 and _count(back, TORCH_CLASSES) == 5
    assert _count(fast, FAST_CLASSES) == 5, "revert copies unless inplace"
    assert [type(m) for m in back.modules()] == [type(m) for m in model.modules()]
    x = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(_run_nested(back, x), _run_nested(model, x))
    assert fastconv.revert(fast, inplace=True) is fast and _count(fast, FAST_CLASSES) == 0


# ---------------------------------------------------------------------------------------------
# Real architectures (random weights, nothing downloaded), float64
# ---------------------------------------------------------------------------------------------

ARCHITECTURES = {
    # name: (builder, input size); inputs are as small as each architecture allows to keep this fast
    "resnet18": (torchvision.models.resnet18, 64),
    "mobilenet_v2": (torchvision.models.mobilenet_v2, 64),
    "vgg11_bn": (torchvision.models.vgg11_bn, 32),
    "densenet121": (torchvision.models.densenet121, 64),
    "efficientnet_b0": (torchvision.models.efficientnet_b0, 64),
}


@pytest.fixture
def one_thread():
    """torch's own float64 grouped convolution (the reference here) runs one small parallel region per
    group and image; on a busy 2-core machine two threads then wait on each other for tens of seconds
    per MobileNetV2 pass, against 0.05 s on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _seeded(fn, *args):
    torch.manual_seed(7)  # the same dropout / stochastic-depth masks for both models
    return fn(*args)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_torchvision_model_same_outputs_and_gradients(arch, one_thread):
    builder, size = ARCHITECTURES[arch]
    torch.manual_seed(0)
    model = builder(num_classes=10).double()
    n_torch_layers = _count(model, TORCH_CLASSES)
    x = torch.randn(2, 3, size, size, dtype=torch.float64)

    model.eval()
    with torch.no_grad():
        expected_eval = model(x)
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    model.train()
    _seeded(model, x).logsumexp(1).sum().backward()
    expected_grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    with torch.no_grad():  # undo the batch-norm statistics updates of the training pass
        for name, b in model.named_buffers():
            b.copy_(buffers[name])

    # inplace: no second copy of the weights (VGG's classifier alone is 1 GB in float64)
    fastconv.convert(model, inplace=True)
    assert _count(model, TORCH_CLASSES) == 0 and _count(model, FAST_CLASSES) == n_torch_layers > 0

    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected_eval, atol=1e-10, rtol=1e-9)
    model.train()
    _seeded(model, x).logsumexp(1).sum().backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected_grads[name], atol=1e-10, rtol=1e-8,
                                   msg=lambda m, name=name: f"grad of {name}: {m}")

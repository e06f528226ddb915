"""The benchmark cases: real layer shapes, and how to run each one on torch and on fastconv.

A *spec* names a layer (shapes and parameters, batch left open). `spec.prepare(batch, device, dtype,
pass_)` makes the inputs and returns a `Prepared`: a torch callable, one fastconv callable per
algorithm, the work done (FLOPs, bytes moved) and the fastconv workspace. Models work the same way,
with "inference" and "train step" instead of "forward" and "forward+backward".

Counting conventions (also written into every report):
- FLOPs of a convolution forward: 2 * N * Cout * prod(out spatial) * Cin/groups * prod(kernel).
  Backward: the weight gradient costs one forward; the input gradient another, except for layers whose
  input needs no gradient in a real network (a model's first layer), so forward+backward counts
  3x (or 2x) the forward.
- Bytes of a forward: input read + weight read + output written (a forward without gradients computes
  no max-pooling indices, on either side). Backward: grad_output, input and weight read, grad_input and
  grad_weight written (pooling: the forward's int64 indices written and read again for max pooling,
  grad_output read, grad_input written).
- Models: convolution FLOPs only (counted with hooks on every Conv layer); a training step counts 3x
  the forward convolution FLOPs.
"""
import contextlib
import copy
import math
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

import fastconv
from fastconv import functional as FC

FORWARD, FORWARD_BACKWARD = "forward", "forward+backward"
INFERENCE, TRAIN_STEP = "inference", "train step"
OP_PASSES = (FORWARD, FORWARD_BACKWARD)
MODEL_PASSES = (INFERENCE, TRAIN_STEP)
CONV_ALGOS = ("im2col", "direct", "auto")


class CaseUnavailable(Exception):
    """This build (or this environment) cannot run the fastconv side of a case; the message says why."""


@dataclass
class Prepared:
    """One case at one batch, device, dtype and pass, ready to time."""

    torch_fn: object
    fastconv_fns: dict  # algo label -> callable
    flops: float = 0.0  # per call; 0 where FLOPs mean nothing (pooling)
    bytes: float = 0.0  # minimum memory traffic per call
    workspace: dict = field(default_factory=dict)  # algo label -> bytes (None when unknown)
    check: object = None  # callable(torch_out, fastconv_out) -> (max_abs_diff, rel_err)
    notes: list = field(default_factory=list)


def _pair(value, dims):
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * dims


def _elementwise_error(reference, result):
    """(max |difference|, that divided by max |reference|) over matching tensors or tuples of them."""
    refs = reference if isinstance(reference, (tuple, list)) else (reference,)
    outs = result if isinstance(result, (tuple, list)) else (result,)
    worst_abs, worst_rel = 0.0, 0.0
    for ref, out in zip(refs, outs):
        if ref is None or out is None:
            continue
        ref, out = ref.detach().double(), out.detach().double()
        if ref.shape != out.shape:
            return float("inf"), float("inf")
        diff = (ref - out).abs().max().item() if ref.numel() else 0.0
        scale = ref.abs().max().item() if ref.numel() else 0.0
        worst_abs = max(worst_abs, diff)
        worst_rel = max(worst_rel, diff / scale if scale > 0 else diff)
    return worst_abs, worst_rel


# ----------------------------------------------------------------------------------------------
# Precisions
# ----------------------------------------------------------------------------------------------


PRECISIONS = {
    "float32": (torch.float32, False),  # FP32 with TF32 off
    "tf32": (torch.float32, True),  # FP32 tensors, TF32 tensor-core math allowed (CUDA only)
    "bfloat16": (torch.bfloat16, False),
}


def precisions(device, spec, wanted=None):
    """(label, dtype, allow_tf32) rows to run. Default: FP32 on CPU; FP32, TF32 and bfloat16 on CUDA.
    `wanted` (labels) narrows or widens that; TF32 is CUDA-only and changes nothing for pooling."""
    labels = wanted or (("float32", "tf32", "bfloat16") if device.type == "cuda" else ("float32",))
    rows = []
    for label in labels:
        if label == "tf32" and (device.type != "cuda" or spec.kind == "pool"):
            continue
        rows.append((label, *PRECISIONS[label]))
    return rows


@contextlib.contextmanager
def tf32_mode(enabled):
    """Sets TF32 for cuDNN convolutions and cuBLAS matrix products together, restoring both after."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # newer torch warns that these flags are being superseded
        saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        torch.backends.cudnn.allow_tf32 = enabled
        torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


# ----------------------------------------------------------------------------------------------
# Convolution
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvSpec:
    name: str
    in_channels: int
    out_channels: int
    kernel: tuple
    size: tuple  # input spatial size: (L,) or (H, W)
    stride: tuple = None
    padding: tuple = None
    dilation: tuple = None
    groups: int = 1
    bias: bool = False
    input_grad: bool = True  # False for a network's first layer: its input needs no gradient
    kind = "conv"

    def __post_init__(self):
        dims = len(self.size)
        for attr, default in (("kernel", None), ("stride", 1), ("padding", 0), ("dilation", 1)):
            value = getattr(self, attr)
            object.__setattr__(self, attr, _pair(default if value is None else value, dims))

    @property
    def dims(self):
        return len(self.size)

    @property
    def op(self):
        return f"conv{self.dims}d"

    @property
    def depthwise(self):
        return self.groups > 1 and self.groups == self.in_channels

    def output_size(self):
        return tuple(
            (self.size[d] + 2 * self.padding[d] - self.dilation[d] * (self.kernel[d] - 1) - 1) // self.stride[d] + 1
            for d in range(self.dims)
        )

    def forward_flops(self, batch):
        macs = batch * self.out_channels * (self.in_channels // self.groups)
        for out, k in zip(self.output_size(), self.kernel):
            macs *= out * k
        return 2.0 * macs

    def params(self, batch):
        return {
            "input_shape": [batch, self.in_channels, *self.size],
            "weight_shape": [self.out_channels, self.in_channels // self.groups, *self.kernel],
            "output_shape": [batch, self.out_channels, *self.output_size()],
            "stride": list(self.stride), "padding": list(self.padding), "dilation": list(self.dilation),
            "groups": self.groups, "bias": self.bias,
        }

    def shape_label(self, batch):
        """Short text of the shapes: "64x56x56 -> 64x56x56"."""
        x = "x".join(str(v) for v in (self.in_channels, *self.size))
        y = "x".join(str(v) for v in (self.out_channels, *self.output_size()))
        return f"{x} -> {y}"

    def prepare(self, batch, device, dtype, pass_):
        torch_conv = F.conv1d if self.dims == 1 else F.conv2d
        fast_conv = FC.conv1d if self.dims == 1 else FC.conv2d
        x = torch.randn(batch, self.in_channels, *self.size, device=device, dtype=dtype)
        w = torch.randn(self.out_channels, self.in_channels // self.groups, *self.kernel, device=device,
                        dtype=dtype)
        w *= (w[0].numel()) ** -0.5
        b = torch.randn(self.out_channels, device=device, dtype=dtype) if self.bias else None
        conv_args = (self.stride, self.padding, self.dilation, self.groups)
        elt = x.element_size()
        fwd_bytes = (x.numel() + w.numel() + batch * self.out_channels * math.prod(self.output_size())) * elt
        flops = self.forward_flops(batch)
        if pass_ == FORWARD:
            def run(conv, **kw):
                def call():
                    with torch.no_grad():
                        return conv(x, w, b, *conv_args, **kw)
                return call
            total_flops, total_bytes = flops, fwd_bytes
        else:
            x_g = x.clone().requires_grad_(self.input_grad)
            w_g = w.clone().requires_grad_()
            b_g = b.clone().requires_grad_() if b is not None else None
            leaves = [t for t in (x_g, w_g, b_g) if t is not None and t.requires_grad]
            grad_out = torch.randn(batch, self.out_channels, *self.output_size(), device=device, dtype=dtype)

            def run(conv, **kw):
                def call():
                    out = conv(x_g, w_g, b_g, *conv_args, **kw)
                    return (out, *torch.autograd.grad(out, leaves, grad_out))
                return call
            grads = (1 + int(self.input_grad))
            total_flops = flops * (1 + grads)
            bwd_bytes = (grad_out.numel() + x.numel() + w.numel() + w.numel()
                         + (x.numel() if self.input_grad else 0)) * elt
            total_bytes = fwd_bytes + bwd_bytes
        prepared = Prepared(
            torch_fn=run(torch_conv),
            fastconv_fns={algo: run(fast_conv, algo=algo) for algo in CONV_ALGOS},
            flops=total_flops,
            bytes=total_bytes,
            check=_elementwise_error,
        )
        for algo in CONV_ALGOS:  # "auto" is resolved by the op itself, as in the timed calls
            prepared.workspace[algo] = conv_workspace_bytes(self, x, w, algo)
        return prepared


def conv_workspace_bytes(spec, x, w, algo):
    """Scratch bytes fastconv allocates for this convolution's forward, or None when not reported."""
    query = getattr(torch.ops.fastconv, "conv2d_workspace_bytes", None)
    if query is None or algo is None:
        return None
    stride, padding, dilation = list(spec.stride), list(spec.padding), list(spec.dilation)
    if spec.dims == 1:  # conv1d runs as conv2d over a height of 1
        x, w = x.unsqueeze(2), w.unsqueeze(2)
        stride, padding, dilation = [1] + stride, [0] + padding, [1] + dilation
    try:
        return int(query(x, w, stride, padding, dilation, spec.groups, algo))
    except (RuntimeError, NotImplementedError):
        return None


def conv2d(name, cin, cout, k, hw, stride=1, padding=0, groups=1, bias=False, input_grad=True):
    return ConvSpec(name, cin, cout, _pair(k, 2), _pair(hw, 2), stride, padding, groups=groups, bias=bias,
                    input_grad=input_grad)


def conv1d(name, cin, cout, k, length, stride=1, padding=0, dilation=1, bias=True, input_grad=True):
    return ConvSpec(name, cin, cout, (k,), (length,), stride, padding, dilation, bias=bias, input_grad=input_grad)


def depthwise3x3(name, channels, hw, stride):
    return conv2d(name, channels, channels, 3, hw, stride, 1, groups=channels)


# ----------------------------------------------------------------------------------------------
# Pooling
# ----------------------------------------------------------------------------------------------

_MAX_POOLS = ("max_pool1d", "max_pool2d", "adaptive_max_pool1d", "adaptive_max_pool2d")


@dataclass(frozen=True)
class PoolSpec:
    name: str
    op: str  # the torch.nn.functional / fastconv.functional name
    channels: int
    size: tuple
    kwargs: tuple  # (name, value) pairs, the call's keyword arguments
    kind = "pool"

    @property
    def dims(self):
        return len(self.size)

    @property
    def depthwise(self):
        return False

    def params(self, batch):
        return {"input_shape": [batch, self.channels, *self.size], **{k: v for k, v in self.kwargs}}

    def shape_label(self, batch):
        x = torch.empty(1, self.channels, *self.size, device="meta")
        y = getattr(F, self.op)(x, **dict(self.kwargs))
        return "x".join(map(str, x.shape[1:])) + " -> " + "x".join(map(str, y.shape[1:]))

    def prepare(self, batch, device, dtype, pass_):
        torch_pool = getattr(F, self.op)
        fast_pool = getattr(FC, self.op, None)
        if fast_pool is None:
            raise CaseUnavailable(f"fastconv.functional.{self.op} does not exist in this build")
        kwargs = dict(self.kwargs)
        x = torch.randn(batch, self.channels, *self.size, device=device, dtype=dtype)
        with torch.no_grad():
            out_numel = torch_pool(x, **kwargs).numel()
        elt = x.element_size()
        index_bytes = out_numel * 8 if self.op in _MAX_POOLS else 0
        fwd_bytes = (x.numel() + out_numel) * elt
        if pass_ == FORWARD:
            def run(pool):
                def call():
                    with torch.no_grad():
                        return pool(x, **kwargs)
                return call
            total_bytes = fwd_bytes
        else:
            x_g = x.clone().requires_grad_()
            grad_out = torch.randn_like(torch_pool(x, **kwargs))

            def run(pool):
                def call():
                    out = pool(x_g, **kwargs)
                    return (out, *torch.autograd.grad(out, (x_g,), grad_out))
                return call
            total_bytes = fwd_bytes + (out_numel + x.numel()) * elt + 2 * index_bytes
        return Prepared(torch_fn=run(torch_pool), fastconv_fns={"fastconv": run(fast_pool)}, bytes=total_bytes,
                        workspace={"fastconv": 0}, check=_elementwise_error)


def pool(name, op, channels, size, **kwargs):
    return PoolSpec(name, op, channels, tuple(size), tuple(kwargs.items()))


# ----------------------------------------------------------------------------------------------
# Whole models
# ----------------------------------------------------------------------------------------------


def _count_fastconv_modules(model):
    return sum(1 for m in model.modules() if type(m).__module__.startswith("fastconv"))


def _conv_forward_flops(model, example):
    """FLOPs of every Conv1d/Conv2d in one forward of `model` on `example`, counted with hooks."""
    total = [0.0]

    def hook(module, inputs, output):
        w = module.weight
        total[0] += 2.0 * output.numel() * w.shape[1] * math.prod(w.shape[2:])

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d))]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return total[0]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: object  # () -> torch.nn.Module with random weights
    image_size: int
    num_classes: int = 1000
    in_channels: int = 3
    kind = "model"

    @property
    def depthwise(self):
        return False

    def params(self, batch):
        return {"input_shape": [batch, self.in_channels, self.image_size, self.image_size]}

    def shape_label(self, batch):
        return f"{self.in_channels}x{self.image_size}x{self.image_size}"

    def prepare(self, batch, device, dtype, pass_):
        convert = getattr(fastconv, "convert", None)
        if convert is None:
            raise CaseUnavailable("fastconv.convert is not available in this build")
        reference = self.builder().to(device=device, dtype=dtype)
        converted = convert(copy.deepcopy(reference))
        converted = converted.to(device=device, dtype=dtype)
        swapped = _count_fastconv_modules(converted)
        notes = [f"{swapped} layers swapped for fastconv's"]
        if swapped == 0:
            raise CaseUnavailable("fastconv.convert swapped no layer of this model")
        x = torch.randn(batch, self.in_channels, self.image_size, self.image_size, device=device, dtype=dtype)
        reference.eval()
        flops = _conv_forward_flops(reference, x)
        if pass_ == INFERENCE:
            converted.eval()

            def run(model):
                def call():
                    with torch.no_grad():
                        return model(x)
                return call
            total_flops = flops
        else:
            reference.train()
            converted.train()
            labels = torch.randint(0, self.num_classes, (batch,), device=device)

            def run(model):
                optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
                first_call = [True]

                def call():
                    if first_call[0]:  # the call that is checked: the same dropout masks on both sides
                        first_call[0] = False
                        torch.manual_seed(0)
                    optimizer.zero_grad(set_to_none=True)
                    loss = F.cross_entropy(model(x), labels)
                    loss.backward()
                    optimizer.step()
                    return loss.detach()
                return call
            total_flops = 3 * flops
        return Prepared(torch_fn=run(reference), fastconv_fns={"auto": run(converted)}, flops=total_flops,
                        workspace={"auto": None}, check=_elementwise_error, notes=notes)


def _torchvision_model(name):
    def build():
        try:
            import torchvision
        except ImportError as exc:
            raise CaseUnavailable("torchvision is not installed") from exc
        return getattr(torchvision.models, name)(weights=None)
    return build


# ----------------------------------------------------------------------------------------------
# The groups: real layers of ResNet-18, MobileNetV2, audio and sequence models, ResNet's pooling
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Group:
    key: str
    title: str
    specs: tuple
    quick: tuple  # names of the specs a --quick run keeps
    passes: tuple = OP_PASSES
    description: str = ""


RESNET18_LAYERS = (
    conv2d("conv1 7x7/2 (stem)", 3, 64, 7, 224, 2, 3, input_grad=False),
    conv2d("layer1 3x3", 64, 64, 3, 56, 1, 1),
    conv2d("layer2.0 3x3/2", 64, 128, 3, 56, 2, 1),
    conv2d("layer2 3x3", 128, 128, 3, 28, 1, 1),
    conv2d("layer2.0 downsample 1x1/2", 64, 128, 1, 56, 2, 0),
    conv2d("layer3.0 3x3/2", 128, 256, 3, 28, 2, 1),
    conv2d("layer3 3x3", 256, 256, 3, 14, 1, 1),
    conv2d("layer3.0 downsample 1x1/2", 128, 256, 1, 28, 2, 0),
    conv2d("layer4.0 3x3/2", 256, 512, 3, 14, 2, 1),
    conv2d("layer4 3x3", 512, 512, 3, 7, 1, 1),
    conv2d("layer4.0 downsample 1x1/2", 256, 512, 1, 14, 2, 0),
)

MOBILENETV2_DEPTHWISE = (
    depthwise3x3("block1 dw 32ch", 32, 112, 1),
    depthwise3x3("block2 dw 96ch /2", 96, 112, 2),
    depthwise3x3("block3 dw 144ch", 144, 56, 1),
    depthwise3x3("block4 dw 144ch /2", 144, 56, 2),
    depthwise3x3("block5 dw 192ch", 192, 28, 1),
    depthwise3x3("block7 dw 192ch /2", 192, 28, 2),
    depthwise3x3("block8 dw 384ch", 384, 14, 1),
    depthwise3x3("block12 dw 576ch", 576, 14, 1),
    depthwise3x3("block14 dw 576ch /2", 576, 14, 2),
    depthwise3x3("block15 dw 960ch", 960, 7, 1),
)

GROUPED_LAYERS = (
    # ResNeXt-50 32x4d's grouped 3x3 convolutions (the stride-1 one of each stage).
    conv2d("ResNeXt-50 layer1 3x3 g32 (4/group)", 128, 128, 3, 56, 1, 1, groups=32),
    conv2d("ResNeXt-50 layer2 3x3 g32 (8/group)", 256, 256, 3, 28, 1, 1, groups=32),
    conv2d("ResNeXt-50 layer3 3x3 g32 (16/group)", 512, 512, 3, 14, 1, 1, groups=32),
    conv2d("ResNeXt-50 layer4 3x3 g32 (32/group)", 1024, 1024, 3, 7, 1, 1, groups=32),
    # Channels per group from 2 to 16 on one shape: where im2col starts to beat direct (algo="auto").
    conv2d("128ch 3x3, 2/group", 128, 128, 3, 28, 1, 1, groups=64),
    conv2d("128ch 3x3, 4/group", 128, 128, 3, 28, 1, 1, groups=32),
    conv2d("128ch 3x3, 8/group", 128, 128, 3, 28, 1, 1, groups=16),
    conv2d("128ch 3x3, 16/group", 128, 128, 3, 28, 1, 1, groups=8),
)

CONV1D_LAYERS = (
    # Raw-waveform front ends: long kernels, large strides, one input channel (1 s of 16 kHz audio).
    conv1d("M5 front end k80/16", 1, 128, 80, 16000, stride=16, input_grad=False),
    conv1d("wav2vec2 front end k10/5", 1, 512, 10, 16000, stride=5, bias=False, input_grad=False),
    conv1d("wav2vec2 k3/2", 512, 512, 3, 3199, stride=2, bias=False),
    # Sequence models: 3-tap convolutions and dilated (temporal convolutional network / WaveNet style).
    conv1d("TCN k3", 128, 128, 3, 1024, padding=1),
    conv1d("TCN k3 dilation 4", 128, 128, 3, 1024, padding=4, dilation=4),
    conv1d("WaveNet k2 dilation 16", 64, 64, 2, 4096, padding=8, dilation=16),
    conv1d("text CNN k5", 300, 256, 5, 256, padding=2),
)

POOLING_LAYERS = (
    pool("ResNet max_pool2d 3x3/2", "max_pool2d", 64, (112, 112), kernel_size=3, stride=2, padding=1),
    pool("ResNet global avg pool", "adaptive_avg_pool2d", 512, (7, 7), output_size=1),
    pool("avg_pool2d 2x2/2 (DenseNet transition)", "avg_pool2d", 128, (56, 56), kernel_size=2, stride=2),
    pool("avg_pool2d 3x3/1 pad 1 (Inception branch)", "avg_pool2d", 192, (35, 35), kernel_size=3, stride=1,
         padding=1),
    pool("max_pool1d 4 (M5 audio)", "max_pool1d", 128, (996,), kernel_size=4),
    pool("max_pool1d 3/2 pad 1 (sequence)", "max_pool1d", 256, (1024,), kernel_size=3, stride=2, padding=1),
)

MODELS = (
    ModelSpec("ResNet-18", _torchvision_model("resnet18"), 224),
    ModelSpec("MobileNetV2", _torchvision_model("mobilenet_v2"), 224),
)

GROUPS = (
    Group("resnet18", "conv2d: ResNet-18 layers", RESNET18_LAYERS,
          quick=("conv1 7x7/2 (stem)", "layer1 3x3", "layer2.0 3x3/2", "layer3.0 downsample 1x1/2", "layer4 3x3"),
          description="Every distinct convolution of torchvision's ResNet-18 at 224x224."),
    Group("mobilenetv2_dw", "conv2d: MobileNetV2 depthwise 3x3", MOBILENETV2_DEPTHWISE,
          quick=("block1 dw 32ch", "block4 dw 144ch /2", "block12 dw 576ch"),
          description="The depthwise 3x3 convolutions of MobileNetV2 at 224x224 (memory-bound: see GB/s)."),
    Group("grouped", "conv2d: grouped 3x3", GROUPED_LAYERS,
          quick=("128ch 3x3, 2/group", "128ch 3x3, 8/group"),
          description="ResNeXt-50 32x4d's grouped convolutions, and a sweep of channels per group that shows "
                      "where algo=\"auto\" should switch from direct to im2col."),
    Group("conv1d", "conv1d: audio and sequence models", CONV1D_LAYERS,
          quick=("M5 front end k80/16", "TCN k3", "TCN k3 dilation 4"),
          description="Raw-waveform front ends (1 s at 16 kHz), 3-tap, dilated and text convolutions."),
    Group("pooling", "pooling", POOLING_LAYERS,
          quick=("ResNet max_pool2d 3x3/2", "ResNet global avg pool", "avg_pool2d 2x2/2 (DenseNet transition)",
                 "max_pool1d 4 (M5 audio)"),
          description="ResNet's pooling layers plus avg_pool2d and max_pool1d (memory-bound: see GB/s)."),
    Group("models", "whole models", MODELS, quick=("ResNet-18", "MobileNetV2"), passes=MODEL_PASSES,
          description="torchvision models with random weights, converted with fastconv.convert, against the "
                      "unconverted model (inference, and one SGD training step with cross-entropy)."),
)

# The CI smoke run: two tiny cases, one convolution and one pooling layer.
SMOKE_GROUPS = (
    Group("resnet18", "conv2d (smoke)", (conv2d("tiny 3x3", 4, 8, 3, 10, 1, 1),), quick=("tiny 3x3",)),
    Group("pooling", "pooling (smoke)", (pool("tiny max_pool2d 3x3/2", "max_pool2d", 4, (10, 10), kernel_size=3,
                                              stride=2, padding=1),), quick=("tiny max_pool2d 3x3/2",)),
)


def groups_for(mode):
    """(group, specs) to run in mode "smoke", "quick" or "full"."""
    if mode == "smoke":
        return [(g, g.specs) for g in SMOKE_GROUPS]
    if mode == "quick":
        return [(g, tuple(s for s in g.specs if s.name in g.quick)) for g in GROUPS]
    return [(g, g.specs) for g in GROUPS]

"""Swap a model's torch.nn convolution and pooling layers for fastconv's, and back.

    model = fastconv.convert(torchvision.models.resnet18())   # a converted copy
    fastconv.revert(model, inplace=True)                      # torch.nn layers again

Each swapped layer is a new fastconv (or torch.nn) object that takes over the old layer's whole state
(the same parameter and buffer tensors, hooks, training flag), so device, dtype, hooks and the
state_dict carry over unchanged. Layers are matched by exact class: a user subclass of
torch.nn.Conv2d may override forward, so it is left alone like the layers fastconv does not cover.
"""
import copy
import warnings

import torch

from .nn import FASTCONV_LAYERS, _check_algo, _FastconvConv

__all__ = ["convert", "revert"]

_TORCH_LAYERS = {fast: plain for plain, fast in FASTCONV_LAYERS.items()}

# Convolution and pooling layers of torch.nn, covered or not: the ones convert() cannot swap are
# named in its warning.
_CONV_AND_POOL_LAYERS = tuple(
    getattr(torch.nn, name)
    for name in (
        "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d",
        "MaxPool1d", "MaxPool2d", "MaxPool3d", "AvgPool1d", "AvgPool2d", "AvgPool3d",
        "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveAvgPool3d",
        "AdaptiveMaxPool1d", "AdaptiveMaxPool2d", "AdaptiveMaxPool3d",
        "LPPool1d", "LPPool2d", "LPPool3d", "FractionalMaxPool2d", "FractionalMaxPool3d",
        "MaxUnpool1d", "MaxUnpool2d", "MaxUnpool3d",
    )
    if hasattr(torch.nn, name)
)


def _take_over(layer, cls):
    """A `cls` object that shares `layer`'s whole state.

    The attribute dicts (parameters, buffers, hooks, ...) are shared, not copied: hook handles hold
    weak references to those dicts, so handles made before the swap still remove their hooks.
    """
    new = cls.__new__(cls)
    new.__dict__.update(layer.__dict__)
    return new


def _swap_layers(model, swap):
    """Replaces, at any depth, every module m for which swap(m) returns a new module.

    A module reachable from several parents (shared weights) is swapped once and stays shared.
    """
    swapped = {}

    def visit(module):
        key = id(module)
        if key not in swapped:
            new = swap(module)
            swapped[key] = module if new is None else new
            for name, child in list(swapped[key]._modules.items()):
                if child is not None:
                    swapped[key]._modules[name] = visit(child)
        return swapped[key]

    return visit(model)


def convert(model, inplace=False, algo="auto"):
    """Returns ``model`` with its torch.nn convolution and pooling layers replaced by fastconv's.

    Covered: Conv1d, Conv2d, MaxPool1d/2d, AvgPool1d/2d, AdaptiveAvgPool1d/2d, AdaptiveMaxPool1d/2d,
    at any depth. Parameters, buffers, hooks, training mode, device and dtype are kept. The model is
    copied first unless ``inplace``. ``algo`` is given to every converted convolution. Other
    convolution and pooling layers (Conv3d, ConvTranspose2d, subclasses of the covered classes, ...)
    stay as they are and are listed in one warning.
    """
    _check_algo(algo)
    if not inplace:
        model = copy.deepcopy(model)
    left_as_is = []
    names = {id(m): name or "(model)" for name, m in model.named_modules()}

    def swap(module):
        fast_cls = FASTCONV_LAYERS.get(type(module))
        if fast_cls is None:
            if isinstance(module, _CONV_AND_POOL_LAYERS) and type(module) not in _TORCH_LAYERS:
                left_as_is.append(f"{names.get(id(module), '?')} ({type(module).__name__})")
            return None
        new = _take_over(module, fast_cls)
        if isinstance(new, _FastconvConv):
            new.algo = algo
        return new

    model = _swap_layers(model, swap)
    if left_as_is:
        warnings.warn(
            f"fastconv.convert: {len(left_as_is)} layer(s) not covered by fastconv keep running on torch: "
            + ", ".join(left_as_is),
            stacklevel=2,
        )
    return model


def revert(model, inplace=False):
    """The reverse of :func:`convert`: fastconv layers become the torch.nn layers they came from."""
    if not inplace:
        model = copy.deepcopy(model)

    def swap(module):
        torch_cls = _TORCH_LAYERS.get(type(module))
        if torch_cls is None:
            return None
        new = _take_over(module, torch_cls)
        new.__dict__.pop("algo", None)
        return new

    return _swap_layers(model, swap)

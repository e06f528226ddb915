"""fastconv: hand-written convolution and pooling kernels for PyTorch (CPU and CUDA).

    import fastconv
    y = fastconv.functional.conv2d(x, w, padding=1)      # like torch.nn.functional.conv2d
    model = fastconv.convert(torchvision_model)          # swap torch.nn layers for fastconv's

The operators are also available as torch.ops.fastconv.*.
"""
from ._loader import build_info
from . import _ops  # noqa: F401
from . import functional
from . import nn
from .convert import convert, revert

__version__ = "0.1.0"
__all__ = ["functional", "nn", "convert", "revert", "build_info", "__version__"]

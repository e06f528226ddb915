"""Drop-in torch.nn layers backed by fastconv's kernels.

Every class here subclasses the torch.nn class of the same name and only swaps the computation:
constructor arguments and defaults, parameter initialisation, state_dict keys, hooks, pickling and
``.to(...)`` are the torch.nn ones, so a state_dict moves freely between a torch.nn layer and its
fastconv twin. Convolutions take one extra keyword, ``algo`` ("auto", "im2col" or "direct"), stored
on the layer and shown in its repr. ``repr`` names the layers ``fastconv.Conv2d`` and so on, so a
printed model shows which layers run on fastconv.
"""
import torch
import torch.nn.functional as F

from . import functional as FC

__all__ = [
    "Conv1d", "Conv2d",
    "MaxPool1d", "MaxPool2d", "AvgPool1d", "AvgPool2d",
    "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveMaxPool1d", "AdaptiveMaxPool2d",
    "FASTCONV_LAYERS",
]


class _FastconvLayer:
    """Mixin: the repr names the layer as fastconv's."""

    def _get_name(self):
        return f"fastconv.{type(self).__name__}"


def _check_algo(algo):
    if algo not in FC.CONV_ALGOS:
        raise ValueError(f"algo must be one of {FC.CONV_ALGOS}, got {algo!r}")
    return algo


class _FastconvConv(_FastconvLayer):
    """What fastconv's Conv1d and Conv2d share: the ``algo`` attribute and torch's padding_mode rule."""

    _functional = None  # FC.conv1d or FC.conv2d, set by the subclass

    def _conv_forward(self, input, weight, bias):
        if self.padding_mode != "zeros":
            # Non-zero padding modes pad explicitly, then convolve without padding (torch does the same).
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return self._functional(input, weight, bias, self.stride, 0, self.dilation, self.groups, algo=self.algo)
        return self._functional(input, weight, bias, self.stride, self.padding, self.dilation, self.groups,
                                algo=self.algo)

    def extra_repr(self):
        return f"{super().extra_repr()}, algo={self.algo!r}"

    def __setstate__(self, state):
        super().__setstate__(state)
        if not hasattr(self, "algo"):  # pickled before the attribute existed
            self.algo = "auto"


class Conv1d(_FastconvConv, torch.nn.Conv1d):
    """torch.nn.Conv1d computed by fastconv; ``algo`` picks the convolution algorithm."""

    _functional = staticmethod(FC.conv1d)

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", device=None, dtype=None, *, algo="auto"):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)
        self.algo = _check_algo(algo)


class Conv2d(_FastconvConv, torch.nn.Conv2d):
    """torch.nn.Conv2d computed by fastconv; ``algo`` picks the convolution algorithm."""

    _functional = staticmethod(FC.conv2d)

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", device=None, dtype=None, *, algo="auto"):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)
        self.algo = _check_algo(algo)


# Pooling layers keep torch's constructors untouched; only forward changes.


class MaxPool1d(_FastconvLayer, torch.nn.MaxPool1d):
    """torch.nn.MaxPool1d computed by fastconv."""

    def forward(self, input):
        return FC.max_pool1d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                             ceil_mode=self.ceil_mode, return_indices=self.return_indices)


class MaxPool2d(_FastconvLayer, torch.nn.MaxPool2d):
    """torch.nn.MaxPool2d computed by fastconv."""

    def forward(self, input):
        return FC.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                             ceil_mode=self.ceil_mode, return_indices=self.return_indices)


class AvgPool1d(_FastconvLayer, torch.nn.AvgPool1d):
    """torch.nn.AvgPool1d computed by fastconv."""

    def forward(self, input):
        return FC.avg_pool1d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                             self.count_include_pad)


class AvgPool2d(_FastconvLayer, torch.nn.AvgPool2d):
    """torch.nn.AvgPool2d computed by fastconv."""

    def forward(self, input):
        return FC.avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                             self.count_include_pad, self.divisor_override)


class AdaptiveAvgPool1d(_FastconvLayer, torch.nn.AdaptiveAvgPool1d):
    """torch.nn.AdaptiveAvgPool1d computed by fastconv."""

    def forward(self, input):
        return FC.adaptive_avg_pool1d(input, self.output_size)


class AdaptiveAvgPool2d(_FastconvLayer, torch.nn.AdaptiveAvgPool2d):
    """torch.nn.AdaptiveAvgPool2d computed by fastconv."""

    def forward(self, input):
        return FC.adaptive_avg_pool2d(input, self.output_size)


class AdaptiveMaxPool1d(_FastconvLayer, torch.nn.AdaptiveMaxPool1d):
    """torch.nn.AdaptiveMaxPool1d computed by fastconv."""

    def forward(self, input):
        return FC.adaptive_max_pool1d(input, self.output_size, self.return_indices)


class AdaptiveMaxPool2d(_FastconvLayer, torch.nn.AdaptiveMaxPool2d):
    """torch.nn.AdaptiveMaxPool2d computed by fastconv."""

    def forward(self, input):
        return FC.adaptive_max_pool2d(input, self.output_size, self.return_indices)


# torch.nn class -> its fastconv twin (what fastconv.convert swaps; fastconv.revert swaps back).
FASTCONV_LAYERS = {
    torch.nn.Conv1d: Conv1d,
    torch.nn.Conv2d: Conv2d,
    torch.nn.MaxPool1d: MaxPool1d,
    torch.nn.MaxPool2d: MaxPool2d,
    torch.nn.AvgPool1d: AvgPool1d,
    torch.nn.AvgPool2d: AvgPool2d,
    torch.nn.AdaptiveAvgPool1d: AdaptiveAvgPool1d,
    torch.nn.AdaptiveAvgPool2d: AdaptiveAvgPool2d,
    torch.nn.AdaptiveMaxPool1d: AdaptiveMaxPool1d,
    torch.nn.AdaptiveMaxPool2d: AdaptiveMaxPool2d,
}

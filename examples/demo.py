"""A short demonstration: fastconv against torch.nn.functional on a few real layers.

For each layer it checks that the outputs agree and prints both median times side by side.
"""
import torch
import torch.nn.functional as F
from torch.utils.benchmark import Timer

import fastconv
from fastconv import functional as FC

LAYERS = [
    # name, input shape, weight shape, stride, padding, groups
    ("resnet18 conv1 7x7/2", (1, 3, 224, 224), (64, 3, 7, 7), 2, 3, 1),
    ("resnet18 layer1 3x3", (1, 64, 56, 56), (64, 64, 3, 3), 1, 1, 1),
    ("resnet18 layer3 3x3", (1, 256, 14, 14), (256, 256, 3, 3), 1, 1, 1),
    ("mobilenetv2 depthwise 3x3", (1, 96, 56, 56), (96, 1, 3, 3), 1, 1, 96),
]


def median_ms(fn):
    return Timer("fn()", globals={"fn": fn}).blocked_autorange(min_run_time=0.3).median * 1e3


def main():
    torch.manual_seed(0)
    print(f"fastconv {fastconv.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    print(f"{'layer':28s} {'max |diff|':>11s} {'torch ms':>9s} {'fastconv ms':>12s} {'speed-up':>9s}")
    for name, xs, ws, stride, padding, groups in LAYERS:
        x, w, b = torch.randn(xs), torch.randn(ws) * 0.1, torch.randn(ws[0])
        ref = F.conv2d(x, w, b, stride, padding, 1, groups)
        out = FC.conv2d(x, w, b, stride, padding, 1, groups)
        diff = (out - ref).abs().max().item()
        assert torch.allclose(out, ref, rtol=1e-4, atol=1e-4), f"{name}: outputs differ by {diff}"
        t_torch = median_ms(lambda: F.conv2d(x, w, b, stride, padding, 1, groups))
        t_fast = median_ms(lambda: FC.conv2d(x, w, b, stride, padding, 1, groups))
        print(f"{name:28s} {diff:11.2e} {t_torch:9.3f} {t_fast:12.3f} {t_torch / t_fast:8.2f}x")


if __name__ == "__main__":
    main()

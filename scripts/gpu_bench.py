"""A small GPU benchmark of fastconv against torch (cuDNN) on real layer shapes.

    python3 scripts/gpu_bench.py --out OUTDIR [--quick]

Times forward and forward+backward with torch.utils.benchmark.Timer (it synchronises CUDA), fastconv
and torch side by side in one process, torch in true FP32 (TF32 off; dense layers also report torch
with TF32 on, separately). Reports milliseconds (median), GFLOP/s for convolutions, GB/s (compulsory
traffic: input + output, + weight) for depthwise layers and pooling, the time ratio fastconv / torch,
and the im2col workspace. Writes OUTDIR/bench.json and OUTDIR/bench.md.
"""
import argparse
import json
import os
import platform
import sys

import torch
import torch.nn.functional as F
from torch.utils.benchmark import Timer

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fastconv.functional as FC  # noqa: E402

DEVICE = torch.device("cuda")
PEAK_FP32_TFLOPS = 67.0  # H100 SXM without tensor cores (GUIDE.md)

# name, batch, in_channels, size (H, W), out_channels, kernel, stride, padding, groups
CONV2D = [
    ("resnet18 conv1 7x7/2", 32, 3, (224, 224), 64, 7, 2, 3, 1),
    ("resnet18 layer1 3x3", 32, 64, (56, 56), 64, 3, 1, 1, 1),
    ("resnet18 layer2 3x3", 32, 128, (28, 28), 128, 3, 1, 1, 1),
    ("resnet18 layer3 3x3", 32, 256, (14, 14), 256, 3, 1, 1, 1),
    ("resnet18 layer4 3x3", 32, 512, (7, 7), 512, 3, 1, 1, 1),
    ("resnet18 layer4 3x3 b1", 1, 512, (7, 7), 512, 3, 1, 1, 1),
    ("resnet18 downsample 1x1/2", 32, 128, (28, 28), 256, 1, 2, 0, 1),
    ("mobilenetv2 dw 32@112", 32, 32, (112, 112), 32, 3, 1, 1, 32),
    ("mobilenetv2 dw 144@56/2", 32, 144, (56, 56), 144, 3, 2, 1, 144),
    ("mobilenetv2 dw 960@7", 32, 960, (7, 7), 960, 3, 1, 1, 960),
    ("mobilenetv2 pw 1x1 96->576", 32, 96, (14, 14), 576, 1, 1, 0, 1),
]
# name, batch, in_channels, length, out_channels, kernel, stride, padding, groups
CONV1D = [
    ("conv1d audio 128ch k3", 16, 128, 4000, 128, 3, 1, 1, 1),
    ("conv1d frontend 1->64 k10/5", 16, 1, 16000, 64, 10, 5, 0, 1),
    ("conv1d depthwise 256ch k31", 16, 256, 1000, 256, 31, 1, 15, 256),
]
# name, input shape, fastconv/torch call
POOLS = [
    ("max_pool2d 3/2/1 64@112", (32, 64, 112, 112), lambda m, x: m.max_pool2d(x, 3, 2, 1)),
    ("avg_pool2d 2/2 128@56", (32, 128, 56, 56), lambda m, x: m.avg_pool2d(x, 2)),
    ("adaptive_avg_pool2d 512@7 -> 1", (32, 512, 7, 7), lambda m, x: m.adaptive_avg_pool2d(x, 1)),
    ("adaptive_max_pool2d 64@56 -> 7", (32, 64, 56, 56), lambda m, x: m.adaptive_max_pool2d(x, 7)),
]


def median_ms(fn, min_run_time):
    fn()  # warm up (lazy cuBLAS/cuDNN initialisation, allocator)
    torch.cuda.synchronize()
    return Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time).median * 1e3


def forward_backward(fn, inputs):
    def step():
        out = fn(*inputs)
        torch.autograd.grad(out, [t for t in inputs if t.requires_grad], torch.ones_like(out))

    return step


def bench_conv(name, dims, x, w, params, flops, min_time, depthwise):
    rows = []
    torch_fn = (F.conv1d if dims == 1 else F.conv2d)
    fc_fn = (FC.conv1d if dims == 1 else FC.conv2d)
    algos = ["direct"] if depthwise else ["im2col", "direct"] if x.shape[0] == 1 or flops < 2e10 else ["im2col"]
    traffic = (x.numel() + w.numel()) * x.element_size()
    out_numel = torch_fn(x.detach(), w.detach(), **params).numel()
    traffic += out_numel * x.element_size()
    impls = [("torch", lambda a, b: torch_fn(a, b, **params))]
    for algo in algos:
        impls.append((f"fastconv-{algo}", (lambda algo: lambda a, b: fc_fn(a, b, **params, algo=algo))(algo)))
    for impl, fn in impls:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        fwd = median_ms(lambda: fn(x.detach(), w.detach()), min_time)
        fwd_bwd = median_ms(forward_backward(fn, [x, w]), min_time)
        row = dict(kind="conv", name=name, impl=impl, forward_ms=fwd, forward_backward_ms=fwd_bwd,
                   forward_gflops=flops / fwd / 1e6, forward_gbs=traffic / fwd / 1e6)
        if impl == "torch" and not depthwise:
            torch.backends.cudnn.allow_tf32 = True
            row["forward_ms_tf32"] = median_ms(lambda: fn(x.detach(), w.detach()), min_time)
            torch.backends.cudnn.allow_tf32 = False
        if impl == "fastconv-im2col" and dims == 2:
            s, p = params["stride"], params["padding"]
            row["workspace_bytes"] = torch.ops.fastconv.conv2d_workspace_bytes(
                x, w, [s, s], [p, p], [1, 1], params["groups"], "im2col")
        rows.append(row)
    return rows


def run(quick):
    min_time = 0.05 if quick else 0.2
    torch.manual_seed(0)
    results = []
    for name, n, c, (h, w_), o, k, s, p, groups in (CONV2D[:6] + CONV2D[7:9] if quick else CONV2D):
        x = torch.randn(n, c, h, w_, device=DEVICE, requires_grad=True)
        w = torch.randn(o, c // groups, k, k, device=DEVICE, requires_grad=True)
        out_h, out_w = (h + 2 * p - k) // s + 1, (w_ + 2 * p - k) // s + 1
        flops = 2 * n * o * out_h * out_w * (c // groups) * k * k
        params = dict(stride=s, padding=p, groups=groups)
        results += bench_conv(name, 2, x, w, params, flops, min_time, depthwise=groups == c and groups > 1)
        print(f"done: {name}", flush=True)
    for name, n, c, length, o, k, s, p, groups in CONV1D:
        x = torch.randn(n, c, length, device=DEVICE, requires_grad=True)
        w = torch.randn(o, c // groups, k, device=DEVICE, requires_grad=True)
        out_l = (length + 2 * p - k) // s + 1
        flops = 2 * n * o * out_l * (c // groups) * k
        params = dict(stride=s, padding=p, groups=groups)
        results += bench_conv(name, 1, x, w, params, flops, min_time, depthwise=groups == c and groups > 1)
        print(f"done: {name}", flush=True)
    for name, shape, call in POOLS:
        x = torch.randn(*shape, device=DEVICE, requires_grad=True)
        out_numel = call(F, x.detach()).numel()
        traffic = (x.numel() + out_numel) * x.element_size()
        for impl, module in (("torch", F), ("fastconv", FC)):
            fwd = median_ms(lambda: call(module, x.detach()), min_time)
            fwd_bwd = median_ms(forward_backward(lambda t: call(module, t), [x]), min_time)
            results.append(dict(kind="pool", name=name, impl=impl, forward_ms=fwd, forward_backward_ms=fwd_bwd,
                                forward_gbs=traffic / fwd / 1e6))
        print(f"done: {name}", flush=True)
    return results


def markdown(results, device_name):
    torch_times = {(r["name"], "fwd"): r["forward_ms"] for r in results if r["impl"] == "torch"}
    torch_times.update({(r["name"], "fb"): r["forward_backward_ms"] for r in results if r["impl"] == "torch"})
    lines = [f"# fastconv vs torch on {device_name} (FP32, TF32 off unless noted)", "",
             "| layer | impl | fwd ms | fwd+bwd ms | fwd GFLOP/s | fwd % FP32 peak | fwd GB/s | fwd / torch | "
             "fwd+bwd / torch | torch TF32 fwd ms | im2col workspace MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        gflops = r.get("forward_gflops")
        lines.append("| {} | {} | {:.3f} | {:.3f} | {} | {} | {:.0f} | {:.2f} | {:.2f} | {} | {} |".format(
            r["name"], r["impl"], r["forward_ms"], r["forward_backward_ms"],
            f"{gflops:.0f}" if gflops else "", f"{100 * gflops / (PEAK_FP32_TFLOPS * 1e3):.1f}" if gflops else "",
            r["forward_gbs"], r["forward_ms"] / torch_times[(r["name"], "fwd")],
            r["forward_backward_ms"] / torch_times[(r["name"], "fb")],
            f"{r['forward_ms_tf32']:.3f}" if "forward_ms_tf32" in r else "",
            f"{r['workspace_bytes'] / 2**20:.1f}" if "workspace_bytes" in r else ""))
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="out/gpu-bench")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    device_name = torch.cuda.get_device_name()
    results = run(args.quick)
    meta = dict(device=device_name, torch=torch.__version__, cuda=torch.version.cuda, python=platform.python_version())
    with open(os.path.join(args.out, "bench.json"), "w") as f:
        json.dump(dict(meta=meta, results=results), f, indent=1)
    table = markdown(results, device_name)
    with open(os.path.join(args.out, "bench.md"), "w") as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    main()

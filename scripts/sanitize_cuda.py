"""Calls every CUDA kernel of fastconv once, forward and backward, on small tensors, for compute-sanitizer.

    compute-sanitizer --tool memcheck --error-exitcode 1 python3 scripts/sanitize_cuda.py
    compute-sanitizer --tool racecheck --error-exitcode 1 python3 scripts/sanitize_cuda.py --shared-memory-only

Set PYTORCH_NO_CUDA_MEMORY_CACHING=1 so that every tensor is its own allocation and an access past its
end is caught (scripts/gpu_check.sh does). --shared-memory-only runs just the kernels that use shared
memory and barriers (tiled direct convolution, grad_weight and grad_bias reductions), for racecheck.
Prints one line per call and "sanitize_cuda: ok" at the end.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fastconv.functional as FC  # noqa: E402

DEVICE = torch.device("cuda")


def run(name, fn, *tensors):
    """fn(*tensors) forward and backward; every floating-point input that requires grad gets one."""
    out = fn(*tensors)
    out = out[0] if isinstance(out, tuple) else out
    out.backward(torch.randn_like(out))
    torch.cuda.synchronize()
    print(f"{name}: ok", flush=True)


def leaf(*shape, dtype=torch.float32):
    return torch.randn(*shape, device=DEVICE, dtype=dtype, requires_grad=True)


def conv_calls(shared_memory_only):
    calls = []
    for dtype in (torch.float32, torch.float16):
        tag = str(dtype).replace("torch.", "")
        # direct, tiled: 8-channel blocks (dense), 1-channel blocks (depthwise), 1-D wide tiles
        calls.append((f"direct dense 3x3 {tag}", lambda x, w, b: FC.conv2d(x, w, b, padding=1, algo="direct"),
                      leaf(2, 16, 13, 37, dtype=dtype), leaf(16, 16, 3, 3, dtype=dtype), leaf(16, dtype=dtype)))
        calls.append((f"direct depthwise stride 2 {tag}",
                      lambda x, w, b: FC.conv2d(x, w, b, stride=2, padding=1, groups=8, algo="direct"),
                      leaf(2, 8, 15, 17, dtype=dtype), leaf(16, 1, 3, 3, dtype=dtype), leaf(16, dtype=dtype)))
        calls.append((f"direct 1x1 {tag}", lambda x, w: FC.conv2d(x, w, algo="direct"),
                      leaf(2, 8, 5, 6, dtype=dtype), leaf(8, 8, 1, 1, dtype=dtype)))
        calls.append((f"direct conv1d 7 taps dilated {tag}",
                      lambda x, w: FC.conv1d(x, w, stride=2, padding=3, dilation=2, groups=2, algo="direct"),
                      leaf(2, 4, 600, dtype=dtype), leaf(6, 2, 7, dtype=dtype)))
        if shared_memory_only:
            continue
        # direct, per-element fallback kernels (the patch does not fit in shared memory)
        calls.append((f"direct fallback {tag}", lambda x, w: FC.conv1d(x, w, dilation=6200, algo="direct"),
                      leaf(1, 2, 13000, dtype=dtype), leaf(2, 2, 3, dtype=dtype)))
        # im2col: whole-image chunks, row chunks, unit 1x1 (matmul, columns only for grad_weight)
        calls.append((f"im2col 3x3 {tag}", lambda x, w, b: FC.conv2d(x, w, b, stride=(2, 1), padding=1,
                                                                     dilation=(1, 2), groups=2, algo="im2col"),
                      leaf(3, 6, 11, 12, dtype=dtype), leaf(8, 3, 3, 3, dtype=dtype), leaf(8, dtype=dtype)))
        calls.append((f"im2col 1x1 {tag}", lambda x, w: FC.conv2d(x, w, algo="im2col"),
                      leaf(2, 6, 5, 5, dtype=dtype), leaf(4, 6, 1, 1, dtype=dtype)))
    return calls


def im2col_row_chunks():
    os.environ["FASTCONV_IM2COL_WORKSPACE_BYTES"] = "1"
    try:
        run("im2col row chunks", lambda x, w: FC.conv2d(x, w, stride=2, padding=2, algo="im2col"),
            leaf(2, 3, 12, 10), leaf(4, 3, 5, 5))
    finally:
        del os.environ["FASTCONV_IM2COL_WORKSPACE_BYTES"]


def pool_calls():
    calls = []
    for dtype in (torch.float32, torch.bfloat16):
        tag = str(dtype).replace("torch.", "")
        x = leaf(2, 3, 11, 13, dtype=dtype)
        calls += [
            (f"max_pool2d {tag}", lambda t: FC.max_pool2d(t, 3, 2, 1, 2, ceil_mode=True), x),
            (f"avg_pool2d {tag}", lambda t: FC.avg_pool2d(t, 3, 2, 1, True, False), x),
            (f"avg_pool2d divisor {tag}", lambda t: FC.avg_pool2d(t, 2, 1, 1, False, True, 3), x),
            (f"adaptive_avg_pool2d {tag}", lambda t: FC.adaptive_avg_pool2d(t, (4, 17)), x),
            (f"adaptive_max_pool2d {tag}", lambda t: FC.adaptive_max_pool2d(t, (5, 3)), x),
            (f"max_pool1d {tag}", lambda t: FC.max_pool1d(t, 4, 3, 2), leaf(2, 3, 40, dtype=dtype)),
        ]
    return calls


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shared-memory-only", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    for name, fn, *tensors in conv_calls(args.shared_memory_only):
        run(name, fn, *tensors)
    if not args.shared_memory_only:
        im2col_row_chunks()
        for name, fn, *tensors in pool_calls():
            run(name, fn, *tensors)
    print("sanitize_cuda: ok")


if __name__ == "__main__":
    main()

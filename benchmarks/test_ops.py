"""Per-operator micro benchmarks: `pytest benchmarks/ --benchmark-only` (options in conftest.py).

Each case is timed once for torch and once per fastconv algorithm; pytest-benchmark groups the sides
of a case together so its table reads as a comparison.
"""
import pytest
import torch

from benchmarks import cases

pytest.importorskip("pytest_benchmark", reason="pytest-benchmark is not installed")


def _synchronised(fn, device):
    if device.type != "cuda":
        return fn

    def call():
        out = fn()
        torch.cuda.synchronize(device)
        return out
    return call


def test_operator(benchmark, bench_case, bench_device):
    group, spec, pass_, batch, side = bench_case
    torch.manual_seed(0)
    try:
        prepared = spec.prepare(batch, bench_device, torch.float32, pass_)
    except cases.CaseUnavailable as exc:
        pytest.skip(str(exc))
    fn = prepared.torch_fn if side == "torch" else prepared.fastconv_fns[side]
    try:
        fn()  # first call outside the timing: lazy initialisation, and a clear skip if unsupported
    except NotImplementedError as exc:
        pytest.skip(f"{spec.op if hasattr(spec, 'op') else spec.name} not available in this build: "
                    f"{str(exc).splitlines()[0]}")
    benchmark.group = f"{group.key} | {spec.name} | N={batch} | {pass_}"
    benchmark.extra_info.update(side=side, shapes=spec.shape_label(batch), flops=prepared.flops,
                                bytes=prepared.bytes, workspace_bytes=prepared.workspace.get(side),
                                threads=torch.get_num_threads())
    benchmark(_synchronised(fn, bench_device))

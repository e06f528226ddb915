"""pytest-benchmark options for the per-operator benchmarks (`pytest benchmarks/ --benchmark-only`).

    --bench-device cuda     run on the GPU (FP32 with TF32 off; each call synchronises CUDA)
    --bench-full            every layer of every group (default: the --quick subset of run.py)
    --bench-train-batch N   the training batch (default 8)

These tests time each side on its own, one after the other; for interleaved side-by-side numbers and
the report, use benchmarks/run.py.
"""
import pytest
import torch

from benchmarks import cases


def pytest_addoption(parser):
    group = parser.getgroup("fastconv benchmarks")
    group.addoption("--bench-device", default="cpu", choices=("cpu", "cuda"), help="device for benchmarks/")
    group.addoption("--bench-full", action="store_true", help="every layer, not the quick subset")
    group.addoption("--bench-train-batch", type=int, default=8, help="training batch size")


def _case_id(text):
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text).strip("_")


def pytest_generate_tests(metafunc):
    if "bench_case" not in metafunc.fixturenames:
        return
    config = metafunc.config
    train_batch = config.getoption("--bench-train-batch")
    params, ids = [], []
    for group, specs in cases.groups_for("full" if config.getoption("--bench-full") else "quick"):
        if group.passes != cases.OP_PASSES:  # whole models are timed by run.py only
            continue
        for spec in specs:
            sides = ["torch"] + (list(cases.CONV_ALGOS) if spec.kind == "conv" else ["fastconv"])
            for pass_ in group.passes:
                batches = (1, train_batch) if pass_ == cases.FORWARD else (train_batch,)
                for batch in batches:
                    for side in sides:
                        params.append((group, spec, pass_, batch, side))
                        ids.append(_case_id(f"{group.key}-{spec.name}-N{batch}-{pass_}-{side}"))
    metafunc.parametrize("bench_case", params, ids=ids)


@pytest.fixture
def bench_device(request):
    device = torch.device(request.config.getoption("--bench-device"))
    if device.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("--bench-device cuda: no CUDA device available")
    return device


@pytest.fixture(autouse=True)
def _fp32_without_tf32():
    """FP32 means FP32: TF32 off for cuDNN and cuBLAS while a benchmark runs."""
    with cases.tf32_mode(False):
        yield

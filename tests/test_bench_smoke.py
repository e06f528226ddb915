"""Keeps the benchmark runner working: benchmarks/run.py --smoke on two tiny cases (no timing checks)."""
import json
import math
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from benchmarks import cases, machine, report  # noqa: E402

REQUIRED_TIMED_FIELDS = (
    "op", "params", "device", "dtype", "pass", "algo", "torch_median_s", "fastconv_median_s", "speedup",
    "gflops", "pct_peak", "workspace_bytes", "machine", "torch_version", "date",
)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-smoke")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--smoke", "--strict", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, f"runner failed:\n{proc.stdout}\n{proc.stderr}"
    return out, json.loads((out / "results.json").read_text())


def test_smoke_run_writes_a_record_per_case_and_algorithm(smoke_run):
    _, results = smoke_run
    meta, records = results["meta"], results["records"]
    assert meta["mode"] == "smoke" and meta["machine"] and meta["torch"] and meta["date"]
    conv = [r for r in records if r["kind"] == "conv"]
    assert {(r["pass"], r["batch"]) for r in conv} == {("forward", 1), ("forward", 8), ("forward+backward", 8)}
    assert {r["algo"] for r in conv} == set(cases.CONV_ALGOS)
    for r in conv:
        assert r["status"] == "ok", r
        for key in REQUIRED_TIMED_FIELDS:
            assert key in r, key
        assert math.isclose(r["speedup"], r["torch_median_s"] / r["fastconv_median_s"], rel_tol=1e-9)
        assert math.isclose(r["gflops"], r["flops"] / r["fastconv_median_s"] / 1e9, rel_tol=1e-9)
        assert r["rel_err"] <= 1e-3
    pools = [r for r in records if r["kind"] == "pool"]
    assert pools
    for r in pools:
        # Pooling kernels may not be in every build: then the row says so instead of failing.
        assert r["status"] == "ok" or (r["status"] == "skipped" and "pool" in r["note"]), r
        if r["status"] == "ok":
            assert r["gbps"] > 0 and r["pct_bandwidth"] > 0


def test_smoke_run_writes_the_report(smoke_run):
    out, _ = smoke_run
    text = (out / "report.md").read_text()
    assert "SMOKE RUN" in text
    assert "## Summary" in text and "Geometric mean speed-up" in text
    assert "| torch |" in text
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib is not installed" in text
    else:
        assert (out / "speedup.png").stat().st_size > 0


def test_flop_and_byte_counts():
    layer1 = cases.conv2d("layer1 3x3", 64, 64, 3, 56, 1, 1)
    assert layer1.output_size() == (56, 56)
    assert layer1.forward_flops(1) == 2 * 64 * 56 * 56 * 64 * 9
    depthwise = cases.depthwise3x3("dw", 32, 112, 2)
    assert depthwise.forward_flops(2) == 2 * 2 * 32 * 56 * 56 * 9
    dilated = cases.conv1d("dilated", 8, 8, 3, 100, padding=4, dilation=4)
    assert dilated.output_size() == (100,)
    prepared = dilated.prepare(2, torch.device("cpu"), torch.float32, cases.FORWARD_BACKWARD)
    assert prepared.flops == 3 * dilated.forward_flops(2)  # input and weight gradients
    stem = cases.conv2d("stem", 3, 4, 7, 16, 2, 3, input_grad=False)
    prepared = stem.prepare(1, torch.device("cpu"), torch.float32, cases.FORWARD_BACKWARD)
    assert prepared.flops == 2 * stem.forward_flops(1)  # no input gradient for a first layer


def test_geomean_and_summary():
    assert report.geomean([2.0, 0.5]) == pytest.approx(1.0)
    assert report.geomean([]) is None
    rows = [
        {"group": "g", "dtype": "float32", "case": "c", "batch": 1, "pass": "forward", "algo": algo, "status": "ok",
         "speedup": s}
        for algo, s in (("im2col", 2.0), ("direct", 0.5), ("auto", 2.0))
    ]
    cell = report.summarize(rows)[("g", "float32")]["n1"]
    assert cell["auto"] == pytest.approx(2.0) and cell["best"] == pytest.approx(2.0)


def test_precisions_and_tf32_switch():
    conv, pool = cases.RESNET18_LAYERS[0], cases.POOLING_LAYERS[0]
    assert [p[0] for p in cases.precisions(torch.device("cpu"), conv)] == ["float32"]
    assert [p[0] for p in cases.precisions(torch.device("cuda"), conv)] == ["float32", "tf32", "bfloat16"]
    assert [p[0] for p in cases.precisions(torch.device("cuda"), pool)] == ["float32", "bfloat16"]
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    with cases.tf32_mode(True):
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    with cases.tf32_mode(False):
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before


def test_gpu_reference_from_device_properties(monkeypatch):
    # An H100 SXM's properties: 132 SMs at 1.98 GHz, HBM3 at 2.619 GHz on a 5120-bit bus.
    props = types.SimpleNamespace(name="NVIDIA H100 80GB HBM3", major=9, minor=0, multi_processor_count=132,
                                  clock_rate=1_980_000, memory_clock_rate=2_619_000, memory_bus_width=5120,
                                  total_memory=80 * 2**30)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    ref = machine.gpu_reference(torch.device("cuda"))
    assert ref["peak_gflops"]["float32"] == pytest.approx(66_908, rel=1e-3)  # the datasheet's 67 TFLOPS
    assert ref["bandwidth_gbps"] == pytest.approx(3352, rel=1e-3)  # the datasheet's 3.35 TB/s
    assert ref["peak_gflops"]["bfloat16"] == 2 * ref["peak_gflops"]["tf32"]


def test_fma_peak_measurement_runs():
    peak = machine.measure_cpu_peak(1, seconds=0.02)
    if peak is None:
        pytest.skip("no C compiler: the report falls back to the derived peak")
    assert peak["method"] == "measured" and peak["gflops"] > 0


def test_interleaved_timing_with_and_without_first_call_times():
    from benchmarks.timing import PLANS, time_interleaved

    calls = {"a": 0, "b": 0}

    def side(name):
        def call():
            calls[name] += 1
        return call

    sides = {"a": side("a"), "b": side("b")}
    plan = PLANS["smoke"]
    for hints in (None, {"a": 1e-6, "b": 1e-6}):
        results = time_interleaved(sides, torch.device("cpu"), plan, hints)
        for result in results.values():
            assert result.skipped is None
            assert len(result.samples_s) == plan.rounds and result.median_s > 0
    assert calls["a"] > plan.rounds and calls["b"] > plan.rounds


def test_report_renders_gpu_runs(smoke_run, tmp_path):
    """The CUDA-only parts of the report (GPU row, precisions) render, from the smoke run's records."""
    _, results = smoke_run
    meta = dict(results["meta"], device="cuda", gpu_name="NVIDIA H100 80GB HBM3", cuda="13.0", cudnn=91000,
                cudnn_benchmark=False,
                gpu={"name": "NVIDIA H100 80GB HBM3", "arch": "sm_90", "sms": 132, "memory_gib": 79.6})
    records = []
    for dtype in ("float32", "tf32", "bfloat16"):
        records += [dict(r, device="cuda", dtype=dtype) for r in results["records"]]
    written = report.write_all(tmp_path, meta, records, plots=False)
    text = written[0].read_text()
    assert "report: GPU" in text and "sm_90" in text and "cuDNN autotuning" in text
    assert "| precision |" in text and "tf32" in text

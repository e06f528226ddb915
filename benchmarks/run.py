"""fastconv against torch.nn, per layer and per model: writes report.md, results.json and plots.

    python benchmarks/run.py                       # full CPU run -> out/bench
    python benchmarks/run.py --quick --out DIR     # a subset with shorter sampling (minutes)
    python benchmarks/run.py --device cuda         # FP32 (TF32 off), TF32 and bfloat16 rows on the GPU
    python benchmarks/run.py --list                # the cases, without running them

Both sides of every comparison run in this process on the same inputs, sampled in turn (see
benchmarks/timing.py); the report quotes medians and torch time / fastconv time.
"""
import argparse
import contextlib
import os
import re
import shlex
import sys
import time
from pathlib import Path

# Run as a script, this file's folder is on sys.path but the repository root is not. Append it (not
# prepend) so an installed fastconv still wins over an unbuilt source tree.
_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.append(str(_ROOT))

import torch  # noqa: E402

from benchmarks import cases, machine, report  # noqa: E402
from benchmarks.timing import make_clock, plan_for, time_interleaved  # noqa: E402

DEFAULT_TRAIN_BATCH = 8

# Largest acceptable max|fastconv - torch| / max|torch| per precision (models get 5x: errors compound).
TOLERANCE = {"float32": 1e-3, "tf32": 2e-2, "bfloat16": 5e-2}
MODEL_TOLERANCE_FACTOR = 5


# ----------------------------------------------------------------------------------------------
# Reference rates
# ----------------------------------------------------------------------------------------------


def reference_rates(device, args):
    """Peak GFLOP/s per precision and memory bandwidth to express results as fractions of.

    CPU: the larger of the measured FMA loop and the derived peak. A loop that shares its cores with
    other work reads low, and the derived peak assumes the nominal clock (turbo runs faster); the
    larger one is the safer denominator, and the report names it and shows the other."""
    if device.type == "cuda":
        gpu = machine.gpu_reference(device)
        return {"peak_gflops": gpu["peak_gflops"], "peak_detail": gpu["peak_detail"], "peak_method": "derived",
                "bandwidth_gbps": gpu["bandwidth_gbps"], "bandwidth_detail": gpu["bandwidth_detail"], "gpu": gpu}
    threads = max(1, min(torch.get_num_threads(), os.cpu_count() or 1))
    derived = machine.derived_cpu_peak(threads)
    measured = None if (args.smoke or args.peak_gflops) else machine.measure_cpu_peak(threads)
    if args.peak_gflops:
        peak = {"gflops": args.peak_gflops, "method": "given", "detail": "given on the command line (--peak-gflops)"}
    else:
        candidates = [p for p in (measured, derived) if p]
        peak = max(candidates, key=lambda p: p["gflops"]) if candidates else None
    mib = 32 if args.smoke else 256
    rates = {
        "peak_gflops": {"float32": peak["gflops"]} if peak else {},
        "peak_detail": peak["detail"] if peak else "unknown: no compiler and no clock in /proc/cpuinfo",
        "peak_method": peak["method"] if peak else None,
        "bandwidth_gbps": machine.measure_copy_bandwidth(device, mib=mib),
        "bandwidth_detail": f"measured: copy of a {mib} MiB tensor with torch (read + write), best of 5",
    }
    for source in (measured, derived):
        if source and source is not peak:
            rates[f"{source['method']}_peak_gflops"] = source["gflops"]
            rates[f"{source['method']}_peak_detail"] = source["detail"]
    return rates


# ----------------------------------------------------------------------------------------------
# One case
# ----------------------------------------------------------------------------------------------


def _unavailable_note(exc, spec, device):
    """One readable sentence for an operator this build cannot run."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    match = re.search(r"Could not run '([\w:.]+)' with arguments from the '(\w+)' backend", text)
    if match:
        text = f"{match.group(1)} has no {match.group(2)} kernel in this build"
    if spec.kind == "pool":
        return f"pooling kernels not available in this build ({text})"
    if spec.kind == "model":
        return f"converted model cannot run in this build ({text})"
    return text[:200]


# A RuntimeError with one of these says the build does not support the case (a dtype, a device): the row
# is skipped. Any other RuntimeError is a failure, reported as an error.
_UNSUPPORTED = re.compile(r"not supported|unsupported|does not support|no CUDA kernels|not implemented", re.I)


def _failure(exc, spec, device):
    """(status, note) for an exception from building or first running a case's fastconv side.

    Missing kernels and unsupported dtypes or devices skip the row; anything else is an error (the run
    goes on, and the report lists it)."""
    if isinstance(exc, cases.CaseUnavailable):
        return "skipped", str(exc)
    note = _unavailable_note(exc, spec, device)
    if isinstance(exc, NotImplementedError):
        return "skipped", note
    if isinstance(exc, RuntimeError) and _UNSUPPORTED.search(str(exc)):
        return "skipped", note
    return "error", f"{type(exc).__name__}: {note}"


class TorchFailed(Exception):
    """The reference side raised: nothing to compare with."""


def _timed_call(fn, clock):
    start = clock()
    out = fn()
    return out, clock() - start


def _first_calls(prepared, base, spec, device, clock, tolerance):
    """Runs every side once (lazy initialisation) and checks fastconv against torch.

    Returns the sides that can be timed, a record per fastconv side, and each first call's seconds."""
    try:
        torch_out, torch_first = _timed_call(prepared.torch_fn, clock)
    except Exception as exc:
        raise TorchFailed(f"torch itself failed on this case: {type(exc).__name__}: {exc}") from exc
    sides, records, first_call_s = {"torch": prepared.torch_fn}, {}, {"torch": torch_first}
    for side, fn in prepared.fastconv_fns.items():
        record = {**base, "algo": side if spec.kind != "pool" else None, "status": "ok", "note": None}
        try:
            out, first_call_s[side] = _timed_call(fn, clock)
        except Exception as exc:  # one broken case must not end a long run: the report lists it
            status, note = _failure(exc, spec, device)
            records[side] = {**record, "status": status, "note": note}
            continue
        max_abs, rel = prepared.check(torch_out, out)
        record.update(max_abs_diff=max_abs, rel_err=rel)
        if not rel <= tolerance:
            record.update(status="mismatch",
                          note=f"output differs from torch: max|diff| / max|torch| = {rel:.2e} > {tolerance:g}")
        records[side] = record
        sides[side] = fn
    return sides, records, first_call_s


def _add_timings(record, prepared, torch_time, fast, rates):
    """Fills a record with the medians, the speed-up and the rates derived from them."""
    record.update(
        torch_median_s=torch_time.median_s, fastconv_median_s=fast.median_s,
        speedup=torch_time.median_s / fast.median_s,
        rounds=len(fast.samples_s), number_torch=torch_time.number, number_fastconv=fast.number,
        torch_samples_s=list(torch_time.samples_s), fastconv_samples_s=list(fast.samples_s),
    )
    peak = rates["peak_gflops"].get(record["dtype"])
    bandwidth = rates.get("bandwidth_gbps")
    if prepared.flops:
        record.update(flops=prepared.flops, gflops=prepared.flops / fast.median_s / 1e9,
                      gflops_torch=prepared.flops / torch_time.median_s / 1e9)
        if peak:
            record.update(pct_peak=100 * record["gflops"] / peak, pct_peak_torch=100 * record["gflops_torch"] / peak)
    if prepared.bytes:
        record.update(bytes=prepared.bytes, gbps=prepared.bytes / fast.median_s / 1e9,
                      gbps_torch=prepared.bytes / torch_time.median_s / 1e9)
        if bandwidth:
            record.update(pct_bandwidth=100 * record["gbps"] / bandwidth,
                          pct_bandwidth_torch=100 * record["gbps_torch"] / bandwidth)


def run_case(group, spec, batch, pass_, precision, device, plan, rates, info):
    """Times one (layer, batch, pass, precision) and returns one record per fastconv algorithm."""
    label, dtype, allow_tf32 = precision
    base = {
        "group": group.key, "group_title": group.title, "case": spec.name, "kind": spec.kind,
        "op": getattr(spec, "op", "model"), "shapes": spec.shape_label(batch), "params": spec.params(batch),
        "batch": batch, "device": device.type, "dtype": label, "pass": pass_,
        "depthwise": spec.depthwise, "machine": info["machine"], "torch_version": info["torch"],
        "date": info["date"],
    }
    algos = list(cases.CONV_ALGOS) if spec.kind == "conv" else ["auto"] if spec.kind == "model" else [None]
    tolerance = TOLERANCE[label] * (MODEL_TOLERANCE_FACTOR if spec.kind == "model" else 1)
    clock = make_clock(device)
    started = clock()
    with cases.tf32_mode(allow_tf32) if device.type == "cuda" else contextlib.nullcontext():
        try:
            prepared = spec.prepare(batch, device, dtype, pass_)
            sides, records, first_call_s = _first_calls(prepared, base, spec, device, clock, tolerance)
        except TorchFailed as exc:
            return [{**base, "algo": a, "status": "error", "note": str(exc)[:300]} for a in algos]
        except Exception as exc:  # the case cannot be built in this build or environment
            status, note = _failure(exc, spec, device)
            return [{**base, "algo": a, "status": status, "note": note} for a in algos]
        checked = clock()
        timings = time_interleaved(sides, device, plan, first_call_s) if len(sides) > 1 else {}
    # Where the case's wall time went: inputs and first calls with their checks, then timing.
    wall = {"setup_and_check_s": checked - started, "timing_s": clock() - checked}

    out = []
    for side, record in records.items():
        if record["status"] in ("ok", "mismatch"):
            record["workspace_bytes"] = prepared.workspace.get(side)
            record["wall_s"] = wall
            if prepared.notes:
                record["note"] = "; ".join(filter(None, [record["note"], *prepared.notes]))
            torch_time, fast = timings["torch"], timings[side]
            if torch_time.skipped or fast.skipped:
                record.update(status="skipped", note=torch_time.skipped or fast.skipped)
                if torch_time.median_s is not None:
                    record["torch_median_s"] = torch_time.median_s
            else:
                _add_timings(record, prepared, torch_time, fast, rates)
        out.append(record)
    return out


def _batches(pass_, train_batch):
    """Forward at batch 1 (inference) and at the training batch; backward at the training batch only."""
    if pass_ in (cases.FORWARD,):
        return (1, train_batch) if train_batch != 1 else (1,)
    if pass_ == cases.INFERENCE:
        return (1,)
    return (train_batch,)


def _progress_line(records):
    first = records[0]
    head = f"  {first['case']:<38s} N={first['batch']:<3d} {first['pass']:<17s} {first['dtype']:<9s}"
    ok = [r for r in records if "speedup" in r]
    if ok:
        parts = [f"torch {1e3 * ok[0]['torch_median_s']:.3f} ms"]
        for r in ok:
            flag = "" if r["status"] == "ok" else " MISMATCH"
            parts.append(f"{r['algo'] or 'fastconv'} {1e3 * r['fastconv_median_s']:.3f} ms ({r['speedup']:.2f}x){flag}")
        return head + " | ".join(parts)
    return head + "skipped: " + (first.get("note") or first["status"])


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="a subset of layers with shorter sampling (minutes)")
    parser.add_argument("--smoke", action="store_true", help="two tiny cases with minimal sampling (CI)")
    parser.add_argument("--out", default="out/bench", help="folder for report.md, results.json and plots")
    parser.add_argument("--groups", default="", help=f"comma-separated subset of: {', '.join(g.key for g in cases.GROUPS)}")
    parser.add_argument("--filter", default="", help="only cases whose name contains this text")
    parser.add_argument("--train-batch", type=int, default=DEFAULT_TRAIN_BATCH, help="the training batch size")
    parser.add_argument("--precision", default="",
                        help="comma-separated subset of float32, tf32, bfloat16 (default: float32 on CPU, all on CUDA)")
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="let cuDNN autotune its algorithms (torch.backends.cudnn.benchmark) for the torch side")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--peak-gflops", type=float, default=0.0, help="use this FP32 peak instead of measuring")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 if a case errors or mismatches")
    parser.add_argument("--list", action="store_true", help="print the cases and exit")
    return parser.parse_args(argv)


def selected_cases(args):
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    wanted = {g.strip() for g in args.groups.split(",") if g.strip()}
    unknown = wanted - {g.key for g in cases.GROUPS}
    if unknown:
        raise SystemExit(f"unknown group(s): {', '.join(sorted(unknown))}")
    selection = []
    for group, specs in cases.groups_for(mode):
        if wanted and group.key not in wanted:
            continue
        specs = [s for s in specs if args.filter.lower() in s.name.lower()]
        if specs:
            selection.append((group, specs))
    return mode, selection


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    mode, selection = selected_cases(args)
    if args.list:
        for group, specs in selection:
            print(f"{group.key}: {group.title}")
            for spec in specs:
                print(f"    {spec.name:<42s} {spec.shape_label(1)}")
        return 0
    device = torch.device(args.device)
    unknown = {p.strip() for p in args.precision.split(",") if p.strip()} - set(cases.PRECISIONS)
    if unknown:
        raise SystemExit(f"unknown precision(s): {', '.join(sorted(unknown))}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available to this torch")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = args.cudnn_benchmark
    torch.manual_seed(0)
    started = time.perf_counter()
    allocator = machine.steady_malloc() if device.type == "cpu" else None
    info = machine.describe(device)
    info["allocator"] = allocator
    info["machine"] = machine.machine_label(info)
    print(f"fastconv benchmark ({mode}) on {info['machine']}; torch {info['torch']}", flush=True)
    rates = reference_rates(device, args)
    print(f"peak: {rates['peak_detail']}: {rates['peak_gflops']}", flush=True)
    monitor = machine.LoadMonitor().start()
    plan = plan_for(mode, device)
    wanted_precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    records = []
    for group, specs in selection:
        print(f"{group.title}", flush=True)
        for spec in specs:
            for pass_ in group.passes:
                for batch in _batches(pass_, args.train_batch):
                    for precision in cases.precisions(device, spec, wanted_precisions):
                        rows = run_case(group, spec, batch, pass_, precision, device, plan, rates, info)
                        print(_progress_line(rows), flush=True)
                        records.extend(rows)
    meta = {
        **info, "mode": mode, "train_batch": args.train_batch, "timing_plan": vars(plan),
        "reference": {k: v for k, v in rates.items() if k != "gpu"}, "gpu": rates.get("gpu"),
        "load": monitor.stop(), "duration_s": time.perf_counter() - started,
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark) if device.type == "cuda" else None,
        "groups": {group.key: {"title": group.title, "description": group.description} for group, _ in selection},
        "command": shlex.join(["python", "benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)]),
    }
    out_dir = Path(args.out)
    written = report.write_all(out_dir, meta, records, plots=not args.no_plots)
    print(f"wrote {', '.join(str(p) for p in written)} in {meta['duration_s']:.0f} s", flush=True)
    if args.strict and any(r["status"] in ("error", "mismatch") for r in records):
        print("--strict: some cases errored or disagreed with torch (see the report)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

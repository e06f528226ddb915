"""Turns benchmark records into results.json, report.md and plots (matplotlib, when installed)."""
import json
import math
from collections import OrderedDict, defaultdict
from pathlib import Path

TIMED = ("ok", "mismatch")  # statuses that carry timings
NOISY_SHARE = 0.10  # other processes above this share of the CPU time: warn that timings are noisy


# ----------------------------------------------------------------------------------------------
# Numbers
# ----------------------------------------------------------------------------------------------


def geomean(values):
    values = [v for v in values if v and v > 0 and math.isfinite(v)]
    if not values:
        return None
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _impl(record):
    """How a fastconv row is named in tables: its algorithm, or "fastconv" where there is no choice."""
    if record["kind"] == "model":
        return "fastconv.convert"
    if record["algo"] is None:
        return "fastconv"
    return record["algo"]


def _column_key(record):
    """The summary column a record belongs to: (batch kind, pass)."""
    if record["pass"] in ("forward", "inference") and record["batch"] == 1:
        return "n1"
    if record["pass"] == "forward":
        return "nt_forward"
    return "nt_train"


def _summary_columns(meta):
    n = meta["train_batch"]
    return OrderedDict([
        ("n1", "N=1 forward / model inference"),
        ("nt_forward", f"N={n} forward"),
        ("nt_train", f"N={n} forward+backward / model train step"),
    ])


def _is_default_algo(record):
    """Rows that show what a user gets without choosing: auto, or the only fastconv implementation."""
    return record["algo"] in ("auto", None)


def summarize(records):
    """{(group, dtype): {column: {"auto": geomean, "best": geomean of per-case best, "n": rows}}}."""
    by_case = defaultdict(list)
    for r in records:
        if r["status"] == "ok":
            by_case[(r["group"], r["dtype"], r["case"], r["batch"], r["pass"])].append(r)
    cells = defaultdict(lambda: defaultdict(lambda: {"auto": [], "best": []}))
    for (group, dtype, *_), rows in by_case.items():
        default = [r for r in rows if _is_default_algo(r)]
        if not default:
            continue
        cell = cells[(group, dtype)][_column_key(rows[0])]
        cell["auto"].append(default[0]["speedup"])
        cell["best"].append(max(r["speedup"] for r in rows))
    return {key: {col: {"auto": geomean(c["auto"]), "best": geomean(c["best"]), "n": len(c["auto"])}
                  for col, c in cols.items()} for key, cols in cells.items()}


# ----------------------------------------------------------------------------------------------
# Formatting helpers
# ----------------------------------------------------------------------------------------------


def _fmt_bytes(n):
    if n is None:
        return "?"
    if n == 0:
        return "0"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _fmt_ms(seconds):
    if seconds is None:
        return ""
    ms = seconds * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def _fmt(value, spec):
    return "" if value is None else format(value, spec)


def _fmt_speedup(value):
    return "" if value is None else f"{value:.2f}x"


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Markdown
# ----------------------------------------------------------------------------------------------


def _header(meta, records):
    mode = meta["mode"]
    device = "GPU" if meta["device"] == "cuda" else "CPU"
    title = f"# fastconv benchmark report: {device}, {mode} run"
    out = [title, ""]
    if mode != "full":
        out += [f"> **{mode.upper()} RUN** (`--{mode}`): a subset of the layers with short sampling. It shows "
                "the suite works and gives a first look; the full report (`python benchmarks/run.py`) is the one "
                "to quote.", ""]
    share = (meta.get("load") or {}).get("other_processes_cpu_share")
    if share is not None and share > NOISY_SHARE:
        out += [f"> **Noisy machine:** other processes used {100 * share:.0f}% of the machine's CPU time during "
                "this run. Both sides were sampled in turn, so the speed-ups are fairer than the absolute times, "
                "but all numbers are noisier than on a quiet machine. Multi-threaded kernels suffer most: a thread "
                "that loses its core stalls the others at every barrier; on a shared machine, `--threads 1` gives "
                "steadier numbers.", ""]
    ref = meta["reference"]
    over = [r for r in records if max(r.get("pct_peak") or 0, r.get("pct_peak_torch") or 0) > 100]
    if over:
        out += [f"> **Peak too low:** {len(over)} rows run faster than the peak used here ({ref['peak_detail']}); "
                "the cores ran above that clock, or with more FMA throughput than assumed. Read % of peak as "
                "relative only.", ""]
    build = meta.get("fastconv_build") or {}
    software = (f"torch {meta['torch']}, torchvision {meta.get('torchvision') or 'not installed'}, "
                f"Python {meta['python']}, fastconv {meta['fastconv']}"
                + (f" (git {meta['git_commit']})" if meta.get("git_commit") else "")
                + f", kernels built for {build.get('cpu_isa') or '?'}" + (" + CUDA" if build.get("cuda") else ""))
    rows = [("date", meta["date"]), ("machine", meta["machine"])]
    if meta["device"] == "cpu" and meta.get("memory_gib"):
        rows.append(("memory", f"{meta['memory_gib']:.0f} GiB, {meta['os']}"))
    if meta["device"] == "cuda" and meta.get("gpu"):
        gpu = meta["gpu"]
        rows.append(("GPU", f"{gpu['name']} ({gpu['arch']}, {gpu['sms']} SMs, {gpu['memory_gib']:.0f} GiB), "
                            f"cuDNN {meta.get('cudnn')}"))
    rows.append(("software", software))
    if meta["device"] == "cuda":
        rows.append(("cuDNN autotuning", "on (`--cudnn-benchmark`)" if meta.get("cudnn_benchmark")
                     else "off (torch's default; `--cudnn-benchmark` turns it on)"))
    peaks = ", ".join(f"{k} {v:,.0f} GFLOP/s" for k, v in ref["peak_gflops"].items()) or "unknown"
    rows.append(("peak", f"{peaks} ({ref['peak_detail']})"))
    for method in ("measured", "derived"):
        if ref.get(f"{method}_peak_gflops") and ref.get("peak_method") != method:
            rows.append((f"peak, {method}", f"{ref[f'{method}_peak_gflops']:,.0f} GFLOP/s "
                                            f"({ref[f'{method}_peak_detail']}), not used"))
    rows.append(("memory bandwidth", f"{ref['bandwidth_gbps']:,.1f} GB/s ({ref['bandwidth_detail']})"))
    if meta.get("allocator"):
        rows.append(("allocator", meta["allocator"]))
    load = meta.get("load") or {}
    load_text = []
    if load.get("load_average_at_start") is not None:
        load_text.append(f"load average {load['load_average_at_start']:.2f} at start")
    if share is not None:
        load_text.append(f"other processes used {100 * share:.0f}% of the CPU time during the run")
    if load_text:
        rows.append(("load", "; ".join(load_text)))
    rows.append(("run", f"`{meta['command']}`, {meta['duration_s'] / 60:.1f} min, training batch "
                        f"{meta['train_batch']}, {meta['timing_plan']['rounds']} rounds per case at most"))
    out += [_table(["", ""], rows), ""]
    return out


def _summary(meta, records):
    summary = summarize(records)
    columns = _summary_columns(meta)
    group_titles = OrderedDict((r["group"], r["group_title"]) for r in records)
    dtypes = list(OrderedDict.fromkeys(r["dtype"] for r in records))
    rows = []
    for group, title in group_titles.items():
        for dtype in dtypes:
            cols = summary.get((group, dtype))
            if not cols:
                continue
            row = [title] + ([dtype] if len(dtypes) > 1 else [])
            for col in columns:
                cell = cols.get(col)
                if not cell or cell["auto"] is None:
                    row.append("")
                    continue
                text = f"**{cell['auto']:.2f}x**"
                if cell["best"] and cell["best"] > cell["auto"] * 1.005:
                    text += f" (best algo {cell['best']:.2f}x)"
                row.append(text)
            rows.append(row)
    out = ["## Summary", "",
           "Geometric mean over layers of the speed-up (torch time / fastconv time; above 1 means fastconv is "
           "faster) with `algo=\"auto\"` (models: `fastconv.convert`). In brackets: with the fastest fastconv "
           "algorithm picked per layer, where that is better.", ""]
    if rows:
        header = ["group"] + (["precision"] if len(dtypes) > 1 else []) + list(columns.values())
        out += [_table(header, rows), ""]
    else:
        out += ["No case produced a timing.", ""]
    skipped = OrderedDict()
    for r in records:
        if r["status"] == "skipped" and not any(x["group"] == r["group"] and x["status"] in TIMED for x in records):
            skipped.setdefault(r["group_title"], r["note"])
    for title, note in skipped.items():
        out += [f"- **{title}**: not measured: {note}."]
    if skipped:
        out.append("")
    return out


def _method(meta):
    plan = meta["timing_plan"]
    device = meta["device"]
    sync = ("every sample synchronises CUDA before reading the clock; FP32 rows run with TF32 off for both cuDNN "
            "and cuBLAS (`torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False`), TF32 "
            "rows with both on, bfloat16 rows on bfloat16 tensors. " if device == "cuda" else "")
    return [
        "## Method", "",
        f"- Both sides run in one process on the same inputs. Each sample is a `torch.utils.benchmark.Timer` "
        f"measurement of about {1e3 * plan['sample_s']:.0f} ms (calls batched to reach it) with the torch thread "
        f"count of the run; the sides are sampled in turn, in an order that rotates every round, for up to "
        f"{plan['rounds']} rounds (at least {plan['min_rounds']}; fewer when a case is slow). Times are medians "
        f"over rounds. {sync}",
        "- Speed-up = torch median / fastconv median. Geometric means leave out skipped rows and rows whose "
        "output disagreed with torch.",
        "- Before timing, every fastconv output (and gradient) is compared with torch's; a row whose "
        "max|difference| / max|torch| exceeds the tolerance (FP32 1e-3, TF32 2e-2, bfloat16 5e-2; models 5x) is "
        "marked MISMATCH.",
        "- GFLOP/s: convolution FLOPs = 2·N·Cout·(output pixels)·(Cin/groups)·(kernel taps) per forward; "
        "forward+backward counts 3x that (input and weight gradients), or 2x for a first layer, whose input needs "
        "no gradient. Models count convolution FLOPs only (hooks on every Conv layer), a train step as 3x the "
        "forward. % peak = GFLOP/s / the peak above.",
        "- GB/s (pooling, depthwise): minimum traffic / time. Forward: input read + weight read + output "
        "written (no max-pooling indices: the forward runs without gradients). Backward: grad_output, input "
        "and weight read, grad_input and grad_weight written (max pooling: the forward's int64 indices "
        "written and read again). "
        "% BW = GB/s / the memory bandwidth above.",
        "- Workspace: scratch bytes fastconv allocates for the forward, from `torch.ops.fastconv."
        "conv2d_workspace_bytes` (the im2col column buffer; conv1d is asked as conv2d with a height of 1).",
        "- Training rows: forward then `torch.autograd.grad` of the output (or of the loss, for models, followed "
        "by an SGD step).",
        "",
    ]


def _metric_columns(group_records):
    """Which rate columns a group's table shows."""
    kinds = {r["kind"] for r in group_records}
    depthwise = any(r.get("depthwise") for r in group_records)
    columns = []
    if kinds & {"conv", "model"}:
        columns += ["gflops", "pct_peak"]
    if "pool" in kinds or depthwise:
        columns += ["gbps", "pct_bandwidth"]
    if "conv" in kinds:
        columns.append("workspace")
    return columns


_METRIC_HEADERS = {"gflops": "GFLOP/s", "pct_peak": "% peak", "gbps": "GB/s", "pct_bandwidth": "% BW",
                   "workspace": "workspace"}


def _metric_cells(record, columns, torch_side):
    cells = []
    for col in columns:
        if col == "workspace":
            cells.append("" if torch_side else _fmt_bytes(record.get("workspace_bytes")))
            continue
        key = col + ("_torch" if torch_side else "")
        value = record.get(key)
        cells.append(_fmt(value, ".1f" if col != "gflops" or (value or 0) < 100 else ".0f"))
    return cells


def _group_section(group_records, meta):
    first = group_records[0]
    out = [f"## {first['group_title']}", ""]
    description = ((meta.get("groups") or {}).get(first["group"]) or {}).get("description")
    if description:
        out += [description, ""]
    timed = [r for r in group_records if r["status"] in TIMED]
    if not timed:
        notes = list(OrderedDict.fromkeys(r.get("note") or r["status"] for r in group_records))
        out += [f"Not measured: {'; '.join(notes)}.", ""]
        return out
    columns = _metric_columns(group_records)
    multi_dtype = len({r["dtype"] for r in group_records}) > 1
    is_model = first["kind"] == "model"
    header = ["model" if is_model else "layer", "input (C×H×W)" if is_model else "shapes (C×H×W)", "N", "pass"] + (["precision"] if multi_dtype else []) + \
        ["impl", "median ms", "speed-up"] + [_METRIC_HEADERS[c] for c in columns]
    rows = []
    blocks = OrderedDict()
    for r in group_records:
        blocks.setdefault((r["case"], r["batch"], r["pass"], r["dtype"]), []).append(r)
    last_case = None
    for (case, batch, pass_, dtype), block in blocks.items():
        name = case if case != last_case else ""
        shapes = block[0]["shapes"] if case != last_case else ""
        last_case = case
        lead = [name, shapes, str(batch), pass_] + ([dtype] if multi_dtype else [])
        timed_block = [r for r in block if r["status"] in TIMED]
        if timed_block:
            ref = timed_block[0]
            rows.append(lead + ["torch", _fmt_ms(ref["torch_median_s"]), ""] + _metric_cells(ref, columns, True))
            lead = ["", "", "", ""] + ([""] if multi_dtype else [])
        untimed = [r for r in block if r["status"] not in TIMED]
        if len(untimed) > 1 and len({(r["status"], r.get("note")) for r in untimed}) == 1:
            # Every algorithm skipped for the same reason: say it once.
            r = untimed[0]
            label = "fastconv (all algorithms)" if len(untimed) == len(block) else \
                ", ".join(_impl(u) for u in untimed)
            rows.append(lead + [label, r["status"], (r.get("note") or "")[:160]] + [""] * len(columns))
            lead = ["", "", "", ""] + ([""] if multi_dtype else [])
            block = [r for r in block if r["status"] in TIMED]
        for r in block:
            if r["status"] in TIMED:
                speed = _fmt_speedup(r["speedup"])
                if r["status"] == "mismatch":
                    speed += " MISMATCH"
                rows.append(lead + [_impl(r), _fmt_ms(r["fastconv_median_s"]), speed]
                            + _metric_cells(r, columns, False))
            else:
                rows.append(lead + [_impl(r), r["status"], (r.get("note") or "")[:120]] + [""] * len(columns))
            lead = ["", "", "", ""] + ([""] if multi_dtype else [])
    out += [_table(header, rows), ""]
    # Geometric means per implementation and column.
    cols = _summary_columns(meta)
    per_impl = defaultdict(lambda: defaultdict(list))
    for r in group_records:
        if r["status"] == "ok":
            impl = "fastconv.convert" if is_model else r["algo"] or "fastconv"
            per_impl[(impl, r["dtype"])][_column_key(r)].append(r["speedup"])
    if per_impl:
        lines = []
        for (impl, dtype), by_col in per_impl.items():
            parts = [f"{cols[c]}: {geomean(v):.2f}x ({len(v)})" for c, v in
                     sorted(by_col.items(), key=lambda kv: list(cols).index(kv[0]))]
            label = impl + (f", {dtype}" if multi_dtype else "")
            lines.append(f"- {label}: " + "; ".join(parts))
        out += ["**Geometric mean speed-up** (number of layers or models in brackets):", ""] + lines + [""]
    notes = [r for r in group_records if r.get("note") and r["status"] in TIMED]
    if notes and is_model:
        out += [f"- {r['case']}: {r['note']}" for r in {r['case']: r for r in notes}.values()] + [""]
    return out


def auto_choices(records):
    """Per convolution case with every algorithm timed: auto's time against the fastest single algorithm.

    auto is resolved inside the op, per pass (forward, input gradient, weight gradient), so a training
    row can mix algorithms and beat both; the ratio is measured, not inferred from a rule."""
    blocks = defaultdict(dict)
    for r in records:
        if r["kind"] == "conv" and r["status"] == "ok":
            blocks[(r["group_title"], r["case"], r["batch"], r["pass"], r["dtype"])][r["algo"]] = r
    rows = []
    for (group, case, batch, pass_, dtype), algos in blocks.items():
        single = {a: r["fastconv_median_s"] for a, r in algos.items() if a != "auto"}
        if len(single) < 2 or "auto" not in algos:
            continue
        fastest = min(single, key=single.get)
        auto = algos["auto"]
        rows.append({
            "group": group, "case": case, "batch": batch, "pass": pass_, "dtype": dtype, "times": single,
            "auto_s": auto["fastconv_median_s"], "torch_s": auto["torch_median_s"], "fastest": fastest,
            "auto_over_fastest": auto["fastconv_median_s"] / single[fastest], "params": auto["params"],
        })
    return rows


# auto within this factor of the fastest single algorithm counts as a good pick (timing noise included).
AUTO_SLACK = 1.10


def _auto_section(records):
    rows = auto_choices(records)
    if not rows:
        return []
    algos = sorted({a for r in rows for a in r["times"]})
    table = []
    for r in rows:
        ratio = f"{r['auto_over_fastest']:.2f}x" + (" **slow**" if r["auto_over_fastest"] > AUTO_SLACK else "")
        table.append([r["case"], str(r["batch"]), r["pass"]] + [_fmt_ms(r["times"].get(a)) for a in algos]
                     + [_fmt_ms(r["auto_s"]), _fmt_ms(r["torch_s"]), r["fastest"], ratio])
    good = sum(1 for r in rows if r["auto_over_fastest"] <= AUTO_SLACK)
    cost = geomean([r["auto_over_fastest"] for r in rows])
    return [
        "## `algo=\"auto\"` against the fastest single algorithm", "",
        f"auto ran within {100 * (AUTO_SLACK - 1):.0f}% of the fastest single algorithm (or faster) for {good} of "
        f"{len(rows)} timed convolutions; over all of them it took {cost:.2f}x the fastest one's time (geometric "
        "mean; 1.00x is a perfect rule, under 1 happens when auto mixes algorithms across the passes of a "
        "training step, or from noise). Rows marked **slow** show where the rule could improve.", "",
        _table(["layer", "N", "pass"] + [f"{a} ms" for a in algos] + ["auto ms", "torch ms", "fastest single",
                                                                      "auto / fastest"], table), "",
    ]


def _problems(records):
    bad = [r for r in records if r["status"] in ("error", "mismatch")]
    if not bad:
        return []
    out = ["## Errors and mismatches", ""]
    for r in bad:
        out.append(f"- {r['group_title']} / {r['case']} N={r['batch']} {r['pass']} {r['dtype']} {_impl(r)}: "
                   f"{r['status']}: {r.get('note')}")
    return out + [""]


def render_markdown(meta, records, plot_files, plot_note):
    out = _header(meta, records) + _summary(meta, records)
    for name, caption in plot_files:
        out += [f"![{caption}]({name})", ""]
    if plot_note:
        out += [f"_Plots: {plot_note}_", ""]
    out += _problems(records)
    groups = OrderedDict()
    for r in records:
        groups.setdefault(r["group"], []).append(r)
    for group_records in groups.values():
        out += _group_section(group_records, meta)
    out += _auto_section(records)
    out += _method(meta)
    out += ["Every record, with its raw samples, is in `results.json`.", ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------------


def _row_label(r):
    return f"{r['case']}  N={r['batch']} {'fwd+bwd' if r['pass'] == 'forward+backward' else r['pass']}" + \
        (f" {r['dtype']}" if r["device"] == "cuda" else "")


def _default_rows(records, predicate=lambda r: True):
    return [r for r in records if r["status"] == "ok" and _is_default_algo(r) and predicate(r)]


def write_plots(out_dir, records):
    """Writes the plots; returns ([(file name, caption)], note about what was left out or None)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    except ImportError:
        return [], "skipped: matplotlib is not installed"
    written = []
    groups = OrderedDict()
    for r in _default_rows(records):
        groups.setdefault(r["group_title"], []).append(r)
    if groups:
        heights = [max(1.0, 0.28 * len(rows) + 0.8) for rows in groups.values()]
        fig, axes = plt.subplots(len(groups), 1, figsize=(10, sum(heights) + 0.6),
                                 gridspec_kw={"height_ratios": heights}, squeeze=False)
        for ax, (title, rows) in zip(axes[:, 0], groups.items()):
            values = [r["speedup"] for r in rows]
            colors = ["tab:green" if v >= 1 else "tab:red" for v in values]
            y = range(len(rows))
            bars = ax.barh(y, values, color=colors, height=0.7)
            ax.bar_label(bars, labels=[f"{v:.2f}x" for v in values], fontsize=6, padding=2)
            ax.set_yticks(list(y), [_row_label(r) for r in rows], fontsize=7)
            ax.invert_yaxis()
            ax.set_xscale("log")
            ax.set_xlim(min(min(values), 1.0) / 1.3, max(max(values), 1.0) * 1.6)
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.axvline(1.0, color="black", linewidth=0.8)
            ax.set_title(title, fontsize=9, loc="left")
            ax.tick_params(axis="x", labelsize=7)
            ax.grid(axis="x", which="both", alpha=0.3)
        axes[-1, 0].set_xlabel("speed-up over torch (torch time / fastconv time, log scale; >1: fastconv faster)")
        fig.suptitle("fastconv (algo=auto) against torch.nn, per layer", fontsize=10)
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))  # leave room for the title
        fig.savefig(out_dir / "speedup.png", dpi=110)
        plt.close(fig)
        written.append(("speedup.png", "speed-up per layer"))

    for file_name, caption, key, predicate, unit in (
        ("pct_peak.png", "% of peak per layer", "pct_peak", lambda r: r.get("pct_peak") is not None
         and not r.get("depthwise"), "% of the FP32 peak"),
        ("bandwidth.png", "% of memory bandwidth, pooling and depthwise", "pct_bandwidth",
         lambda r: r.get("pct_bandwidth") is not None and (r["kind"] == "pool" or r.get("depthwise")),
         "% of memory bandwidth"),
    ):
        rows = _default_rows(records, predicate)
        if not rows:
            continue
        fig, ax = plt.subplots(figsize=(10, 0.3 * len(rows) + 1.4))
        y = list(range(len(rows)))
        ax.barh([v - 0.2 for v in y], [r[key + "_torch"] for r in rows], height=0.4, label="torch", color="tab:gray")
        ax.barh([v + 0.2 for v in y], [r[key] for r in rows], height=0.4, label="fastconv", color="tab:blue")
        ax.set_yticks(y, [f"{r['group_title'].split(':')[0]}: {_row_label(r)}" for r in rows], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(unit)
        ax.legend(fontsize=8)
        ax.grid(axis="x", alpha=0.3)
        ax.set_title(caption, fontsize=10)
        fig.tight_layout()
        fig.savefig(out_dir / file_name, dpi=110)
        plt.close(fig)
        written.append((file_name, caption))
    return written, None


# ----------------------------------------------------------------------------------------------
# Everything
# ----------------------------------------------------------------------------------------------


def write_all(out_dir, meta, records, plots=True):
    """Writes results.json, the plots and report.md into out_dir; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = out_dir / "results.json"
    results.write_text(json.dumps({"meta": meta, "records": records}, indent=1, default=str) + "\n")
    plot_files, plot_note = write_plots(out_dir, records) if plots else ([], "not drawn (--no-plots)")
    report = out_dir / "report.md"
    report.write_text(render_markdown(meta, records, plot_files, plot_note))
    return [report, results] + [out_dir / name for name, _ in plot_files]

"""Interleaved timing: every side of a comparison is sampled in turn, round after round.

Each sample is a `torch.utils.benchmark.Timer.timeit(number)` of one side (the Timer runs with the
threads torch is set to use, not its default of one, and with a clock that synchronises CUDA), so
`number` calls after Timer's own warm-up calls. A side slower than a whole sample is timed one call
at a time with the same clock and without those warm-up calls, which would triple its cost. The order
of the sides rotates every round so that drift in the machine's speed (other processes, clock
changes) lands on all of them alike. The result per side is the median over rounds of the per-call
time.
"""
import dataclasses
import gc
import statistics
import time
from dataclasses import dataclass

import torch
from torch.utils.benchmark import Timer


@dataclass(frozen=True)
class TimingPlan:
    """How long to sample. `sample_s`: target duration of one sample (calls are batched to reach it);
    `rounds`: samples per side; `case_budget_s`: fewer rounds (down to `min_rounds`) when a case would
    take longer; `max_call_s`: a side slower than this per call is not timed at all."""

    sample_s: float
    rounds: int
    min_rounds: int
    case_budget_s: float
    max_call_s: float


PLANS = {
    "smoke": TimingPlan(sample_s=0.002, rounds=3, min_rounds=3, case_budget_s=1.0, max_call_s=5.0),
    "quick": TimingPlan(sample_s=0.02, rounds=5, min_rounds=3, case_budget_s=3.0, max_call_s=10.0),
    "full": TimingPlan(sample_s=0.05, rounds=11, min_rounds=5, case_budget_s=20.0, max_call_s=30.0),
}


def plan_for(mode, device):
    """The sampling plan of a mode on a device. GPU calls take microseconds and every layer runs in
    three precisions, so GPU samples are shorter: a sample still holds hundreds of calls."""
    plan = PLANS[mode]
    if device.type == "cuda" and mode != "smoke":
        plan = dataclasses.replace(plan, sample_s=plan.sample_s / 2)
    return plan


def make_clock(device):
    """A clock that waits for queued CUDA work first, so a sample measures the work and not its launch."""
    if device.type == "cuda":
        def clock():
            torch.cuda.synchronize(device)
            return time.perf_counter()
        return clock
    return time.perf_counter


@dataclass
class SideResult:
    median_s: float = None
    samples_s: tuple = ()
    number: int = 0
    skipped: str = None  # why this side was not timed


def time_interleaved(sides, device, plan, first_call_s=None, always_time=("torch",), threads=None):
    """Median seconds per call of each side ({label: callable}), sampled in rotating order.

    Each callable must already have run once (lazy initialisation, first-call allocations).
    `first_call_s` ({label: seconds} of that call) sizes the samples of slow sides without another
    call; fast sides are calibrated on a few more calls. Sides slower than `plan.max_call_s` are not
    timed, except those in `always_time` (the reference everything is compared with).
    """
    clock = make_clock(device)
    threads = threads or torch.get_num_threads()
    first_call_s = first_call_s or {}
    results = {label: SideResult() for label in sides}
    timers, per_call = {}, {}
    for label, fn in sides.items():
        # Calibrate on the fastest of a few calls: one preempted call must not shrink every later
        # sample to a single call. A side whose first call already took half a sample is slow enough
        # that its first call sizes it.
        fastest, spent = float("inf"), 0.0
        if label in first_call_s and first_call_s[label] >= plan.sample_s / 2:
            fastest = spent = first_call_s[label]
        while spent < plan.sample_s / 2:
            start = clock()
            fn()
            elapsed = clock() - start
            fastest, spent = min(fastest, elapsed), spent + elapsed
        per_call[label] = max(fastest, 1e-7)
        if per_call[label] > plan.max_call_s and label not in always_time:
            results[label].skipped = (f"{label} not timed: one call takes {per_call[label]:.1f} s, over this mode's "
                                      f"{plan.max_call_s:.0f} s limit")
            continue
        timers[label] = Timer("fn()", globals={"fn": fn}, num_threads=threads, timer=clock)
        results[label].number = max(1, int(plan.sample_s / per_call[label]))

    def warmup_calls(label):
        return 0 if per_call[label] >= plan.sample_s else max(results[label].number // 100, 2)

    def sample(label):
        if warmup_calls(label) == 0:
            return _single_call(sides[label], clock)
        return timers[label].timeit(results[label].number).median

    round_cost = sum(per_call[label] * (results[label].number + warmup_calls(label)) for label in timers)
    rounds = plan.rounds
    while rounds > plan.min_rounds and rounds * round_cost > plan.case_budget_s:
        rounds -= 1
    labels = list(timers)
    samples = {label: [] for label in labels}
    for r in range(rounds):
        shift = r % len(labels) if labels else 0
        for label in labels[shift:] + labels[:shift]:
            samples[label].append(sample(label))
    for label in labels:
        results[label].samples_s = tuple(samples[label])
        results[label].median_s = statistics.median(samples[label])
    return results


def _single_call(fn, clock):
    """Seconds of one call, with the garbage collector paused as timeit pauses it."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = clock()
        fn()
        return clock() - start
    finally:
        if gc_was_enabled:
            gc.enable()

"""Figures of notebooks 07-09 (DDP by hand, overlap and buckets, gradient accumulation)."""

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from torch import Tensor

from minidp.course.i18n import N_, _
from minidp.events import Event

# ---- 07 DDP by hand


def replica_gaps(gaps: dict[str, Tensor], tolerance: float | None = None) -> Figure:
    """Largest |parameter difference| to the one-process run after each step, one line per run.

    Exact zeros (a run equal to the last bit) are drawn at 1e-18, the floor of the log scale.
    """
    fig = Figure(figsize=(6.5, 3.8), layout="constrained")
    ax = fig.subplots()
    for label, gap in gaps.items():
        ax.plot(torch.as_tensor(gap).clamp(min=1e-18), marker=".", label=label)
    if tolerance is not None:
        ax.axhline(tolerance, color="0.5", linestyle="--", linewidth=1, label=_("tolerance"))
    ax.set(yscale="log", xlabel=_("step"), ylabel=_("max |θ (K workers) - θ (one process)|"))
    ax.legend(fontsize=8)
    return fig


# ---- 08 overlap and buckets
# A trace is one rank's list of minidp.events.Event records for one training step: the DDP's
# own ("grad", "launch", "done", "backward end") and the worker's marks "forward", "backward",
# "step" and "end" at the start of each phase.

PHASES = {"forward": "tab:blue", "backward": "tab:orange", "step": "tab:green"}


def step_seconds(ranks: list[list[Event]]) -> float:
    """How long one step took, given each rank's trace of it: first start to last end."""
    start = min(e.start for trace in ranks for e in trace if e.kind == "forward")
    return max(e.start for trace in ranks for e in trace if e.kind == "end") - start


def fastest_step(steps: list[list[list[Event]]]) -> list[list[Event]]:
    """The ranks' traces of the fastest step, from steps[rank][step]: on a shared machine, the
    step that other programs disturbed least."""
    by_step = [list(ranks) for ranks in zip(*steps, strict=True)]  # [step][rank]
    return min(by_step, key=step_seconds)


def _phase_spans(trace: list[Event]) -> dict[str, tuple[float, float]]:
    """(start, end) of forward, backward and optimizer step in one rank's trace."""
    at = {e.kind: e.start for e in trace if e.kind in ("forward", "backward", "step", "end")}
    # Backward's compute ends at the DDP's end-of-backward callback, before any wait for the
    # network; when it is missing (no DDP) it ends where the optimizer step starts.
    end = next((e.start for e in trace if e.kind == "backward end"), at["step"])
    return {
        "forward": (at["forward"], at["backward"]),
        "backward": (at["backward"], end),
        "step": (at["step"], at["end"]),
    }


def _draw_rank(ax, trace: list[Event], row: float, t0: float) -> None:
    """Compute phases on the upper lane, each bucket's all-reduce on the lower one."""
    ms = lambda t: 1e3 * (t - t0)
    for phase, (start, end) in _phase_spans(trace).items():
        ax.barh(row + 0.25, ms(end) - ms(start), left=ms(start), height=0.4, color=PHASES[phase])
    ready = [ms(e.start) for e in trace if e.kind == "grad"]
    ax.plot(ready, [row + 0.25] * len(ready), "|", color="k", markersize=7, alpha=0.6)
    launched = {e.index: e.start for e in trace if e.kind == "launch"}
    for e in trace:
        if e.kind == "done" and e.index in launched:
            # Consecutive buckets alternate between two half-lanes, so that two in flight at
            # once stay visible instead of hiding each other.
            i, start = e.index, launched[e.index]
            y = row - 0.35 + 0.2 * (i % 2)
            colour = "tab:red" if i % 2 else "tab:purple"
            ax.barh(y, ms(e.start) - ms(start), left=ms(start), height=0.2, color=colour)


def ddp_timeline(traces: dict[str, list[list[Event]]], steps_ms: dict | None = None) -> Figure:
    """One panel per variant: each rank's forward, backward (ticks: a gradient is ready) and
    optimizer step, and below them each bucket's all-reduce from launch to done; a shared time
    axis in ms from the first rank's start of the step."""
    rows = sum(len(ranks) for ranks in traces.values())
    fig = Figure(figsize=(9, 1.0 + 1.3 * rows), layout="constrained")
    axes = fig.subplots(len(traces), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (label, ranks) in zip(axes, traces.items(), strict=True):
        t0 = min(e.start for trace in ranks for e in trace if e.kind == "forward")
        for r, trace in enumerate(ranks):
            _draw_rank(ax, trace, len(ranks) - 1 - r, t0)
        ax.set_yticks(
            [y for r in range(len(ranks)) for y in (r - 0.25, r + 0.25)],
            [
                _("rank {r} {lane}").format(r=r, lane=lane)
                for r in reversed(range(len(ranks)))
                for lane in (_("comm"), _("work"))
            ],
            fontsize=8,
        )
        title = label
        if steps_ms:
            title = _("{label}: step {ms:.0f} ms").format(label=label, ms=steps_ms[label])
        ax.set_title(title, fontsize=10, loc="left")
    axes[-1].set_xlabel(_("ms since the step started"))
    colours = [*PHASES.values(), "tab:purple", "tab:red"]
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours]
    names = [_("forward"), _("backward"), _("optimizer step")]
    names += [_("all-reduce: bucket 0, 2, …"), _("bucket 1, 3, …")]
    fig.legend(handles, names, loc="outside lower center", ncols=5, fontsize=8)
    return fig


def bucket_sweep(
    caps_mb: list[float], steps_ms: list[float], baselines: dict[str, float], buckets: list[int]
) -> Figure:
    """Step time against the bucket cap (log scale), each point labelled with its bucket count;
    dashed lines for the baselines (after-backward, torch's DDP, compute alone)."""
    fig = Figure(figsize=(6.5, 3.8), layout="constrained")
    ax = fig.subplots()
    ax.plot(caps_mb, steps_ms, marker="o", color="k", label=_("bucketed (ours)"))
    for cap, ms, n in zip(caps_mb, steps_ms, buckets, strict=True):
        ax.annotate(f"{n}", (cap, ms), textcoords="offset points", xytext=(0, 6), ha="center")
    for i, (label, ms) in enumerate(baselines.items()):
        ax.axhline(ms, linestyle="--", color=plt.get_cmap("tab10")(i), label=label)
    ax.set(xscale="log", xlabel=_("bucket cap (MB)"), ylabel=_("ms per training step"))
    ax.set_title(_("Step time against bucket size (numbers: buckets per step)"), fontsize=10)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    return fig


# ---- 09 gradient accumulation and the large-batch learning rate

LOSS = N_("loss")  # large_batch_runs' default axis label, translated where drawn


def large_batch_runs(
    runs: dict[str, tuple[Tensor, Tensor, Tensor]], ylabel=LOSS, log=True, ylim=None
) -> Figure:
    """Loss (left) and learning rate (right) against examples seen, one line per run.

    runs: {label: (examples seen (n,), loss (n,), learning rate (n,))}. Against examples rather
    than steps, a run with a 4x larger batch is compared where it has read as much data.
    ylim (bottom, top) keeps a diverging run from squashing the others: it leaves at the top.
    """
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax_loss, ax_lr = fig.subplots(1, 2, width_ratios=[1.6, 1])
    for label, (examples, loss, lr) in runs.items():
        (line,) = ax_loss.plot(examples, torch.as_tensor(loss).clamp(max=1e6), label=label)
        ax_lr.plot(examples, lr, color=line.get_color())
    ax_loss.set(yscale="log" if log else "linear", xlabel=_("examples seen"), ylabel=_(ylabel))
    if ylim is not None:
        ax_loss.set_ylim(*ylim)
    ax_lr.set(xlabel=_("examples seen"), ylabel=_("learning rate"))
    ax_loss.legend(fontsize=8)
    return fig


def scaling_rules(curves: dict[str, dict[str, tuple[Tensor, Tensor]]]) -> Figure:
    """One panel per optimizer: the loss of each run against examples seen (log scale).

    curves: {optimizer: {label: (examples seen (n,), loss (n,))}}, the base run first. Against
    examples, a run whose rule fits its optimizer lies on top of the base run.
    """
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    for ax, (optimizer, runs) in zip(fig.subplots(1, len(curves)), curves.items(), strict=True):
        for i, (label, (examples, loss)) in enumerate(runs.items()):
            style = dict(color="k", linewidth=2.5, alpha=0.35) if i == 0 else dict(linewidth=1.2)
            ax.plot(examples, loss, label=label, **style)
        ax.set(yscale="log", xlabel=_("examples seen"), ylabel=_("mean loss"), title=optimizer)
        ax.legend(fontsize=8)
    return fig

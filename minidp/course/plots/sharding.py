"""Figures of notebook 12 (sharding everything): bytes per rank by ZeRO stage, and a timeline of
one FSDP step, unit by unit."""

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from minidp.course.i18n import N_, _
from minidp.course.plots.scale import PART_COLOURS
from minidp.events import Event

# ---- bytes per rank


def sharded_memory(
    measured: dict[str, dict[int, dict[str, float]]],
    predicted: dict[str, dict[int, dict[str, float]]],
) -> Figure:
    """One panel per setup (DDP, ZeRO-1, ...): per world size K, the bytes one rank holds of
    weights, gradients and optimizer state, measured (stacked bars) and predicted (a tick)."""
    fig = Figure(figsize=(2.6 * len(measured) + 0.6, 3.4), layout="constrained")
    axes = fig.subplots(1, len(measured), sharey=True, squeeze=False)[0]
    for ax, (setup, by_k) in zip(axes, measured.items(), strict=True):
        for x, (k, parts) in enumerate(by_k.items()):
            bottom = 0.0
            for part, value in parts.items():
                label = _(part) if ax is axes[0] and x == 0 else None
                ax.bar(x, value / 1e6, bottom=bottom, color=PART_COLOURS[part], label=label)
                bottom += value / 1e6
            total = sum(predicted[setup][k].values()) / 1e6
            ax.plot(
                [x - 0.45, x + 0.45],
                [total, total],
                color="k",
                linewidth=2,
                label=_("predicted") if ax is axes[0] and x == 0 else None,
            )
        ax.set_xticks(range(len(by_k)), [f"K = {k}" for k in by_k])
        ax.set_title(setup, fontsize=10)
    axes[0].set_ylabel(_("MB on each rank"))
    fig.legend(loc="outside lower center", ncols=4, fontsize=8)
    return fig


# ---- a timeline of one FSDP step

# Keys are minidp.flat.Event kinds, also the legend's labels (translated where drawn).
KIND_COLOURS = {
    N_("all-gather"): "tab:blue",
    N_("reduce-scatter"): "tab:red",
    N_("all-reduce"): "tab:purple",
}
LANES = (N_("comm"), N_("work"))
# The labels notebook 12 gives its two timelines: data, shown translated.
VARIANTS = (N_("with prefetch"), N_("without prefetch"))


def _unit_colour(unit: int):
    return plt.get_cmap("tab10")(unit % 10)


def _draw_rank(ax, events: list[Event], row: float, t0: float) -> None:
    """Computation (forward, then backward hatched) on the upper lane, coloured by unit;
    collectives on the lower one, coloured by kind, labelled by unit."""
    for e in events:
        start, width = 1e3 * (e.start - t0), 1e3 * (e.end - e.start)
        if e.kind in ("forward", "backward"):
            ax.barh(
                row + 0.22,
                width,
                left=start,
                height=0.38,
                color=_unit_colour(e.index),
                hatch="//" if e.kind == "backward" else None,
                edgecolor="w",
                linewidth=0.5,
            )
        else:
            ax.barh(
                row - 0.22,
                width,
                left=start,
                height=0.38,
                color=KIND_COLOURS[e.kind],
                alpha=0.75,
                edgecolor="w",
                linewidth=0.5,
            )
            if e.index >= 0:
                ax.text(start, row - 0.22, str(e.index), fontsize=6, va="center", color="w")


def fsdp_timeline(traces: dict[str, list[list[Event]]], steps_ms: dict | None = None) -> Figure:
    """One panel per variant (with and without prefetch): each rank's forward and backward of
    every unit, and the all-gathers and reduce-scatters under them; ms from the step's start."""
    rows = sum(len(ranks) for ranks in traces.values())
    fig = Figure(figsize=(9, 1.2 + 1.1 * rows), layout="constrained")
    axes = fig.subplots(len(traces), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (label, ranks) in zip(axes, traces.items(), strict=True):
        t0 = min(e.start for events in ranks for e in events)
        for r, events in enumerate(ranks):
            _draw_rank(ax, events, len(ranks) - 1 - r, t0)
        ax.set_yticks(
            [y for r in range(len(ranks)) for y in (r - 0.22, r + 0.22)],
            [
                _("rank {r} {lane}").format(r=r, lane=_(lane))
                for r in reversed(range(len(ranks)))
                for lane in LANES
            ],
            fontsize=8,
        )
        title = _(label)
        if steps_ms:
            title = _("{label}: step {ms:.0f} ms").format(label=title, ms=steps_ms[label])
        ax.set_title(title, fontsize=10, loc="left")
    axes[-1].set_xlabel(_("ms since the step started"))
    handles = [plt.Rectangle((0, 0), 1, 1, color=c, alpha=0.75) for c in KIND_COLOURS.values()]
    handles += [plt.Rectangle((0, 0), 1, 1, facecolor="0.6", hatch=h) for h in (None, "//")]
    names = [*map(_, KIND_COLOURS), _("forward (colour: unit)"), _("backward")]
    fig.legend(handles, names, loc="outside lower center", ncols=5, fontsize=8)
    return fig

"""Matplotlib figures for the notebooks.

Each function draws a figure and returns it (or the Axes it drew on), so that a notebook shows
it and a test can inspect what was drawn without a screen. Sections follow the course order.
"""

import math

import matplotlib.pyplot as plt  # noqa: F401  (used as the sections are written)
import numpy as np  # noqa: F401
import torch  # noqa: F401
from matplotlib.figure import Figure
from torch import Tensor

from minidp import memory, model, model_parallel

# ---- 01 loss
# Figures are matplotlib.figure.Figure objects, not pyplot's: pyplot would keep every figure a
# widget redraws alive, and show each a second time at the end of the cell.

LIMITS = ((-3.0, 5.0), (-2.0, 6.0))  # (theta_0, theta_1) ranges around linear_data's (1, 2)


def loss_grid(X: Tensor, y: Tensor, limits=LIMITS, n: int = 60) -> tuple[Tensor, Tensor, Tensor]:
    """J on an n x n grid of (theta_0, theta_1): (T0, T1, J), each (n, n), rows varying theta_1."""
    T0, T1 = torch.meshgrid(
        torch.linspace(*limits[0], n), torch.linspace(*limits[1], n), indexing="xy"
    )
    thetas = torch.stack([T0.flatten(), T1.flatten()], dim=1)  # (n*n, 2)
    # vmap evaluates mse_loss once per theta without a Python loop: one definition of J.
    J = torch.vmap(model.mse_loss, in_dims=(0, None, None))(thetas, X, y)
    return T0, T1, J.view(n, n)


def data_and_lines(X: Tensor, y: Tensor, thetas: list[Tensor]) -> Figure:
    """The data (x_1, y) and the line h_theta of each theta, labelled with its loss J(theta)."""
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    ax.scatter(X[:, 1], y, s=12, color="0.5", label="data")
    xs = torch.linspace(float(X[:, 1].min()), float(X[:, 1].max()), 2)
    for theta in thetas:
        t0, t1 = theta.tolist()
        J = model.mse_loss(theta, X, y).item()
        ax.plot(xs, t0 + t1 * xs, label=f"θ = ({t0:.1f}, {t1:.1f}):  J = {J:.2f}")
    ax.set(xlabel="$x_1$", ylabel="$y$", title="Candidate lines and their loss")
    ax.legend(fontsize=8)
    return fig


def _contours(ax, X: Tensor, y: Tensor, limits) -> None:
    T0, T1, J = loss_grid(X, y, limits)
    low, high = float(J.min().clamp(min=1e-3)), float(J.max())
    levels = torch.logspace(math.log10(low * 1.05), math.log10(high), 16)  # dense near the bottom
    ax.contour(T0, T1, J, levels=levels.tolist(), cmap="viridis", linewidths=0.8)
    ax.set(xlim=limits[0], ylim=limits[1], xlabel=r"$\theta_0$", ylabel=r"$\theta_1$")


def loss_surface(X: Tensor, y: Tensor, limits=LIMITS, marks: dict | None = None) -> Figure:
    """J(theta_0, theta_1) as a surface (left) and as contour lines (right), with marked points."""
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    ax3d = fig.add_subplot(1, 2, 1, projection="3d")
    T0, T1, J = loss_grid(X, y, limits)
    ax3d.plot_surface(T0, T1, J, cmap="viridis", alpha=0.9)
    ax3d.set(xlabel=r"$\theta_0$", ylabel=r"$\theta_1$", zlabel=r"$J(\theta)$")
    ax = fig.add_subplot(1, 2, 2)
    _contours(ax, X, y, limits)
    for label, theta in (marks or {}).items():
        ax.plot(*theta.tolist(), marker="*", markersize=12, linestyle="none", label=label)
    if marks:
        ax.legend(fontsize=8)
    ax.set_title("The same bowl from above: contour lines of J")
    return fig


def neg_log_prob() -> Figure:
    """The cross-entropy of one prediction, -log p, against the probability p of the right token."""
    fig = Figure(figsize=(5, 3.2), layout="constrained")
    ax = fig.subplots()
    p = torch.linspace(0.002, 1, 500)
    ax.plot(p, -torch.log(p))
    ax.plot(1 / 256, math.log(256), "o", label="uniform guess over 256 bytes: log 256 ≈ 5.55")
    ax.set(xlabel="p (probability given to the right next token)", ylabel="loss  -log p")
    ax.legend(fontsize=8)
    return fig


# ---- 02 gradient descent


def descent_paths(X: Tensor, y: Tensor, paths: dict[str, Tensor], limits=LIMITS) -> Figure:
    """Each path of theta (steps + 1, 2) drawn on the contour lines of J, from its start (o)."""
    fig = Figure(figsize=(6, 4.5), layout="constrained")
    ax = fig.subplots()
    _contours(ax, X, y, limits)
    for label, path in paths.items():
        # A diverging path runs off to 1e30 and beyond; clamp it so the line still leaves the frame.
        path = path.nan_to_num(nan=1e6, posinf=1e6, neginf=-1e6).clamp(-1e6, 1e6)
        (line,) = ax.plot(path[:, 0], path[:, 1], marker=".", markersize=4, label=label)
        ax.plot(*path[0].tolist(), marker="o", color=line.get_color())
    ax.plot(*model.least_squares(X, y).tolist(), marker="*", markersize=12, color="k")
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title("Gradient descent on the contours of J (★: the minimum)")
    return fig


def loss_curves(curves: dict[str, Tensor], ylabel: str = r"$J(\theta)$") -> Figure:
    """Loss against step for each run, on a log scale (where a steady rate is a straight line)."""
    fig = Figure(figsize=(6, 3.5), layout="constrained")
    ax = fig.subplots()
    for label, losses in curves.items():
        ax.plot(losses, label=label)
    ax.set(yscale="log", xlabel="step", ylabel=ylabel)
    ax.legend(fontsize=8)
    return fig


def gradient_clouds(clouds: dict[str, Tensor], full: Tensor) -> Figure:
    """Many mini-batch gradients (N, 2) per batch size, around the full-batch gradient (★)."""
    fig = Figure(figsize=(6, 4.5), layout="constrained")
    ax = fig.subplots()
    for label, grads in clouds.items():
        ax.scatter(grads[:, 0], grads[:, 1], s=6, alpha=0.5, label=label)
    ax.plot(
        *full.tolist(), marker="*", markersize=14, color="k", linestyle="none", label="full batch"
    )
    ax.set(xlabel=r"$\partial J / \partial \theta_0$", ylabel=r"$\partial J / \partial \theta_1$")
    ax.set_title("Mini-batch gradients scatter around the full-batch gradient")
    ax.legend(fontsize=8)
    return fig


# ---- 03 gradient averaging


def worker_gradients(grads: Tensor, mean: Tensor, full: Tensor) -> Figure:
    """Each worker's gradient (K, 2) as a thin arrow, their mean as a thick one, full batch as ★."""
    fig = Figure(figsize=(5.5, 4.5), layout="constrained")
    ax = fig.subplots()
    zeros = torch.zeros(len(grads))
    ax.quiver(
        zeros,
        zeros,
        grads[:, 0],
        grads[:, 1],
        angles="xy",
        scale_units="xy",
        scale=1,
        color="tab:blue",
        alpha=0.5,
        width=0.006,
        label=f"{len(grads)} workers' gradients",
    )
    ax.quiver(
        0,
        0,
        mean[0],
        mean[1],
        angles="xy",
        scale_units="xy",
        scale=1,
        color="tab:red",
        width=0.012,
        label="their mean",
    )
    ax.plot(
        *full.tolist(),
        marker="*",
        markersize=14,
        color="k",
        linestyle="none",
        label="full-batch gradient",
    )
    reach = 1.15 * float(torch.cat([grads.abs().flatten(), full.abs()]).max())
    ax.set(xlim=(-reach, reach), ylim=(-reach, reach), aspect="equal")
    ax.set(xlabel=r"$\partial J / \partial \theta_0$", ylabel=r"$\partial J / \partial \theta_1$")
    ax.axhline(0, color="0.8", linewidth=0.5)
    ax.axvline(0, color="0.8", linewidth=0.5)
    ax.legend(fontsize=8, loc="lower left")
    return fig


# ---- 04 processes and collectives
# Pictures of which rank holds what. Rank r starts with multiples of 10^r (rank 0 holds 1, 2, 3,
# rank 1 holds 10, 20, 30, ...), so each digit of a sum says whether that rank's value is in it:
# 0101 is ranks 0 and 2 together. A cell takes its rank's colour while it holds one rank's value,
# and turns darker grey the more ranks' values it sums; black is every rank's.


def contributors(value: float, p: int) -> list[int]:
    """The ranks whose starting values sum to `value`: digit r from the right is rank r's share."""
    digits = f"{int(abs(value)):0{p}d}"[::-1]  # digit r is rank r's share
    return [r for r in range(p) if r < len(digits) and digits[r] != "0"]


def _cell_colour(value: float, p: int):
    ranks = contributors(value, p)
    if len(ranks) == 1:
        return plt.get_cmap("tab10")(ranks[0]), "k"
    shade = 0.85 - 0.85 * (len(ranks) - 1) / max(p - 1, 1)  # 2 ranks: light grey; all p: black
    return str(shade if ranks else 1.0), "w" if shade < 0.45 else "k"


def holdings(ax, tensors: list[Tensor | None], title: str, width: int | None = None, marked=()):
    """One row per rank, one cell per element; None draws an undefined row, NaN an empty cell
    (a part the rank does not hold). `marked`: (rank, column) cells to outline, such as the
    ones that just received a message."""
    p, width = len(tensors), width or max(len(t) for t in tensors if t is not None)
    for r, t in enumerate(tensors):
        for j in range(width):
            if t is None:
                ax.add_patch(plt.Rectangle((j, r), 1, 1, fc="0.95", ec="0.6", hatch="//"))
                continue
            if j >= len(t) or math.isnan(t[j]):
                continue
            face, ink = _cell_colour(float(t[j]), p)
            outline = (r, j) in marked
            ax.add_patch(
                plt.Rectangle(
                    (j, r), 1, 1, fc=face, ec="tab:red" if outline else "w", lw=3 if outline else 1
                )
            )
            ax.text(
                j + 0.5, r + 0.5, f"{int(t[j])}", ha="center", va="center", color=ink, fontsize=9
            )
    ax.set(xlim=(0, width), ylim=(p, 0), title=title, xticks=[], aspect="equal")
    ax.set_yticks([r + 0.5 for r in range(p)], [f"rank {r}" for r in range(p)])
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    return ax


def collective(name: str, before: list[Tensor], after: list[Tensor | None]) -> Figure:
    """What each rank holds before and after a collective (None: not defined after it)."""
    width = max(len(t) for t in before + after if t is not None)
    fig = Figure(figsize=(2.2 + 1.1 * width, 0.55 * len(before) + 1.0), layout="constrained")
    ax_before, ax_after = fig.subplots(1, 2)
    holdings(ax_before, before, "before", width)
    holdings(ax_after, after, "after", width)
    ax_after.set_yticks([])
    fig.suptitle(name, fontweight="bold")
    return fig


# ---- 05 parameter server and async


def staleness_effect(staleness: list[int], final_losses: dict[str, list[float]]) -> Figure:
    """The loss after a fixed number of updates against the staleness s, one line per setting."""
    fig = Figure(figsize=(6, 3.5), layout="constrained")
    ax = fig.subplots()
    for label, losses in final_losses.items():
        ax.plot(staleness, losses, marker="o", label=label)
    ax.set(yscale="log", xlabel="staleness s (updates a gradient is late)", ylabel="final loss")
    ax.legend(fontsize=8)
    return fig


def delay_counts(delays: dict[int, list[int]]) -> Figure:
    """How often each delay happened in free-running asynchronous runs, one bar group per K."""
    fig = Figure(figsize=(6, 3.2), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(delays)
    for i, (K, ds) in enumerate(delays.items()):
        counts = torch.bincount(torch.tensor(ds))
        shares = (counts / counts.sum()).tolist()
        ax.bar([d + i * width for d in range(len(shares))], shares, width, label=f"K = {K}")
    ax.set(xlabel="delay τ: updates applied while the worker computed", ylabel="share of updates")
    ax.legend(fontsize=8)
    return fig


def round_times(workers: list[int], times: list[dict]) -> Figure:
    """Time per round against K, server vs ring: wall clock (left), busiest process (right)."""
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    axes = fig.subplots(1, 2)
    panels = [("wall", "wall-clock time per round"), ("busiest", "busiest process's CPU time")]
    for ax, (field, title) in zip(axes, panels, strict=True):
        for kind, marker in (("server", "s"), ("ring", "o")):
            ms = [1e3 * getattr(t[kind], field) for t in times]
            ax.plot(workers, ms, marker=marker, label=kind)
        ax.set(xlabel="workers K", ylabel="ms per round", title=title, xticks=workers)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    return fig


# ---- 06 all-reduce: the alpha-beta cost model (Hockney; Thakur, Rabenseifner & Gropp 2005)
# T(n) = steps * alpha + bytes * beta: alpha is the fixed cost of one message, beta the time per
# byte, and each algorithm says how many messages follow one another and how many bytes pass
# through its busiest rank in sequence.


def cost_terms(algorithm: str, nbytes: float, p: int, duplex: bool = True) -> tuple[float, float]:
    """(messages in sequence, bytes in sequence through the busiest rank) of one all-reduce.

    duplex: a rank sends and receives at the same time for the price of one, as on NVLink,
    InfiniBand or Ethernet. Only the ring relies on it (each step it sends one chunk while it
    receives another); naive and tree must receive before they can send what they received.
    """
    if algorithm == "ring":  # reduce-scatter + all-gather: 2(p-1) steps of n/p bytes
        moved = 2 * (p - 1) / p * nbytes
        return 2 * (p - 1), moved if duplex else 2 * moved
    if algorithm == "naive":  # rank 0 receives p - 1 whole messages, then sends p - 1
        return 2 * (p - 1), 2 * (p - 1) * nbytes
    if algorithm == "tree":  # up and down a binomial tree, whole messages at each level
        levels = math.ceil(math.log2(p))
        return 2 * levels, 2 * levels * nbytes
    raise ValueError(f"no cost model for {algorithm!r}")


def cost_seconds(
    algorithm: str, nbytes: float, p: int, alpha: float, beta: float, duplex: bool = True
) -> float:
    """The alpha-beta model's time for one all-reduce of nbytes on p ranks."""
    steps, moved = cost_terms(algorithm, nbytes, p, duplex)
    return steps * alpha + moved * beta


def fit_alpha_beta(
    measured: dict[int, dict[str, float]], p: int, algorithms=("ring",), duplex: bool = True
) -> tuple[float, float]:
    """alpha and beta that best fit measured {bytes: {algorithm: seconds}}, in relative error.

    Relative, because the times span orders of magnitude: plain least squares would fit the
    largest messages and ignore the small ones, where alpha shows.
    """
    rows, seconds = [], []
    for n, by_algorithm in measured.items():
        for name in algorithms:
            rows.append(cost_terms(name, n, p, duplex))
            seconds.append(by_algorithm[name])
    A = torch.tensor(rows, dtype=torch.float64) / torch.tensor(seconds)[:, None]  # (rows, 2)
    alpha, beta = torch.linalg.lstsq(A, torch.ones(len(rows), 1, dtype=torch.float64)).solution
    return alpha.item(), beta.item()


def alpha_beta(
    measured: dict[int, dict[str, float]], p: int, alpha: float, beta: float, duplex: bool = True
) -> Figure:
    """Measured seconds per all-reduce (points) against bytes, with the model's lines."""
    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.subplots()
    sizes = sorted(measured)
    grid = np.geomspace(sizes[0], sizes[-1], 50)
    for i, name in enumerate(measured[sizes[0]]):
        colour = plt.get_cmap("tab10")(i)
        ax.plot(sizes, [1e3 * measured[n][name] for n in sizes], "o", color=colour, label=name)
        if name in ("ring", "naive", "tree"):
            model_ms = [1e3 * cost_seconds(name, n, p, alpha, beta, duplex) for n in grid]
            ax.plot(grid, model_ms, "-", color=colour, alpha=0.6)
    ax.set(xscale="log", yscale="log", xlabel="message size (bytes)", ylabel="ms per all-reduce")
    links = "full-duplex" if duplex else "half-duplex"
    ax.set_title(f"{p} ranks: points measured, lines the α-β model ({links})")
    ax.legend(fontsize=8)
    return fig


def ring_step(values: Tensor, moving: list, title: str) -> Figure:
    """One step of a recorded ring: the ranks in a circle with this step's messages as arrows
    (left), and the partial sums each rank holds per chunk, just-received ones outlined (right).

    values: (p, p), rank r's chunk c in values[r, c]; moving: the Transfers of this step.
    """
    p = len(values)
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    ax_ring, ax_grid = fig.subplots(1, 2, width_ratios=[1, 1.3])
    angle = [math.pi / 2 - 2 * math.pi * r / p for r in range(p)]  # rank 0 on top, clockwise
    xy = [(math.cos(a), math.sin(a)) for a in angle]
    for r, (x, y) in enumerate(xy):
        ax_ring.add_patch(plt.Circle((x, y), 0.22, fc=plt.get_cmap("tab10")(r), alpha=0.8))
        ax_ring.text(x, y, f"rank {r}", ha="center", va="center", fontsize=8)
    for t in moving:
        (x0, y0), (x1, y1) = xy[t.src], xy[t.dst]
        ax_ring.annotate(
            "", (x1, y1), (x0, y0), arrowprops=dict(arrowstyle="-|>", lw=2, shrinkA=18, shrinkB=18)
        )
        ax_ring.text(
            (x0 + x1) / 2 * 1.25, (y0 + y1) / 2 * 1.25, f"chunk {t.chunk}", ha="center", fontsize=8
        )
    ax_ring.set(xlim=(-1.5, 1.5), ylim=(-1.5, 1.5), aspect="equal", title=title)
    ax_ring.axis("off")
    holdings(
        ax_grid, list(values), "partial sums per chunk", marked={(t.dst, t.chunk) for t in moving}
    )
    ax_grid.set_xticks([c + 0.5 for c in range(p)], [f"chunk {c}" for c in range(p)])
    return fig


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
        ax.axhline(tolerance, color="0.5", linestyle="--", linewidth=1, label="tolerance")
    ax.set(yscale="log", xlabel="step", ylabel="max |θ (K workers) - θ (one process)|")
    ax.legend(fontsize=8)
    return fig


# ---- 08 overlap and buckets
# A trace is one rank's list of (what, index, time.perf_counter()) tuples for one training step:
# the DDP's own events ("grad", "launch", "done", "backward end"; see minidp.ddp) and the
# worker's marks "forward", "backward", "step" and "end" at the start of each phase.

PHASES = {"forward": "tab:blue", "backward": "tab:orange", "step": "tab:green"}


def step_seconds(ranks: list[list[tuple]]) -> float:
    """How long one step took, given each rank's trace of it: first start to last end."""
    start = min(t for trace in ranks for what, _, t in trace if what == "forward")
    return max(t for trace in ranks for what, _, t in trace if what == "end") - start


def fastest_step(steps: list[list[list[tuple]]]) -> list[list[tuple]]:
    """The ranks' traces of the fastest step, from steps[rank][step]: on a shared machine, the
    step that other programs disturbed least."""
    by_step = [list(ranks) for ranks in zip(*steps, strict=True)]  # [step][rank]
    return min(by_step, key=step_seconds)


def _phase_spans(trace: list[tuple]) -> dict[str, tuple[float, float]]:
    """(start, end) of forward, backward and optimizer step in one rank's trace."""
    at = {what: t for what, _, t in trace if what in ("forward", "backward", "step", "end")}
    # Backward's compute ends at the DDP's end-of-backward callback, before any wait for the
    # network; when it is missing (no DDP) it ends where the optimizer step starts.
    end = next((t for what, _, t in trace if what == "backward end"), at["step"])
    return {
        "forward": (at["forward"], at["backward"]),
        "backward": (at["backward"], end),
        "step": (at["step"], at["end"]),
    }


def _draw_rank(ax, trace: list[tuple], row: float, t0: float) -> None:
    """Compute phases on the upper lane, each bucket's all-reduce on the lower one."""
    ms = lambda t: 1e3 * (t - t0)
    for phase, (start, end) in _phase_spans(trace).items():
        ax.barh(row + 0.25, ms(end) - ms(start), left=ms(start), height=0.4, color=PHASES[phase])
    ready = [ms(t) for what, _, t in trace if what == "grad"]
    ax.plot(ready, [row + 0.25] * len(ready), "|", color="k", markersize=7, alpha=0.6)
    launched = {i: t for what, i, t in trace if what == "launch"}
    for what, i, t in trace:
        if what == "done" and i in launched:
            # Consecutive buckets alternate between two half-lanes, so that two in flight at
            # once stay visible instead of hiding each other.
            y = row - 0.35 + 0.2 * (i % 2)
            colour = "tab:red" if i % 2 else "tab:purple"
            ax.barh(y, ms(t) - ms(launched[i]), left=ms(launched[i]), height=0.2, color=colour)


def ddp_timeline(traces: dict[str, list[list[tuple]]], steps_ms: dict | None = None) -> Figure:
    """One panel per variant: each rank's forward, backward (ticks: a gradient is ready) and
    optimizer step, and below them each bucket's all-reduce from launch to done; a shared time
    axis in ms from the first rank's start of the step."""
    rows = sum(len(ranks) for ranks in traces.values())
    fig = Figure(figsize=(9, 1.0 + 1.3 * rows), layout="constrained")
    axes = fig.subplots(len(traces), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (label, ranks) in zip(axes, traces.items(), strict=True):
        t0 = min(t for trace in ranks for what, _, t in trace if what == "forward")
        for r, trace in enumerate(ranks):
            _draw_rank(ax, trace, len(ranks) - 1 - r, t0)
        ax.set_yticks(
            [y for r in range(len(ranks)) for y in (r - 0.25, r + 0.25)],
            [f"rank {r} {lane}" for r in reversed(range(len(ranks))) for lane in ("comm", "work")],
            fontsize=8,
        )
        title = label if not steps_ms else f"{label}: step {steps_ms[label]:.0f} ms"
        ax.set_title(title, fontsize=10, loc="left")
    axes[-1].set_xlabel("ms since the step started")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in [*PHASES.values(), "tab:purple"]]
    names = ["forward", "backward", "optimizer step", "all-reduce of a bucket"]
    fig.legend(handles, names, loc="outside lower center", ncols=4, fontsize=8)
    return fig


def bucket_sweep(
    caps_mb: list[float], steps_ms: list[float], baselines: dict[str, float], buckets: list[int]
) -> Figure:
    """Step time against the bucket cap (log scale), each point labelled with its bucket count;
    dashed lines for the baselines (after-backward, torch's DDP, compute alone)."""
    fig = Figure(figsize=(6.5, 3.8), layout="constrained")
    ax = fig.subplots()
    ax.plot(caps_mb, steps_ms, marker="o", color="k", label="bucketed (ours)")
    for cap, ms, n in zip(caps_mb, steps_ms, buckets, strict=True):
        ax.annotate(f"{n}", (cap, ms), textcoords="offset points", xytext=(0, 6), ha="center")
    for i, (label, ms) in enumerate(baselines.items()):
        ax.axhline(ms, linestyle="--", color=plt.get_cmap("tab10")(i), label=label)
    ax.set(xscale="log", xlabel="bucket cap (MB)", ylabel="ms per training step")
    ax.set_title("Step time against bucket size (numbers: buckets per step)", fontsize=10)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    return fig


# ---- 09 gradient accumulation and the large-batch learning rate


def large_batch_runs(
    runs: dict[str, tuple[Tensor, Tensor, Tensor]], ylabel="loss", log=True, ylim=None
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
    ax_loss.set(yscale="log" if log else "linear", xlabel="examples seen", ylabel=ylabel)
    if ylim is not None:
        ax_loss.set_ylim(*ylim)
    ax_lr.set(xlabel="examples seen", ylabel="learning rate")
    ax_loss.legend(fontsize=8)
    return fig


# ---- 10 training a GPT


def training_curves(metrics: dict) -> Figure:
    """Train loss at every step and validation loss where it was measured, from the metrics of
    minidp.train.run; the uniform guess over 256 bytes, log 256, for scale."""
    fig = Figure(figsize=(6.5, 3.8), layout="constrained")
    ax = fig.subplots()
    steps, losses = zip(*[(row["step"], row["loss"]) for row in metrics["log"]], strict=True)
    ax.plot(steps, losses, linewidth=1, label="train: each step's own batch")
    val_steps, val = zip(*[(row["step"], row["val_loss"]) for row in metrics["val"]], strict=True)
    ax.plot(val_steps, val, "o-", label="validation: the same held-out text each time")
    ax.axhline(math.log(256), color="0.6", linestyle=":", label="uniform guess: log 256 ≈ 5.55")
    ax.set(xlabel="step", ylabel="cross-entropy (nats per byte)")
    ax.set_title(f"{metrics['params']:,} parameters on {metrics['world_size']} workers")
    ax.legend(fontsize=8)
    return fig


def scaling(tokens_per_s: dict[str, dict[int, float]]) -> Figure:
    """Measured tokens/s at each number of workers K, per model, in front of the ideal K times
    one worker's (hollow); the scaling efficiency, measured / ideal, above each bar."""
    fig = Figure(figsize=(6.5, 3.8), layout="constrained")
    ax = fig.subplots()
    x = 0.0
    for i, (label, runs) in enumerate(tokens_per_s.items()):
        one = runs[1]
        for k, measured in sorted(runs.items()):
            ax.bar(x, k * one, width=0.8, fill=False, edgecolor="0.5", linestyle="--")
            ax.bar(x, measured, width=0.8, color=f"C{i}", label=label if k == 1 else None)
            ax.text(x, max(measured, k * one), f"{measured / (k * one):.2f}", ha="center",
                    va="bottom", fontsize=8)  # fmt: skip
            ax.text(x, 0, f"K={k}", ha="center", va="bottom", fontsize=8, color="w")
            x += 1
        x += 0.5
    ax.bar(0, 0, fill=False, edgecolor="0.5", linestyle="--", label="ideal: K × one worker's")
    ax.set(xticks=[], ylabel="tokens / s (all workers)")
    ax.set_title("Throughput at the same global batch; numbers: scaling efficiency")
    ax.legend(fontsize=8)
    return fig


# ---- 11 beyond data parallelism

PART_COLOURS = {"weights": "C0", "gradients": "C1", "optimizer": "C2", "activations": "C3"}


def replica_memory(parts: dict[str, dict[str, float]], gpu_bytes: float, gpu: str) -> Figure:
    """What one replica of each model holds (bytes by part, from minidp.memory.per_gpu): as
    shares of its total (left), and as totals against one GPU's memory (right, log scale)."""
    fig = Figure(figsize=(10, 0.5 * len(parts) + 1.8), layout="constrained")
    share_ax, total_ax = fig.subplots(1, 2, sharey=True)
    names = list(parts)[::-1]  # the first model on top
    for y, name in enumerate(names):
        total, left = sum(parts[name].values()), 0.0
        for part, value in parts[name].items():
            share_ax.barh(y, value / total, left=left, color=PART_COLOURS[part],
                          label=part if y == 0 else None)  # fmt: skip
            left += value / total
        total_ax.barh(y, total / memory.GB, color="0.4")
        total_ax.text(
            total / memory.GB, y, f" {total / memory.GB:,.0f} GB", va="center", fontsize=8
        )
    share_ax.set(yticks=range(len(names)), yticklabels=names, xlim=(0, 1), xlabel="share of total")
    share_ax.legend(fontsize=8, ncols=4, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    total_ax.axvline(gpu_bytes / memory.GB, color="k", linestyle="--", label=gpu)
    total_ax.set(xscale="log", xlabel="GB per replica")
    total_ax.set_xlim(right=total_ax.get_xlim()[1] * 4)  # room for the labels
    total_ax.legend(fontsize=8, loc="lower right")
    return fig


def zero_stages(params: float, dp: int, precision: str = "bf16 mixed") -> Figure:
    """Model states per GPU at ZeRO stages 0-3 over dp ranks, as in the ZeRO paper's figure 1."""
    fig = Figure(figsize=(6.5, 3.8), layout="constrained")
    ax = fig.subplots()
    names = ["0: replicate all", "1: shard\noptimizer state", "2: ... and\ngradients",
             "3: ... and\nweights"]  # fmt: skip
    for stage in range(4):
        bottom = 0.0
        for part, value in memory.state_bytes(params, precision, stage, dp).items():
            ax.bar(stage, value / memory.GB, bottom=bottom, color=PART_COLOURS[part],
                   label=part if stage == 0 else None)  # fmt: skip
            bottom += value / memory.GB
        ax.text(stage, bottom, f"{bottom:.1f} GB", ha="center", va="bottom", fontsize=8)
    ax.set(xticks=range(4), xticklabels=names, ylabel="GB per GPU")
    ax.set_title(f"{params / 1e9:g}B parameters, {precision} Adam, {dp} data-parallel GPUs")
    ax.legend(fontsize=8)
    return fig


def _block(ax, x: float, y: float, w: float, h: float, colour, text: str = "") -> None:
    ax.add_patch(plt.Rectangle((x, y), w, h, facecolor=colour, edgecolor="k", linewidth=0.8))
    if text:
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=9)


def tensor_parallel_mlp(t: int = 2) -> Figure:
    """Megatron's MLP on t GPUs: A split by columns, B by rows; one all-reduce sums the parts,
    and every GPU ends with the whole output Z (the second bias is added after the sum)."""
    fig = Figure(figsize=(10, 1.3 + 1.1 * t), layout="constrained")
    ax = fig.subplots()
    height = (t - 1) * 1.3 + 1.0
    for r in range(t):
        y, c = (t - 1 - r) * 1.3, f"C{r}"
        ax.text(-0.3, y + 0.5, f"GPU {r}", ha="right", va="center", fontsize=9)
        _block(ax, 0, y, 1.0, 1.0, "0.85", "X")
        _block(ax, 1.5, y, 0.6, 1.0, c, f"$A_{r}$")
        _block(ax, 2.6, y, 0.8, 1.0, c, f"GELU\n$(XA_{r})$")
        _block(ax, 3.9, y + 0.2, 1.0, 0.6, c, f"$B_{r}$")
        _block(ax, 5.4, y, 1.0, 1.0, c, f"$Z_{r}$")
        _block(ax, 7.9, y, 1.0, 1.0, "0.85", "Z")
        for x0, x1 in ((1.0, 1.5), (2.1, 2.6), (3.4, 3.9), (4.9, 5.4), (6.4, 6.9), (7.4, 7.9)):
            ax.annotate("", (x1, y + 0.5), (x0, y + 0.5), arrowprops=dict(arrowstyle="->"))
    _block(ax, 6.9, 0, 0.5, height, "w")
    ax.text(7.15, height / 2, "all-reduce: Z = Σ Z_r", rotation=90, ha="center", va="center",
            fontsize=9)  # fmt: skip
    ax.text(1.8, height + 0.15, "A: h × 4h,\ncolumns split", ha="center", fontsize=9)
    ax.text(4.4, height + 0.15, "B: 4h × h,\nrows split", ha="center", fontsize=9)
    ax.set(xlim=(-1.2, 9.1), ylim=(-0.2, height + 0.8), aspect="equal")
    ax.axis("off")
    return fig


def pipeline_schedule(stages: int, micro_batches: int) -> Figure:
    """GPipe's schedule: each stage's forwards (F) and backwards (B) over time, and the bubble."""
    work = model_parallel.gpipe_schedule(stages, micro_batches)
    slots = 1 + max(slot for _, slot, _, _ in work)
    fig = Figure(figsize=(max(6.0, 0.32 * slots + 1.5), 0.45 * stages + 1.3), layout="constrained")
    ax = fig.subplots()
    ax.broken_barh([(0, slots)], (-0.4, stages - 0.2), color="0.92")  # idle unless covered
    for stage, slot, kind, j in work:
        colour = "C0" if kind == "F" else "C1"
        ax.broken_barh([(slot, 1)], (stage - 0.4, 0.8), facecolor=colour, edgecolor="w")
        ax.text(slot + 0.5, stage, f"{kind}{j}", ha="center", va="center", fontsize=7, color="w")
    bubble = model_parallel.bubble_fraction(stages, micro_batches)
    ax.set(xlim=(0, slots), ylim=(stages - 0.5, -0.5), xlabel="time (one slot: one micro-batch "
           "through one stage)", yticks=range(stages), yticklabels=[f"GPU {s}" for s in
           range(stages)])  # fmt: skip
    ax.set_title(f"GPipe, {stages} stages, {micro_batches} micro-batches: grey is idle, "
                 f"{bubble:.0%} of the time")  # fmt: skip
    return fig


def parallel_layout(dp: int, tp: int, pp: int) -> Figure:
    """Every GPU of a dp x tp x pp job: rows are pipeline stages, boxes are data-parallel
    replicas' pieces, GPUs inside a box split each matrix (tensor parallel)."""
    fig = Figure(figsize=(1.5 + 1.2 * dp * tp, 0.9 + 1.1 * pp), layout="constrained")
    ax = fig.subplots()
    for rank in range(dp * tp * pp):
        d, p, t = model_parallel.coordinates(rank, dp, tp, pp)
        x, y = d * (tp + 0.5) + t, p * 1.2
        _block(ax, x + 0.05, y + 0.05, 0.9, 0.9, f"C{d}", f"GPU {rank}\nshard {t}")
    for d in range(dp):
        for p in range(pp):
            ax.add_patch(plt.Rectangle((d * (tp + 0.5) - 0.05, p * 1.2 - 0.05), tp + 0.1, 1.1,
                                       fill=False, linestyle="--"))  # fmt: skip
        ax.text(d * (tp + 0.5) + tp / 2, -0.35, f"replica {d}", ha="center", fontsize=9)
    for p in range(pp):
        ax.text(-0.2, p * 1.2 + 0.5, f"stage {p}", ha="right", va="center", fontsize=9)
    ax.set(xlim=(-1.3, dp * (tp + 0.5)), ylim=(pp * 1.2, -0.6), aspect="equal")
    ax.set_title(
        f"dp = {dp}, tp = {tp}, pp = {pp}: {dp * tp * pp} GPUs\ndashed box: one tensor-parallel "
        "group; row: a pipeline stage; colour: a data-parallel replica",
        fontsize=9,
    )
    ax.axis("off")
    return fig


def memory_bar(parts: dict[str, float], gpu_bytes: float, gpu: str) -> Figure:
    """One GPU's memory by part (bytes), stacked, against what the GPU holds (dashed)."""
    fig = Figure(figsize=(7, 1.9), layout="constrained")
    ax = fig.subplots()
    left = 0.0
    for part, value in parts.items():
        ax.barh(0, value / memory.GB, left=left, color=PART_COLOURS[part], label=part)
        left += value / memory.GB
    ax.axvline(gpu_bytes / memory.GB, color="k", linestyle="--", label=gpu)
    ax.set(
        yticks=[], xlabel="GB on the busiest GPU", xlim=(0, 1.15 * max(left, gpu_bytes / memory.GB))
    )
    ax.legend(fontsize=8, ncols=5, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    return fig

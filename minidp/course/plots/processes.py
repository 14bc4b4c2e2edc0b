"""Figures of notebooks 04-06 (processes, collectives, parameter servers, all-reduce)."""

import math

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

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
    ax.set(
        xlabel="staleness s_t: updates applied while the worker computed", ylabel="share of updates"
    )
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

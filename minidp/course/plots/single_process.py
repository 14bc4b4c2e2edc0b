"""Figures of notebooks 01-03 (one process: loss, gradient descent, gradient averaging)."""

import math

import torch
from matplotlib.figure import Figure
from torch import Tensor

from minidp import linear
from minidp.course.i18n import _

# ---- 01 loss

LIMITS = ((-3.0, 5.0), (-2.0, 6.0))  # (theta_0, theta_1) ranges around linear_data's (1, 2)


def loss_grid(X: Tensor, y: Tensor, limits=LIMITS, n: int = 60) -> tuple[Tensor, Tensor, Tensor]:
    """J on an n x n grid of (theta_0, theta_1): (T0, T1, J), each (n, n), rows varying theta_1."""
    T0, T1 = torch.meshgrid(
        torch.linspace(*limits[0], n), torch.linspace(*limits[1], n), indexing="xy"
    )
    thetas = torch.stack([T0.flatten(), T1.flatten()], dim=1)  # (n*n, 2)
    # vmap evaluates mse_loss once per theta without a Python loop: one definition of J.
    J = torch.vmap(linear.mse_loss, in_dims=(0, None, None))(thetas, X, y)
    return T0, T1, J.view(n, n)


def data_and_lines(X: Tensor, y: Tensor, thetas: list[Tensor]) -> Figure:
    """The data (x_1, y) and the line h_theta of each theta, labelled with its loss J(theta)."""
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    ax.scatter(X[:, 1], y, s=12, color="0.5", label=_("data"))
    xs = torch.linspace(float(X[:, 1].min()), float(X[:, 1].max()), 2)
    for theta in thetas:
        t0, t1 = theta.tolist()
        J = linear.mse_loss(theta, X, y).item()
        ax.plot(xs, t0 + t1 * xs, label=f"θ = ({t0:.1f}, {t1:.1f}):  J = {J:.2f}")
    ax.set(xlabel="$x_1$", ylabel="$y$", title=_("Candidate lines and their loss"))
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
    ax3d.set_title(_("The loss of every line: a bowl over the plane of θ"))
    ax = fig.add_subplot(1, 2, 2)
    _contours(ax, X, y, limits)
    for label, theta in (marks or {}).items():
        ax.plot(*theta.tolist(), marker="*", markersize=12, linestyle="none", label=label)
    if marks:
        ax.legend(fontsize=8)
    ax.set_title(_("The same bowl from above: contour lines of J"))
    return fig


def neg_log_prob() -> Figure:
    """The cross-entropy of one prediction, -log q, against the probability q of the right token
    (q, not p: the course keeps p for the number of processes)."""
    fig = Figure(figsize=(5, 3.2), layout="constrained")
    ax = fig.subplots()
    q = torch.linspace(0.002, 1, 500)
    ax.plot(q, -torch.log(q))
    guess = _("uniform guess over 256 bytes: log 256 ≈ 5.55")
    ax.plot(1 / 256, math.log(256), "o", label=guess)
    ax.set(xlabel=_("q (probability given to the right next token)"), ylabel=_("loss  -log q"))
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
    ax.plot(*linear.least_squares(X, y).tolist(), marker="*", markersize=12, color="k")
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

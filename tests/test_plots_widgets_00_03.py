"""Figures and widgets of notebooks 01-03, without a browser or a screen.

A figure is checked by what it holds (lines, contour sets, arrows); a widget by setting a
control's `.value`, as a learner's slider would, and reading its state back.
"""

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
from matplotlib.collections import PathCollection
from matplotlib.contour import ContourSet
from matplotlib.figure import Figure
from matplotlib.quiver import Quiver
from mpl_toolkits.mplot3d.art3d import Poly3DCollection

from minidp import data, linear
from minidp.course import plots, widgets


@pytest.fixture(scope="module")
def valley():
    """The data of notebooks 01-02: a long tilted valley of a loss."""
    return data.linear_data(m=100, x_range=(0.0, 3.0))


def test_loss_grid_is_mse_loss_at_every_point(valley):
    X, y = valley
    T0, T1, J = plots.loss_grid(X, y, n=7)
    assert T0.shape == T1.shape == J.shape == (7, 7)
    for i, j in [(0, 0), (3, 5), (6, 2)]:
        theta = torch.stack([T0[i, j], T1[i, j]])
        torch.testing.assert_close(J[i, j], linear.mse_loss(theta, X, y))


def test_data_and_lines_draws_the_data_and_one_line_per_theta(valley):
    X, y = valley
    thetas = [torch.tensor([0.0, 0.0]), linear.least_squares(X, y)]
    fig = plots.data_and_lines(X, y, thetas)
    (ax,) = fig.axes
    assert isinstance(fig, Figure)
    assert len(ax.lines) == 2
    assert any(isinstance(c, PathCollection) for c in ax.collections)  # the scatter
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert f"J = {linear.mse_loss(thetas[1], X, y).item():.2f}" in labels[-1]


def test_loss_surface_has_a_surface_contours_and_the_marks(valley):
    X, y = valley
    fig = plots.loss_surface(X, y, marks={"minimum": linear.least_squares(X, y)})
    ax3d, ax = fig.axes
    assert any(isinstance(c, Poly3DCollection) for c in ax3d.collections)
    assert any(isinstance(c, ContourSet) for c in ax.collections)
    assert [line.get_label() for line in ax.lines] == ["minimum"]


def test_neg_log_prob_falls_from_large_to_zero():
    fig = plots.neg_log_prob()
    curve = fig.axes[0].lines[0].get_ydata()
    assert curve[0] > 5 and abs(curve[-1]) < 1e-6


def test_descent_paths_draws_each_path_even_a_diverging_one(valley):
    X, y = valley
    start = torch.tensor([-2.0, 5.0])
    paths = {
        "fine": linear.gradient_descent(start, X, y, 0.3, 10),
        "diverges": linear.gradient_descent(start, X, y, 1.0, 100),  # reaches inf and nan
    }
    fig = plots.descent_paths(X, y, paths)
    (ax,) = fig.axes
    labels = [line.get_label() for line in ax.lines]
    assert "fine" in labels and "diverges" in labels
    drawn = ax.lines[labels.index("diverges")].get_xydata()
    assert torch.isfinite(torch.as_tensor(drawn)).all()
    fig.canvas.draw()  # renders without complaint


def test_loss_curves_are_on_a_log_scale():
    fig = plots.loss_curves({"a": torch.tensor([4.0, 2.0, 1.0]), "b": torch.tensor([4.0, 3.0])})
    (ax,) = fig.axes
    assert ax.get_yscale() == "log" and len(ax.lines) == 2


def test_gradient_clouds_has_one_scatter_per_batch_size(valley):
    X, y = valley
    clouds = {"B = 5": torch.randn(20, 2), "B = 50": torch.randn(20, 2) / 3}
    fig = plots.gradient_clouds(clouds, linear.mse_grad(torch.zeros(2), X, y))
    assert sum(isinstance(c, PathCollection) for c in fig.axes[0].collections) == 2


def test_worker_gradients_draws_k_arrows_and_their_mean():
    grads = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 2.0]])
    fig = plots.worker_gradients(grads, grads.mean(0), grads.mean(0))
    quivers = [c for c in fig.axes[0].collections if isinstance(c, Quiver)]
    assert [q.N for q in quivers] == [3, 1]
    assert fig.axes[0].get_xlim()[1] >= 2.0  # every arrow fits


# ---- widgets


def test_learning_rate_explorer_shows_the_three_regimes(valley):
    X, y = valley
    w = widgets.LearningRateExplorer(X, y, lr=0.01, steps=30)
    assert w.status == "slow" and w.path.shape == (31, 2)
    # For this quadratic J, gradient descent converges iff lr < 2 / (largest eigenvalue of X^T X/m).
    limit = 2 / torch.linalg.eigvalsh(X.T @ X / len(y)).max().item()
    w.lr.value = 0.9 * limit
    assert w.status == "converges"
    w.lr.value = 1.1 * limit
    assert w.status == "diverges"
    torch.testing.assert_close(w.path, linear.gradient_descent(w.path[0], X, y, w.lr.value, 30))


def test_learning_rate_explorer_redraws_for_each_control(valley):
    X, y = valley
    w = widgets.LearningRateExplorer(X, y)
    before, shown = w.fig, w.image.value
    assert bytes(shown[:4]) == b"\x89PNG"  # what the page shows: the figure as an image
    w.start0.value = 4.0
    assert w.fig is not before and w.path[0].tolist() == [4.0, w.start1.value]
    assert bytes(w.image.value) != bytes(shown)
    w.steps.value = 5
    assert w.path.shape == (6, 2) and len(w.losses) == 6
    assert "J went from" in w.label.value


def test_learning_rate_explorer_displays_as_its_controls():
    X, y = data.linear_data(m=20)
    bundle = widgets.LearningRateExplorer(X, y)._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle


def test_gradient_averaging_mean_is_the_full_gradient_for_every_k():
    X, y = data.linear_data(m=24, x_range=(0.0, 3.0))
    theta = torch.tensor([1.0, 2.0])
    w = widgets.GradientAveraging(X, y, theta, K=2)
    assert w.K.options == (1, 2, 3, 4, 6, 8, 12)  # the divisors of 24 up to 12
    for K in w.K.options:
        w.K.value = K
        assert w.grads.shape == (K, 2)
        torch.testing.assert_close(w.mean, linear.mse_grad(theta, X, y))
        assert f"{K} workers with {24 // K} examples" in w.label.value
    quivers = [c for c in w.fig.axes[0].collections if isinstance(c, Quiver)]
    assert quivers[0].N == 12
    assert bytes(w.image.value[:4]) == b"\x89PNG"

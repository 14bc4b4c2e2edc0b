"""Widgets of notebooks 01-03 (one process: loss, gradient descent, gradient averaging)."""

import ipywidgets as W
import torch
from torch import Tensor

from minidp import data, linear
from minidp.course import plots
from minidp.course.widgets.core import draw

# ---- 02 gradient descent


class LearningRateExplorer:
    """Gradient descent on the linear model, drawn on J's contours; learning rate and start slide.

    State after each update: `path` (steps + 1, 2), `losses` (steps + 1,), `status` (one of
    "converges", "slow", "diverges") and `fig`.
    """

    def __init__(self, X: Tensor, y: Tensor, lr: float = 0.1, start=(-2.0, 5.0), steps: int = 30):
        self.X, self.y = X, y
        self.best = linear.mse_loss(linear.least_squares(X, y), X, y).item()  # J at the minimum
        style = {"description_width": "initial"}
        self.lr = W.FloatLogSlider(
            value=lr,
            base=10,
            min=-2.5,
            max=0,
            step=0.05,
            description="learning rate η",
            style=style,
        )
        self.start0 = W.FloatSlider(
            value=start[0], min=-3, max=5, step=0.25, description="start θ₀"
        )
        self.start1 = W.FloatSlider(
            value=start[1], min=-2, max=6, step=0.25, description="start θ₁"
        )
        self.steps = W.IntSlider(value=steps, min=1, max=100, description="steps")
        self.label = W.HTML()
        self.image = W.Image(format="png")
        for control in (self.lr, self.start0, self.start1, self.steps):
            control.observe(lambda change: self.update(), names="value")
        self.ui = W.VBox(
            [
                W.HBox([self.lr, self.steps]),
                W.HBox([self.start0, self.start1]),
                self.label,
                self.image,
            ]
        )
        self.update()

    def update(self) -> None:
        start = torch.tensor([self.start0.value, self.start1.value])
        self.path = linear.gradient_descent(start, self.X, self.y, self.lr.value, self.steps.value)
        self.losses = torch.stack([linear.mse_loss(theta, self.X, self.y) for theta in self.path])
        first, last = self.losses[0].item(), self.losses[-1].item()
        if not last < first:  # also catches inf and nan
            self.status = "diverges"
        elif last - self.best <= 0.01 * (first - self.best):
            self.status = "converges"
        else:
            self.status = "slow"
        self.label.value = (
            f"<b>{self.status}</b>: J went from {first:.3g} to {last:.3g} "
            f"in {self.steps.value} steps (the minimum is {self.best:.3g})"
        )
        self.fig = plots.descent_paths(self.X, self.y, {f"η = {self.lr.value:.3g}": self.path})
        draw(self.image, self.fig)

    def _repr_mimebundle_(self, **kwargs):
        return self.ui._repr_mimebundle_(**kwargs)


# ---- 03 gradient averaging


class GradientAveraging:
    """K simulated workers, each with a contiguous shard of (X, y): their gradients at theta and
    the mean, which equals the full-batch gradient; K is a slider over the divisors of m.

    State after each update: `grads` (K, len(theta)), `mean` and `full` (len(theta),), `fig`.
    """

    def __init__(self, X: Tensor, y: Tensor, theta: Tensor, K: int = 4, max_K: int = 12):
        self.X, self.y, self.theta = X, y, theta
        self.full = linear.mse_grad(theta, X, y)  # what the workers must agree on, whatever K
        divisors = [d for d in range(1, max_K + 1) if len(y) % d == 0]  # equal shards only
        # K, the number of workers, as in the notebook's formulas (k is one worker's index).
        self.K = W.SelectionSlider(options=divisors, value=K, description="workers K")
        self.label = W.HTML()
        self.image = W.Image(format="png")
        self.K.observe(lambda change: self.update(), names="value")
        self.ui = W.VBox([self.K, self.label, self.image])
        self.update()

    def update(self) -> None:
        K = self.K.value
        shards = [(data.rank_slice(self.X, k, K), data.rank_slice(self.y, k, K)) for k in range(K)]
        self.grads = torch.stack([linear.mse_grad(self.theta, Xk, yk) for Xk, yk in shards])
        self.mean = linear.average_gradients(list(self.grads))
        gap = (self.mean - self.full).abs().max().item()
        self.label.value = (
            f"{K} workers with {len(self.y) // K} examples each; "
            f"largest difference between their mean and the full-batch gradient: {gap:.1e}"
        )
        self.fig = plots.worker_gradients(self.grads, self.mean, self.full)
        draw(self.image, self.fig)

    def _repr_mimebundle_(self, **kwargs):
        return self.ui._repr_mimebundle_(**kwargs)

"""Widgets of notebooks 04-06 (processes, collectives, parameter servers, all-reduce)."""

import dataclasses

import ipywidgets as W
from torch import Tensor

from minidp import parameter_server
from minidp.course import plots
from minidp.course.widgets.core import draw

# ---- 05 parameter server and async


class StalenessExplorer:
    """Loss curves of SGD whose gradients are s updates late, against fresh gradients (s = 0);
    staleness and learning rate slide. Computed by parameter_server.delayed_sgd, which the
    notebook has shown equal to asynchronous SGD on real processes.

    State after each update: `history` (steps + 1, n), `losses` (steps + 1,), `diverged`, `fig`.
    """

    def __init__(self, X: Tensor, y: Tensor, config, staleness: int = 4, max_staleness: int = 30):
        self.X, self.y, self.config = X, y, config
        self.staleness = W.IntSlider(
            value=staleness, min=0, max=max_staleness, description="staleness s"
        )
        self.lr = W.FloatSlider(
            value=config.lr, min=0.01, max=0.5, step=0.01, description="learning rate η"
        )
        self.label = W.HTML()
        self.image = W.Image(format="png")
        for control in (self.staleness, self.lr):
            control.observe(lambda change: self.update(), names="value")
        self.ui = W.VBox([W.HBox([self.staleness, self.lr]), self.label, self.image])
        self.update()

    def _losses(self, staleness: int) -> tuple[Tensor, Tensor]:
        config = dataclasses.replace(self.config, lr=self.lr.value)
        history = parameter_server.delayed_sgd(self.X, self.y, config, staleness)
        losses = ((self.X @ history.T - self.y[:, None]) ** 2).mean(dim=0) / 2  # J per update
        return history, losses

    def update(self) -> None:
        s = self.staleness.value
        self.history, self.losses = self._losses(s)
        fresh = self._losses(0)[1]
        self.diverged = not bool(self.losses[-1] < self.losses[0])  # also when it is inf or nan
        verdict = "diverges" if self.diverged else f"ends at J = {self.losses[-1]:.3g}"
        self.label.value = (
            f"s = {s}, η = {self.lr.value:.2f}: {verdict} (fresh gradients: J = {fresh[-1]:.3g})"
        )
        curves = {"fresh gradients (s = 0)": fresh, f"{s} updates late": self.losses}
        # A diverging curve reaches inf; clip so the plot still shows where it went.
        curves = {k: v.nan_to_num(nan=1e6, posinf=1e6).clamp(max=1e6) for k, v in curves.items()}
        self.fig = plots.loss_curves(curves)
        draw(self.image, self.fig)

    def _repr_mimebundle_(self, **kwargs):
        return self.ui._repr_mimebundle_(**kwargs)


# ---- 06 all-reduce


def replay_ring(start: Tensor, transfers: list) -> list[Tensor]:
    """What every rank holds after each step of a recorded ring all-reduce: [before, after step
    0, ...], each (p, p) with rank r's chunk c at [r, c]. start: (p, p), one element per chunk.

    Reduce-scatter messages are added to the receiver's chunk, all-gather ones copied over it;
    either way the sender sends what it held after the step before.
    """
    states = [start.clone()]
    for step in range(max(t.step for t in transfers) + 1):
        old, new = states[-1], states[-1].clone()
        for t in transfers:
            if t.step == step:
                arrived = old[t.src, t.chunk]
                adds = t.phase == "reduce-scatter"
                new[t.dst, t.chunk] = old[t.dst, t.chunk] + arrived if adds else arrived
        states.append(new)
    return states


class RingReplay:
    """Step through a recorded ring all-reduce: which chunk moves where, and the partial sums.

    transfers: the Transfers every rank recorded (minidp.collectives, record=[]), all ranks
    together; start: (p, p), what each rank held, one element per chunk.
    State after each update: `step` (0 = before the first message), `values` (p, p), `moving`
    (this step's Transfers) and `fig`.
    """

    def __init__(self, start: Tensor, transfers: list):
        self.transfers = sorted(transfers, key=lambda t: (t.step, t.src))
        self.states = replay_ring(start, self.transfers)
        self.slider = W.IntSlider(value=0, min=0, max=len(self.states) - 1, description="step")
        self.play = W.Play(value=0, min=0, max=len(self.states) - 1, interval=1200)
        W.jslink((self.play, "value"), (self.slider, "value"))  # the play button moves the slider
        self.label = W.HTML()
        self.image = W.Image(format="png")
        self.slider.observe(lambda change: self.update(), names="value")
        self.ui = W.VBox([W.HBox([self.play, self.slider]), self.label, self.image])
        self.update()

    def update(self) -> None:
        self.step = self.slider.value
        self.values = self.states[self.step]
        self.moving = [t for t in self.transfers if t.step == self.step - 1]
        if not self.moving:
            title, text = "before", "each rank holds its own tensor, cut into p chunks"
        else:
            phase = self.moving[0].phase
            title = f"step {self.step} of {len(self.states) - 1}: {phase}"
            sent = ", ".join(
                f"{t.src}→{t.dst} chunk {t.chunk} ({1e3 * (t.end - t.start):.2f} ms)"
                for t in self.moving
            )
            how = "added to" if phase == "reduce-scatter" else "copied over"
            text = f"{phase}: each message is {how} the receiver's chunk. Recorded: {sent}"
        self.label.value = text
        self.fig = plots.ring_step(self.values, self.moving, title)
        draw(self.image, self.fig)

    def _repr_mimebundle_(self, **kwargs):
        return self.ui._repr_mimebundle_(**kwargs)

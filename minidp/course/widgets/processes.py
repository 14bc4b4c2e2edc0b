"""Widgets of notebooks 04-06 (processes, collectives, parameter servers, all-reduce)."""

import dataclasses

import ipywidgets as W
from torch import Tensor

from minidp import parameter_server
from minidp.course import plots
from minidp.course.i18n import _
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
            value=staleness, min=0, max=max_staleness, description=_("staleness s")
        )
        self.lr = W.FloatSlider(
            value=config.lr, min=0.01, max=0.5, step=0.01, description=_("learning rate η")
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
        if self.diverged:
            verdict = _("diverges")
        else:
            verdict = _("ends at J = {J:.3g}").format(J=float(self.losses[-1]))
        self.label.value = _(
            "s = {s}, η = {lr:.2f}: {verdict} (fresh gradients: J = {J:.3g})"
        ).format(s=s, lr=self.lr.value, verdict=verdict, J=float(fresh[-1]))
        curves = {
            _("fresh gradients (s = 0)"): fresh,
            _("{s} updates late").format(s=s): self.losses,
        }
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
        self.slider = W.IntSlider(value=0, min=0, max=len(self.states) - 1, description=_("step"))
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
            title, text = _("before"), _("each rank holds its own tensor, cut into p chunks")
        else:
            phase = self.moving[0].phase  # data: "reduce-scatter" or "all-gather"
            title = _("step {step} of {steps}: {phase}").format(
                step=self.step, steps=len(self.states) - 1, phase=_(phase)
            )
            sent = ", ".join(
                _("{src}→{dst} chunk {c} ({ms:.2f} ms)").format(
                    src=t.src, dst=t.dst, c=t.chunk, ms=1e3 * (t.end - t.start)
                )
                for t in self.moving
            )
            if phase == "reduce-scatter":
                how = _("{phase}: each message is added to the receiver's chunk. Recorded: {sent}")
            else:
                how = _(
                    "{phase}: each message is copied over the receiver's chunk. Recorded: {sent}"
                )
            text = how.format(phase=_(phase), sent=sent)
        self.label.value = text
        self.fig = plots.ring_step(self.values, self.moving, title)
        draw(self.image, self.fig)

    def _repr_mimebundle_(self, **kwargs):
        return self.ui._repr_mimebundle_(**kwargs)

"""Widgets of notebooks 07-09 (DDP by hand, overlap and buckets, gradient accumulation)."""

import ipywidgets as W
import torch
from torch import Tensor

from minidp import linear
from minidp.course import plots
from minidp.course.i18n import N_, _
from minidp.course.widgets.core import draw
from minidp.events import Event

# ---- 08 overlap and buckets


class TimelineExplorer:
    """One measured training step per DDP variant, drawn as a timeline; a slider picks which.

    traces: {label: the ranks' traces of one step} (see minidp.course.plots.ddp_timeline). State
    after each update: `label`, `seconds` (that step's duration) and `fig`.
    """

    def __init__(self, traces: dict[str, list[list[Event]]], label: str | None = None):
        self.traces = traces
        self.variant = W.SelectionSlider(
            options=list(traces),
            value=label or next(iter(traces)),
            description=_("variant"),
            layout=W.Layout(width="520px"),
        )
        self.label_html = W.HTML()
        self.image = W.Image(format="png")
        self.variant.observe(lambda change: self.update(), names="value")
        self.ui = W.VBox([self.variant, self.label_html, self.image])
        self.update()

    def update(self) -> None:
        self.label = self.variant.value
        ranks = self.traces[self.label]
        self.seconds = plots.step_seconds(ranks)
        launches = sum(1 for event in ranks[0] if event.kind == "launch")
        traced = any(event.kind == "backward end" for event in ranks[0])  # minidp's DDP syncing
        if launches == 1:
            comm = _("with 1 all-reduce per rank")
        else:
            comm = _("with {n} all-reduces per rank").format(n=launches)
        if not traced:  # torch's DDP, or ours inside no_sync()
            comm = _("its communication, if any, not traced")
        self.label_html.value = _("<b>{label}</b>: this step took {ms:.0f} ms, {comm}").format(
            label=self.label, ms=1e3 * self.seconds, comm=comm
        )
        self.fig = plots.ddp_timeline({self.label: ranks}, {self.label: 1e3 * self.seconds})
        draw(self.image, self.fig)

    def _repr_mimebundle_(self, **kwargs):
        return self.ui._repr_mimebundle_(**kwargs)


# ---- 09 gradient accumulation and the large-batch learning rate

# The statuses and the rules' names are data (the notebook asserts and sets them): they stay
# English; only what is shown is translated.
TRACKS, LAGS, DIVERGES = N_("tracks"), N_("lags"), N_("diverges")


class LargeBatchExplorer:
    """Mini-batch SGD on the linear model: a base run (batch B, rate lr) against a run with a
    c times larger batch (the slider `k`), whose rate follows a rule; both against examples seen.

    State after each update: `base` and `large` (J - J* after each step), `large_lr`, `status`
    ("tracks", "lags" or "diverges") and `fig`.
    """

    RULES = {
        N_("same η"): lambda c: 1.0,
        N_("linear: cη"): lambda c: c,
        N_("square root: √c η"): lambda c: c**0.5,
    }

    def __init__(
        self, X: Tensor, y: Tensor, batch: int = 4, lr: float = 0.02, examples: int = 1600
    ):
        self.X, self.y, self.batch, self.lr, self.examples = X, y, batch, lr, examples
        self.start = torch.tensor([-2.0, 5.0])
        self.best = linear.mse_loss(linear.least_squares(X, y), X, y).item()
        # For this quadratic J, SGD's rate must stay below 2 / the largest curvature (notebook 02).
        self.limit = 2 / torch.linalg.eigvalsh(X.T @ X / len(y)).max().item()
        self.base = self._excess(batch, lr)
        ks = [k for k in (1, 2, 4, 8, 16, 32, 64) if k * batch <= len(y)]
        self.k = W.SelectionSlider(options=ks, value=4, description=_("batch × c"))
        rules = [(_(rule), rule) for rule in self.RULES]  # shown translated, valued in English
        self.rule = W.ToggleButtons(options=rules, value="linear: cη")
        self.label = W.HTML()
        self.image = W.Image(format="png")
        for control in (self.k, self.rule):
            control.observe(lambda change: self.update(), names="value")
        self.ui = W.VBox([self.k, self.rule, self.label, self.image])
        self.update()

    def _excess(self, batch: int, lr: float) -> Tensor:
        """J - J* after each step of SGD with this batch and rate, over `examples` examples."""
        path = linear.gradient_descent(
            self.start, self.X, self.y, lr, self.examples // batch, batch_size=batch, seed=batch
        )
        # vmap: J at every theta of the path in one call, with the one definition of J
        return (
            torch.vmap(linear.mse_loss, in_dims=(0, None, None))(path, self.X, self.y) - self.best
        )

    def update(self) -> None:
        k, B = self.k.value, self.batch
        self.large_lr = self.lr * self.RULES[self.rule.value](k)
        self.large = self._excess(k * B, self.large_lr)
        tail = lambda curve: curve[-max(1, len(curve) // 5) :].mean().item()  # the last fifth
        if not tail(self.large) < self.large[0].item():  # also catches inf and nan
            self.status = DIVERGES
        elif tail(self.large) <= 2 * tail(self.base):
            self.status = TRACKS
        else:
            self.status = LAGS
        words = _(
            "batch {large} at η = {large_lr:.3g}, against batch {B} at η = {lr:.3g}. SGD on "
            "this J diverges above η = 2/λ<sub>max</sub> = {limit:.3g} (notebook 02), "
            "whatever the batch."
        ).format(large=k * B, large_lr=self.large_lr, B=B, lr=self.lr, limit=self.limit)
        self.label.value = f"<b>{_(self.status)}</b>: {words}"
        runs = {}
        for label, curve, batch, lr in (
            (_("batch {B}, η = {lr:.3g}").format(B=B, lr=self.lr), self.base, B, self.lr),
            (
                _("batch {B}, η = {lr:.3g}").format(B=k * B, lr=self.large_lr),
                self.large,
                k * B,
                self.large_lr,
            ),
        ):
            seen = torch.arange(len(curve)) * batch
            runs[label] = (seen, curve, torch.full((len(curve),), lr))
        self.fig = plots.large_batch_runs(runs, ylabel=r"$J(\theta) - J(\theta^*)$")
        draw(self.image, self.fig)

    def _repr_mimebundle_(self, **kwargs):
        return self.ui._repr_mimebundle_(**kwargs)

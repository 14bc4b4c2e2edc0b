"""ipywidgets for the notebooks.

Each widget is a small class that holds its state (the values a test reads), its controls, and
an `update()` that the controls' callbacks call; so it works, and is tested, without a browser:
set a control's `.value` in a test and read the state back. Sections follow the course order.
"""

import dataclasses
import io

import ipywidgets as W  # noqa: F401
import matplotlib.pyplot as plt  # noqa: F401  (used as the sections are written)
import torch  # noqa: F401
from IPython.display import display
from torch import Tensor

from minidp import data, memory, model, parameter_server, plots

# ---- 02 gradient descent


def _show(out: W.Output, fig) -> None:
    """Replace what `out` shows by `fig` (a static image: each update draws a new figure)."""
    with out:
        out.clear_output(wait=True)
        display(fig)


def _draw(image: W.Image, fig) -> None:
    """Show `fig` in `image` as a PNG at its own size (an Image stretches to the page otherwise).

    An Image rather than an Output widget: nbconvert and nbclient (which grading uses) emulate
    Output widgets by sending on the kernel's shell channel while they await the cell's reply on
    it, and that can stall the cell for its whole timeout (jupyter/nbclient#312).
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    image.value = buffer.getvalue()
    image.layout.width = f"{round(fig.get_figwidth() * fig.dpi)}px"


class LearningRateExplorer:
    """Gradient descent on the linear model, drawn on J's contours; learning rate and start slide.

    State after each update: `path` (steps + 1, 2), `losses` (steps + 1,), `status` (one of
    "converges", "slow", "diverges") and `fig`.
    """

    def __init__(self, X: Tensor, y: Tensor, lr: float = 0.1, start=(-2.0, 5.0), steps: int = 30):
        self.X, self.y = X, y
        self.best = model.mse_loss(model.least_squares(X, y), X, y).item()  # J at the minimum
        style = {"description_width": "initial"}
        self.lr = W.FloatLogSlider(
            value=lr,
            base=10,
            min=-2.5,
            max=0,
            step=0.05,
            description="learning rate α",
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
        self.path = model.gradient_descent(start, self.X, self.y, self.lr.value, self.steps.value)
        self.losses = torch.stack([model.mse_loss(theta, self.X, self.y) for theta in self.path])
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
        self.fig = plots.descent_paths(self.X, self.y, {f"α = {self.lr.value:.3g}": self.path})
        _draw(self.image, self.fig)

    def _repr_mimebundle_(self, **kwargs):
        return self.ui._repr_mimebundle_(**kwargs)


# ---- 03 gradient averaging


class GradientAveraging:
    """K simulated workers, each with a contiguous shard of (X, y): their gradients at theta and
    the mean, which equals the full-batch gradient; K is a slider over the divisors of m.

    State after each update: `grads` (K, n), `mean` (n,), `full` (n,) and `fig`.
    """

    def __init__(self, X: Tensor, y: Tensor, theta: Tensor, k: int = 4, max_k: int = 12):
        self.X, self.y, self.theta = X, y, theta
        self.full = model.mse_grad(theta, X, y)  # what the workers must agree on, whatever K
        divisors = [d for d in range(1, max_k + 1) if len(y) % d == 0]  # equal shards only
        self.k = W.SelectionSlider(options=divisors, value=k, description="workers K")
        self.label = W.HTML()
        self.image = W.Image(format="png")
        self.k.observe(lambda change: self.update(), names="value")
        self.ui = W.VBox([self.k, self.label, self.image])
        self.update()

    def update(self) -> None:
        K = self.k.value
        shards = [(data.rank_slice(self.X, r, K), data.rank_slice(self.y, r, K)) for r in range(K)]
        self.grads = torch.stack([model.mse_grad(self.theta, Xr, yr) for Xr, yr in shards])
        self.mean = model.average_gradients(list(self.grads))
        gap = (self.mean - self.full).abs().max().item()
        self.label.value = (
            f"{K} workers with {len(self.y) // K} examples each; "
            f"largest difference between their mean and the full-batch gradient: {gap:.1e}"
        )
        self.fig = plots.worker_gradients(self.grads, self.mean, self.full)
        _draw(self.image, self.fig)

    def _repr_mimebundle_(self, **kwargs):
        return self.ui._repr_mimebundle_(**kwargs)


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
            value=config.lr, min=0.01, max=0.5, step=0.01, description="learning rate α"
        )
        self.label = W.HTML()
        self.out = W.Output()
        for control in (self.staleness, self.lr):
            control.observe(lambda change: self.update(), names="value")
        self.ui = W.VBox([W.HBox([self.staleness, self.lr]), self.label, self.out])
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
            f"s = {s}, α = {self.lr.value:.2f}: {verdict} (fresh gradients: J = {fresh[-1]:.3g})"
        )
        curves = {"fresh gradients (s = 0)": fresh, f"{s} updates late": self.losses}
        # A diverging curve reaches inf; clip so the plot still shows where it went.
        curves = {k: v.nan_to_num(nan=1e6, posinf=1e6).clamp(max=1e6) for k, v in curves.items()}
        self.fig = plots.loss_curves(curves)
        _show(self.out, self.fig)

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
        self.out = W.Output()
        self.slider.observe(lambda change: self.update(), names="value")
        self.ui = W.VBox([W.HBox([self.play, self.slider]), self.label, self.out])
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
        _show(self.out, self.fig)

    def _repr_mimebundle_(self, **kwargs):
        return self.ui._repr_mimebundle_(**kwargs)


# ---- 08 overlap and buckets


class TimelineExplorer:
    """One measured training step per DDP variant, drawn as a timeline; a slider picks which.

    traces: {label: the ranks' traces of one step} (see minidp.plots.ddp_timeline). State after
    each update: `label`, `seconds` (that step's duration) and `fig`.
    """

    def __init__(self, traces: dict[str, list[list[tuple]]], label: str | None = None):
        self.traces = traces
        self.variant = W.SelectionSlider(
            options=list(traces),
            value=label or next(iter(traces)),
            description="variant",
            layout=W.Layout(width="520px"),
        )
        self.label_html = W.HTML()
        self.out = W.Output()
        self.variant.observe(lambda change: self.update(), names="value")
        self.ui = W.VBox([self.variant, self.label_html, self.out])
        self.update()

    def update(self) -> None:
        self.label = self.variant.value
        ranks = self.traces[self.label]
        self.seconds = plots.step_seconds(ranks)
        launches = sum(1 for what, _, _ in ranks[0] if what == "launch")
        self.label_html.value = (
            f"<b>{self.label}</b>: this step took {1e3 * self.seconds:.0f} ms, "
            f"with {launches} all-reduce{'s' if launches != 1 else ''} per rank"
        )
        self.fig = plots.ddp_timeline({self.label: ranks}, {self.label: 1e3 * self.seconds})
        _show(self.out, self.fig)

    def _repr_mimebundle_(self, **kwargs):
        return self.ui._repr_mimebundle_(**kwargs)


# ---- 09 gradient accumulation and the large-batch learning rate


class LargeBatchExplorer:
    """Mini-batch SGD on the linear model: a base run (batch B, rate lr) against a run with a
    k times larger batch, whose rate follows a rule; both against examples seen.

    State after each update: `base` and `large` (J - J* after each step), `large_lr`, `status`
    ("tracks", "lags" or "diverges") and `fig`.
    """

    RULES = {
        "same α": lambda k: 1.0,
        "linear: kα": lambda k: k,
        "square root: √k α": lambda k: k**0.5,
    }

    def __init__(
        self, X: Tensor, y: Tensor, batch: int = 4, lr: float = 0.02, examples: int = 1600
    ):
        self.X, self.y, self.batch, self.lr, self.examples = X, y, batch, lr, examples
        self.start = torch.tensor([-2.0, 5.0])
        self.best = model.mse_loss(model.least_squares(X, y), X, y).item()
        # For this quadratic J, SGD's rate must stay below 2 / the largest curvature (notebook 02).
        self.limit = 2 / torch.linalg.eigvalsh(X.T @ X / len(y)).max().item()
        self.base = self._excess(batch, lr)
        ks = [k for k in (1, 2, 4, 8, 16, 32, 64) if k * batch <= len(y)]
        self.k = W.SelectionSlider(options=ks, value=4, description="batch × k")
        self.rule = W.ToggleButtons(options=list(self.RULES), value="linear: kα")
        self.label = W.HTML()
        self.out = W.Output()
        for control in (self.k, self.rule):
            control.observe(lambda change: self.update(), names="value")
        self.ui = W.VBox([self.k, self.rule, self.label, self.out])
        self.update()

    def _excess(self, batch: int, lr: float) -> Tensor:
        """J - J* after each step of SGD with this batch and rate, over `examples` examples."""
        path = model.gradient_descent(
            self.start, self.X, self.y, lr, self.examples // batch, batch_size=batch, seed=batch
        )
        # vmap: J at every theta of the path in one call, with the one definition of J
        return torch.vmap(model.mse_loss, in_dims=(0, None, None))(path, self.X, self.y) - self.best

    def update(self) -> None:
        k, B = self.k.value, self.batch
        self.large_lr = self.lr * self.RULES[self.rule.value](k)
        self.large = self._excess(k * B, self.large_lr)
        tail = lambda curve: curve[-max(1, len(curve) // 5) :].mean().item()  # the last fifth
        if not tail(self.large) < self.large[0].item():  # also catches inf and nan
            self.status = "diverges"
        elif tail(self.large) <= 2 * tail(self.base):
            self.status = "tracks"
        else:
            self.status = "lags"
        self.label.value = (
            f"<b>{self.status}</b>: batch {k * B} at α = {self.large_lr:.3g}, against batch {B} "
            f"at α = {self.lr:.3g}. SGD on this J diverges above α = 2/λ<sub>max</sub> = "
            f"{self.limit:.3g} (notebook 02), whatever the batch."
        )
        runs = {}
        for label, curve, batch, lr in (
            (f"batch {B}, α = {self.lr:.3g}", self.base, B, self.lr),
            (f"batch {k * B}, α = {self.large_lr:.3g}", self.large, k * B, self.large_lr),
        ):
            seen = torch.arange(len(curve)) * batch
            runs[label] = (seen, curve, torch.full((len(curve),), lr))
        self.fig = plots.large_batch_runs(runs, ylabel=r"$J(\theta) - J(\theta^*)$")
        _show(self.out, self.fig)

    def _repr_mimebundle_(self, **kwargs):
        return self.ui._repr_mimebundle_(**kwargs)


# ---- 11 beyond data parallelism


class MemoryCalculator:
    """Memory per GPU of training a model (minidp.memory): pick the model, the GPU, the number of
    GPUs, how they split the model, ZeRO stage, precision, micro-batch and recomputation.

    State after each update: `setup` (memory.Setup), `parts` (bytes by part, or None when the
    GPUs do not split that way), `total` (bytes), `status` ("fits", "does not fit" or "invalid")
    and `fig`.
    """

    def __init__(self, model: str = "GPT-2 XL", gpu: str = "A100 80GB", gpus: int = 8):
        style = {"description_width": "initial"}
        self.model = W.Dropdown(options=list(memory.MODELS), value=model, description="model")
        self.gpu = W.Dropdown(options=list(memory.GPUS), value=gpu, description="GPU")
        powers = [2**i for i in range(11)]  # 1 to 1024 GPUs
        self.gpus = W.SelectionSlider(options=powers, value=gpus, description="GPUs", style=style)
        self.zero_stage = W.ToggleButtons(
            options=[0, 1, 2, 3], description="ZeRO stage", style=style
        )
        self.precision = W.ToggleButtons(
            options=list(memory.PRECISIONS), value="bf16 mixed", description="precision"
        )
        split = dict(style=style, layout=W.Layout(width="180px"))  # GPUs per tensor/pipeline group
        self.tensor_parallel = W.Dropdown(
            options=[1, 2, 4, 8], description="tensor parallel", **split
        )
        self.pipeline_parallel = W.Dropdown(
            options=[1, 2, 4, 8, 16], description="pipeline parallel", **split
        )
        self.micro_batch = W.SelectionSlider(options=[1, 2, 4, 8, 16, 32], value=1,
                                             description="micro-batch", style=style)  # fmt: skip
        self.recompute = W.ToggleButtons(options=list(memory.RECOMPUTE), description="recompute")
        self.controls = [self.model, self.gpu, self.gpus, self.zero_stage, self.precision,
                         self.tensor_parallel, self.pipeline_parallel, self.micro_batch,
                         self.recompute]  # fmt: skip
        self.label = W.HTML()
        self.out = W.Output()
        for control in self.controls:
            control.observe(lambda change: self.update(), names="value")
        self.ui = W.VBox(
            [
                W.HBox([self.model, self.gpu]),
                W.HBox([self.gpus, self.tensor_parallel, self.pipeline_parallel]),
                self.zero_stage,
                self.precision,
                W.HBox([self.micro_batch]),
                self.recompute,
                self.label,
                self.out,
            ]
        )
        self.update()

    def update(self) -> None:
        spec, capacity = memory.MODELS[self.model.value], memory.GPUS[self.gpu.value]
        self.setup = memory.Setup(
            gpus=self.gpus.value,
            zero_stage=self.zero_stage.value,
            precision=self.precision.value,
            tensor_parallel=self.tensor_parallel.value,
            pipeline_parallel=self.pipeline_parallel.value,
            micro_batch=self.micro_batch.value,
            recompute=self.recompute.value,
        )
        try:
            self.parts = memory.per_gpu(spec, self.setup)
        except ValueError as e:  # tensor x pipeline larger than the number of GPUs
            self.parts, self.total, self.status = None, 0.0, "invalid"
            self.label.value = f"<b>invalid</b>: {e}"
            self.fig = None
            with self.out:
                self.out.clear_output()
            return
        self.total = sum(self.parts.values())
        self.status = "fits" if self.total <= capacity else "does not fit"
        s = self.setup
        self.label.value = (
            f"<b>{self.status}</b>: {self.total / memory.GB:,.1f} GB on the busiest GPU of "
            f"{s.gpus} ({s.data_parallel} replicas of {s.tensor_parallel * s.pipeline_parallel} "
            f"GPU{'s' if s.tensor_parallel * s.pipeline_parallel > 1 else ''}); "
            f"one {self.gpu.value} holds {capacity / memory.GB:,.0f} GB"
        )
        self.fig = plots.memory_bar(self.parts, capacity, self.gpu.value)
        _show(self.out, self.fig)

    def _repr_mimebundle_(self, **kwargs):
        return self.ui._repr_mimebundle_(**kwargs)

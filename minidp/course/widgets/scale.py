"""Widgets of notebooks 10-11 (training a GPT, beyond data parallelism)."""

from dataclasses import replace

import ipywidgets as W

from minidp import memory
from minidp.course import plots
from minidp.course.i18n import N_, _
from minidp.course.widgets.core import draw

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
        self.model = W.Dropdown(options=list(memory.MODELS), value=model, description=_("model"))
        self.gpu = W.Dropdown(options=list(memory.GPUS), value=gpu, description="GPU")
        powers = [2**i for i in range(11)]  # 1 to 1024 GPUs
        self.gpus = W.SelectionSlider(
            options=powers, value=gpus, description=_("GPUs (G)"), style=style
        )
        self.zero_stage = W.ToggleButtons(
            options=[0, 1, 2, 3], description=_("ZeRO stage"), style=style
        )
        self.precision = W.ToggleButtons(
            options=list(memory.PRECISIONS), value="bf16 mixed", description=_("precision")
        )
        split = dict(style=style, layout=W.Layout(width="180px"))  # GPUs per tensor/pipeline group
        self.tensor_parallel = W.Dropdown(
            options=[1, 2, 4, 8], description=_("tensor parallel (τ)"), **split
        )
        self.pipeline_parallel = W.Dropdown(
            options=[1, 2, 4, 8, 16], description=_("pipeline stages (S)"), **split
        )
        self.micro_batch = W.SelectionSlider(
            options=[1, 2, 4, 8, 16, 32], value=1, description=_("micro-batch"), style=style
        )
        self.recompute = W.ToggleButtons(options=list(memory.RECOMPUTE), description=_("recompute"))
        self.controls = [
            self.model,
            self.gpu,
            self.gpus,
            self.zero_stage,
            self.precision,
            self.tensor_parallel,
            self.pipeline_parallel,
            self.micro_batch,
            self.recompute,
        ]
        self.label = W.HTML()
        self.image = W.Image(format="png")
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
                self.image,
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
            self.parts, self.total, self.status = None, 0.0, N_("invalid")
            self.label.value = f"<b>{_(self.status)}</b>: {e}"
            self.fig = None
            self.image.value = b""
            return
        self.total = sum(self.parts.values())
        self.status = N_("fits") if self.total <= capacity else N_("does not fit")
        s = self.setup
        group = s.tensor_parallel * s.pipeline_parallel
        self.label.value = _(
            "<b>{status}</b>: {total:,.1f} GB on the busiest GPU of G = {G} (K = {K} replicas of "
            "τ × S = {group}); one {gpu} holds {capacity:,.0f} GB"
        ).format(
            status=_(self.status),
            total=self.total / memory.GB,
            G=s.gpus,
            K=s.data_parallel,
            group=(_("{n} GPUs") if group > 1 else _("{n} GPU")).format(n=group),
            gpu=self.gpu.value,
            capacity=capacity / memory.GB,
        )
        if s.tensor_parallel > 1:  # the activations' assumption, said where it matters
            alone = replace(s, sequence_parallel=False)
            without = memory.per_gpu(spec, alone)["activations"] / memory.GB
            self.label.value += _(
                "<br>Activations assume sequence parallelism with the tensor parallelism; "
                "tensor parallelism alone would leave {without:,.1f} GB of them (not {shown:,.1f})"
            ).format(without=without, shown=self.parts["activations"] / memory.GB)
        self.fig = plots.memory_bar(self.parts, capacity, self.gpu.value)
        draw(self.image, self.fig)

    def _repr_mimebundle_(self, **kwargs):
        return self.ui._repr_mimebundle_(**kwargs)

"""Widgets of notebooks 10-11 (training a GPT, beyond data parallelism)."""

from dataclasses import replace

import ipywidgets as W

from minidp import memory
from minidp.course import plots
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
        self.model = W.Dropdown(options=list(memory.MODELS), value=model, description="model")
        self.gpu = W.Dropdown(options=list(memory.GPUS), value=gpu, description="GPU")
        powers = [2**i for i in range(11)]  # 1 to 1024 GPUs
        self.gpus = W.SelectionSlider(
            options=powers, value=gpus, description="GPUs (G)", style=style
        )
        self.zero_stage = W.ToggleButtons(
            options=[0, 1, 2, 3], description="ZeRO stage", style=style
        )
        self.precision = W.ToggleButtons(
            options=list(memory.PRECISIONS), value="bf16 mixed", description="precision"
        )
        split = dict(style=style, layout=W.Layout(width="180px"))  # GPUs per tensor/pipeline group
        self.tensor_parallel = W.Dropdown(
            options=[1, 2, 4, 8], description="tensor parallel (τ)", **split
        )
        self.pipeline_parallel = W.Dropdown(
            options=[1, 2, 4, 8, 16], description="pipeline stages (S)", **split
        )
        self.micro_batch = W.SelectionSlider(
            options=[1, 2, 4, 8, 16, 32], value=1, description="micro-batch", style=style
        )
        self.recompute = W.ToggleButtons(options=list(memory.RECOMPUTE), description="recompute")
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
            self.parts, self.total, self.status = None, 0.0, "invalid"
            self.label.value = f"<b>invalid</b>: {e}"
            self.fig = None
            self.image.value = b""
            return
        self.total = sum(self.parts.values())
        self.status = "fits" if self.total <= capacity else "does not fit"
        s = self.setup
        self.label.value = (
            f"<b>{self.status}</b>: {self.total / memory.GB:,.1f} GB on the busiest GPU of "
            f"G = {s.gpus} (K = {s.data_parallel} replicas of "
            f"τ × S = {s.tensor_parallel * s.pipeline_parallel} "
            f"GPU{'s' if s.tensor_parallel * s.pipeline_parallel > 1 else ''}); "
            f"one {self.gpu.value} holds {capacity / memory.GB:,.0f} GB"
        )
        if s.tensor_parallel > 1:  # the activations' assumption, said where it matters
            alone = replace(s, sequence_parallel=False)
            without = memory.per_gpu(spec, alone)["activations"] / memory.GB
            self.label.value += (
                f"<br>Activations assume sequence parallelism with the tensor parallelism; "
                f"tensor parallelism alone would leave {without:,.1f} GB of them "
                f"(not {self.parts['activations'] / memory.GB:,.1f})"
            )
        self.fig = plots.memory_bar(self.parts, capacity, self.gpu.value)
        draw(self.image, self.fig)

    def _repr_mimebundle_(self, **kwargs):
        return self.ui._repr_mimebundle_(**kwargs)

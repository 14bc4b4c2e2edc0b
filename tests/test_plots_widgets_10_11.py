"""Figures and the memory calculator of notebooks 10-11, without a browser or a screen.

A figure is checked by what it holds (bars, lines, labels); the widget by setting a control's
`.value`, as a learner's click would, and reading its state back.
"""

import math

import matplotlib

matplotlib.use("Agg")

import pytest
from matplotlib.patches import Rectangle

from minidp import memory, model_parallel
from minidp.course import plots, widgets


def bars(ax) -> list[Rectangle]:
    return [p for p in ax.patches if isinstance(p, Rectangle)]


def texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


# ---- 10


def fake_metrics(steps: int = 30) -> dict:
    log = [{"step": s, "loss": 5.5 - s / 10} for s in range(1, steps + 1)]
    val = [{"step": s, "val_loss": 5.0 - s / 10} for s in (10, 20, 30)]
    return {"log": log, "val": val, "params": 1234, "world_size": 2}


def test_training_curves_show_train_val_and_the_uniform_guess():
    ax = plots.training_curves(fake_metrics()).axes[0]
    train, val, uniform = ax.get_lines()
    assert len(train.get_xdata()) == 30 and list(val.get_xdata()) == [10, 20, 30]
    assert list(uniform.get_ydata()) == [math.log(256)] * 2
    assert "2 workers" in ax.get_title() and "1,234" in ax.get_title()


def test_scaling_draws_measured_and_ideal_bars_with_the_efficiency():
    fig = plots.scaling({"small": {1: 100.0, 2: 150.0}, "large": {1: 10.0, 2: 19.0}})
    ax = fig.axes[0]
    heights = sorted(round(b.get_height(), 6) for b in bars(ax) if b.get_height() > 0)
    # measured and ideal (K x one worker's) for each run: 100, 100, 150, 200; 10, 10, 19, 20
    assert heights == [10, 10, 19, 20, 100, 100, 150, 200]
    assert {"1.00", "0.75", "0.95"} <= set(texts(ax))


# ---- 11


def test_replica_memory_shares_add_up_and_totals_face_the_gpu():
    parts = {n: memory.per_gpu(s, memory.Setup(gpus=1)) for n, s in memory.MODELS.items()}
    fig = plots.replica_memory(parts, memory.GPUS["H100 80GB"], "H100 80GB")
    share_ax, total_ax = fig.axes
    assert len(bars(share_ax)) == 4 * len(parts)
    right_ends = [b.get_x() + b.get_width() for b in bars(share_ax)]
    assert max(right_ends) == pytest.approx(1.0)
    assert len(bars(total_ax)) == len(parts) and total_ax.get_xscale() == "log"
    assert total_ax.get_lines()[0].get_xdata()[0] == pytest.approx(80)


def test_zero_stages_reproduce_the_papers_figure():
    ax = plots.zero_stages(7.5e9, 64).axes[0]
    assert texts(ax) == ["120.0 GB", "31.4 GB", "16.6 GB", "1.9 GB"]
    assert len(bars(ax)) == 12  # weights, gradients, optimizer state at each of 4 stages


@pytest.mark.parametrize("t", [2, 4])
def test_tensor_parallel_mlp_draws_each_gpus_shards(t):
    ax = plots.tensor_parallel_mlp(t).axes[0]
    labels = texts(ax)
    assert all(f"$W_{{1,{r}}}$" in labels and f"$W_{{2,{r}}}$" in labels for r in range(t))
    assert sum("GPU" in s for s in labels) == t


def test_pipeline_schedule_draws_every_piece_of_work():
    ax = plots.pipeline_schedule(4, 8).axes[0]
    labels = texts(ax)
    assert len(labels) == 2 * 4 * 8 and "F7" in labels and "B0" in labels
    assert f"{model_parallel.bubble_fraction(4, 8):.0%}" in ax.get_title()


def test_parallel_layout_draws_every_gpu():
    ax = plots.parallel_layout(2, 2, 2).axes[0]
    assert sum(s.startswith("GPU ") for s in texts(ax)) == 8
    assert len(bars(ax)) == 8 + 4  # a square per GPU, a dashed box per replica and stage


def test_memory_bar_stacks_the_parts():
    parts = {"weights": 2e9, "gradients": 2e9, "optimizer": 12e9, "activations": 4e9}
    ax = plots.memory_bar(parts, 24e9, "RTX 4090 24GB").axes[0]
    assert [round(b.get_width()) for b in bars(ax)] == [2, 2, 12, 4]
    assert ax.get_lines()[0].get_xdata()[0] == pytest.approx(24)


# ---- the memory calculator


def test_calculator_starts_from_its_arguments():
    calc = widgets.MemoryCalculator(model="GPT-2 XL", gpu="A100 80GB", gpus=8)
    spec = memory.MODELS["GPT-2 XL"]
    assert calc.total == pytest.approx(sum(memory.per_gpu(spec, memory.Setup(gpus=8)).values()))
    assert calc.status == "fits" and "fits" in calc.label.value
    assert calc.fig is not None


def test_calculator_follows_its_controls():
    calc = widgets.MemoryCalculator(model="GPT-2 XL", gpu="A100 80GB", gpus=8)
    calc.model.value = "Llama 2 7B"
    assert calc.status == "does not fit"
    before = calc.parts["optimizer"]
    calc.zero_stage.value = 1
    assert calc.parts["optimizer"] == pytest.approx(before / 8)
    calc.zero_stage.value = 3
    calc.recompute.value = "attention"
    assert calc.status == "fits" and calc.setup.recompute == "attention"
    calc.precision.value = "fp32"
    assert calc.parts["weights"] == pytest.approx(4 * memory.MODELS["Llama 2 7B"].params / 8)
    calc.gpu.value = "RTX 4090 24GB"
    assert calc.status == "does not fit"


def test_calculator_says_it_assumes_sequence_parallelism_with_tensor_parallelism():
    calc = widgets.MemoryCalculator(model="Llama 2 7B", gpus=8)
    assert "sequence parallelism" not in calc.label.value
    calc.tensor_parallel.value = 8
    assert "sequence parallelism" in calc.label.value
    alone = memory.Setup(gpus=8, tensor_parallel=8, sequence_parallel=False)
    without = memory.per_gpu(memory.MODELS["Llama 2 7B"], alone)["activations"]
    assert f"{without / memory.GB:,.1f} GB" in calc.label.value
    assert without > calc.parts["activations"]


def test_calculator_says_when_the_gpus_do_not_split():
    calc = widgets.MemoryCalculator(gpus=4)
    calc.tensor_parallel.value = 8
    assert calc.status == "invalid" and calc.parts is None and "do not split" in calc.label.value
    calc.gpus.value = 16
    assert calc.status == "fits" and calc.setup.data_parallel == 2

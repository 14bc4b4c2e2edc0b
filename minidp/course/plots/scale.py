"""Figures of notebooks 10-11 (training a GPT, beyond data parallelism)."""

import math

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from minidp import memory, model_parallel
from minidp.course.i18n import N_, _

# ---- 10 training a GPT


def training_curves(metrics: dict) -> Figure:
    """Train loss at every step and validation loss where it was measured, from the metrics of
    minidp.train.run; the uniform guess over 256 bytes, log 256, for scale."""
    fig = Figure(figsize=(6.5, 3.8), layout="constrained")
    ax = fig.subplots()
    steps, losses = zip(*[(row["step"], row["loss"]) for row in metrics["log"]], strict=True)
    ax.plot(steps, losses, linewidth=1, label=_("train: each step's own batch"))
    val_steps, val = zip(*[(row["step"], row["val_loss"]) for row in metrics["val"]], strict=True)
    ax.plot(val_steps, val, "o-", label=_("validation: the same held-out text each time"))
    ax.axhline(math.log(256), color="0.6", linestyle=":", label=_("uniform guess: log 256 ≈ 5.55"))
    ax.set(xlabel=_("step"), ylabel=_("cross-entropy (nats per byte)"))
    title = _("{params:,} parameters on {K} workers")
    ax.set_title(title.format(params=metrics["params"], K=metrics["world_size"]))
    ax.legend(fontsize=8)
    return fig


def lr_schedule(lrs: list[float], warmup_steps: int) -> Figure:
    """The learning rate at every step of a run (minidp.train.lr_at), the end of warmup marked."""
    fig = Figure(figsize=(6.5, 3.0), layout="constrained")
    ax = fig.subplots()
    ax.plot(range(len(lrs)), lrs, color="C0", label="lr_at(step, config)")
    warmup = _("end of warmup, step {step}").format(step=warmup_steps)
    ax.axvline(warmup_steps, color="0.6", linestyle=":", label=warmup)
    ax.set(xlabel=_("step"), ylabel=_("learning rate η"), ylim=(0, 1.1 * max(lrs)))
    ax.legend(fontsize=8)
    return fig


def scaling(tokens_per_s: dict[str, dict[int, float]]) -> Figure:
    """Measured tokens/s at each number of workers K, per model, in front of the ideal K times
    one worker's (hollow); the scaling efficiency, measured / ideal, above each bar."""
    fig = Figure(figsize=(6.5, 3.8), layout="constrained")
    ax = fig.subplots()
    x = 0.0
    for i, (label, runs) in enumerate(tokens_per_s.items()):
        one = runs[1]
        for k, measured in sorted(runs.items()):
            ax.bar(x, k * one, width=0.8, fill=False, edgecolor="0.5", linestyle="--")
            ax.bar(x, measured, width=0.8, color=f"C{i}", label=label if k == 1 else None)
            ax.text(
                x,
                max(measured, k * one),
                f"{measured / (k * one):.2f}",
                ha="center",
                va="bottom",
                fontsize=8,
            )
            ax.text(x, 0, f"K={k}", ha="center", va="bottom", fontsize=8, color="w")
            x += 1
        x += 0.5
    ax.bar(0, 0, fill=False, edgecolor="0.5", linestyle="--", label=_("ideal: K × one worker's"))
    ax.set(xticks=[], ylabel=_("tokens / s (all workers)"))
    ax.set_title(_("Throughput at the same global batch; numbers: scaling efficiency"))
    ax.legend(fontsize=8)
    return fig


# ---- 11 beyond data parallelism

# Keys are memory.per_gpu's parts, also shown as legend labels (translated where drawn).
PART_COLOURS = {
    N_("weights"): "C0",
    N_("gradients"): "C1",
    N_("optimizer"): "C2",
    N_("activations"): "C3",
}


def replica_memory(parts: dict[str, dict[str, float]], gpu_bytes: float, gpu: str) -> Figure:
    """What one replica of each model holds (bytes by part, from minidp.memory.per_gpu): as
    shares of its total (left), and as totals against one GPU's memory (right, log scale)."""
    fig = Figure(figsize=(10, 0.5 * len(parts) + 1.8), layout="constrained")
    share_ax, total_ax = fig.subplots(1, 2, sharey=True)
    names = list(parts)[::-1]  # the first model on top
    for y, name in enumerate(names):
        total, left = sum(parts[name].values()), 0.0
        for part, value in parts[name].items():
            share_ax.barh(
                y,
                value / total,
                left=left,
                color=PART_COLOURS[part],
                label=_(part) if y == 0 else None,
            )
            left += value / total
        total_ax.barh(y, total / memory.GB, color="0.4")
        total_ax.text(
            total / memory.GB, y, f" {total / memory.GB:,.0f} GB", va="center", fontsize=8
        )
    share_ax.set(
        yticks=range(len(names)), yticklabels=names, xlim=(0, 1), xlabel=_("share of total")
    )
    share_ax.legend(fontsize=8, ncols=4, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    total_ax.axvline(gpu_bytes / memory.GB, color="k", linestyle="--", label=gpu)
    total_ax.set(xscale="log", xlabel=_("GB per replica"))
    total_ax.set_xlim(right=total_ax.get_xlim()[1] * 4)  # room for the labels
    total_ax.legend(fontsize=8, loc="lower right")
    return fig


def zero_stages(params: float, dp: int, precision: str = "bf16 mixed") -> Figure:
    """Model states per GPU at ZeRO stages 0-3 over dp ranks, as in the ZeRO paper's figure 1."""
    fig = Figure(figsize=(6.5, 3.8), layout="constrained")
    ax = fig.subplots()
    names = [
        _("0: replicate all"),
        _("1: shard\noptimizer state"),
        _("2: ... and\ngradients"),
        _("3: ... and\nweights"),
    ]
    for stage in range(4):
        bottom = 0.0
        for part, value in memory.state_bytes(params, precision, stage, dp).items():
            ax.bar(
                stage,
                value / memory.GB,
                bottom=bottom,
                color=PART_COLOURS[part],
                label=_(part) if stage == 0 else None,
            )
            bottom += value / memory.GB
        ax.text(stage, bottom, f"{bottom:.1f} GB", ha="center", va="bottom", fontsize=8)
    ax.set(xticks=range(4), xticklabels=names, ylabel=_("GB per GPU"))
    title = _("{params:g}B parameters, {precision} Adam, {dp} data-parallel GPUs")
    ax.set_title(title.format(params=params / 1e9, precision=precision, dp=dp))
    ax.legend(fontsize=8)
    return fig


def _block(ax, x: float, y: float, w: float, h: float, colour, text: str = "") -> None:
    ax.add_patch(plt.Rectangle((x, y), w, h, facecolor=colour, edgecolor="k", linewidth=0.8))
    if text:
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=9)


def tensor_parallel_mlp(t: int = 2) -> Figure:
    """Megatron's MLP on t GPUs (τ in the notebook): W1 split by columns, W2 by rows; one
    all-reduce sums the parts, and every GPU ends with the whole output Z (the second bias is
    added after the sum)."""
    fig = Figure(figsize=(10, 1.3 + 1.1 * t), layout="constrained")
    ax = fig.subplots()
    height = (t - 1) * 1.3 + 1.0
    for r in range(t):
        y, c = (t - 1 - r) * 1.3, f"C{r}"
        ax.text(-0.3, y + 0.5, f"GPU {r}", ha="right", va="center", fontsize=9)
        _block(ax, 0, y, 1.0, 1.0, "0.85", "X")
        _block(ax, 1.5, y, 0.6, 1.0, c, f"$W_{{1,{r}}}$")
        _block(ax, 2.6, y, 0.8, 1.0, c, f"GELU\n$(XW_{{1,{r}}})$")
        _block(ax, 3.9, y + 0.2, 1.0, 0.6, c, f"$W_{{2,{r}}}$")
        _block(ax, 5.4, y, 1.0, 1.0, c, f"$Z_{r}$")
        _block(ax, 7.9, y, 1.0, 1.0, "0.85", "Z")
        for x0, x1 in ((1.0, 1.5), (2.1, 2.6), (3.4, 3.9), (4.9, 5.4), (6.4, 6.9), (7.4, 7.9)):
            ax.annotate("", (x1, y + 0.5), (x0, y + 0.5), arrowprops=dict(arrowstyle="->"))
    _block(ax, 6.9, 0, 0.5, height, "w")
    ax.text(
        7.15,
        height / 2,
        _("all-reduce: Z = Σ Z_r"),
        rotation=90,
        ha="center",
        va="center",
        fontsize=9,
    )
    # mathtext has no CJK fallback: the formula stays outside the translated words
    ax.text(1.8, height + 0.15, "$W_1$: " + _("d × 4d,\ncolumns split"), ha="center", fontsize=9)
    ax.text(4.4, height + 0.15, "$W_2$: " + _("4d × d,\nrows split"), ha="center", fontsize=9)
    ax.set(xlim=(-1.2, 9.1), ylim=(-0.2, height + 0.8), aspect="equal")
    ax.axis("off")
    return fig


def pipeline_schedule(stages: int, micro_batches: int) -> Figure:
    """GPipe's schedule: each stage's forwards (F) and backwards (B) over time, and the bubble."""
    work = model_parallel.gpipe_schedule(stages, micro_batches)
    slots = 1 + max(slot for _, slot, _, _ in work)
    fig = Figure(figsize=(max(6.0, 0.32 * slots + 1.5), 0.45 * stages + 1.3), layout="constrained")
    ax = fig.subplots()
    ax.broken_barh([(0, slots)], (-0.4, stages - 0.2), color="0.92")  # idle unless covered
    for stage, slot, kind, j in work:
        colour = "C0" if kind == "F" else "C1"
        ax.broken_barh([(slot, 1)], (stage - 0.4, 0.8), facecolor=colour, edgecolor="w")
        ax.text(slot + 0.5, stage, f"{kind}{j}", ha="center", va="center", fontsize=7, color="w")
    bubble = model_parallel.bubble_fraction(stages, micro_batches)
    ax.set(
        xlim=(0, slots),
        ylim=(stages - 0.5, -0.5),
        xlabel=_("time (one slot: one micro-batch through one stage)"),
        yticks=range(stages),
        yticklabels=[f"GPU {s}" for s in range(stages)],
    )
    ax.set_title(
        _(
            "GPipe, {stages} stages, {micro_batches} micro-batches: grey is idle, "
            "{bubble:.0%} of the time"
        ).format(stages=stages, micro_batches=micro_batches, bubble=bubble)
    )
    return fig


def parallel_layout(dp: int, tp: int, pp: int) -> Figure:
    """Every GPU of a dp x tp x pp job: rows are pipeline stages, boxes are data-parallel
    replicas' pieces, GPUs inside a box split each matrix (tensor parallel)."""
    fig = Figure(figsize=(1.5 + 1.2 * dp * tp, 0.9 + 1.1 * pp), layout="constrained")
    ax = fig.subplots()
    for rank in range(dp * tp * pp):
        d, p, t = model_parallel.coordinates(rank, dp, tp, pp)
        x, y = d * (tp + 0.5) + t, p * 1.2
        _block(
            ax,
            x + 0.05,
            y + 0.05,
            0.9,
            0.9,
            f"C{d}",
            _("GPU {rank}\nshard {t}").format(rank=rank, t=t),
        )
    for d in range(dp):
        for p in range(pp):
            ax.add_patch(
                plt.Rectangle(
                    (d * (tp + 0.5) - 0.05, p * 1.2 - 0.05),
                    tp + 0.1,
                    1.1,
                    fill=False,
                    linestyle="--",
                )
            )
        ax.text(
            d * (tp + 0.5) + tp / 2, -0.35, _("replica {d}").format(d=d), ha="center", fontsize=9
        )
    for p in range(pp):
        ax.text(
            -0.2, p * 1.2 + 0.5, _("stage {p}").format(p=p), ha="right", va="center", fontsize=9
        )
    ax.set(xlim=(-1.3, dp * (tp + 0.5)), ylim=(pp * 1.2, -0.6), aspect="equal")
    ax.set_title(
        _(
            "K = {dp} replicas, τ = {tp}, S = {pp} stages: G = {G} GPUs\ndashed box: one "
            "tensor-parallel group; row: a pipeline stage; colour: a data-parallel replica"
        ).format(dp=dp, tp=tp, pp=pp, G=dp * tp * pp),
        fontsize=9,
    )
    ax.axis("off")
    return fig


def memory_bar(parts: dict[str, float], gpu_bytes: float, gpu: str) -> Figure:
    """One GPU's memory by part (bytes), stacked, against what the GPU holds (dashed)."""
    fig = Figure(figsize=(7, 1.9), layout="constrained")
    ax = fig.subplots()
    left = 0.0
    for part, value in parts.items():
        ax.barh(0, value / memory.GB, left=left, color=PART_COLOURS[part], label=_(part))
        left += value / memory.GB
    ax.axvline(gpu_bytes / memory.GB, color="k", linestyle="--", label=gpu)
    ax.set(
        yticks=[],
        xlabel=_("GB on the busiest GPU"),
        xlim=(0, 1.15 * max(left, gpu_bytes / memory.GB)),
    )
    ax.legend(fontsize=8, ncols=5, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    return fig

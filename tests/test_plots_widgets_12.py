"""Figures of notebook 12, without a screen: checked by what they hold. The timeline is also
drawn from a real FSDP step's events, so that it keeps up with what minidp.fsdp records."""

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
import torch.distributed as dist
from matplotlib.patches import Rectangle

import minidp
from minidp.course import plots
from minidp.events import Event
from minidp.model import GPT, Block, GPTConfig

pytestmark = pytest.mark.usefixtures("no_orphans")


def bars(ax) -> list[Rectangle]:
    return [p for p in ax.patches if isinstance(p, Rectangle)]


def test_sharded_memory_stacks_three_parts_per_world_size_under_the_prediction():
    parts = lambda k, shard: {
        "weights": 4e6 / shard,
        "gradients": 4e6 / shard,
        "optimizer": 8e6 / k,
    }
    measured = {
        "ZeRO-1": {k: parts(k, 1) for k in (1, 2, 4)},
        "FSDP": {k: parts(k, k) for k in (1, 2, 4)},
    }
    predicted = {
        s: {k: {n: 1.25 * v for n, v in p.items()} for k, p in m.items()}
        for s, m in measured.items()
    }
    fig = plots.sharded_memory(measured, predicted)
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["ZeRO-1", "FSDP"]
    fsdp = axes[1]
    assert len(bars(fsdp)) == 9  # 3 world sizes x 3 parts
    tops = [b.get_y() + b.get_height() for b in bars(fsdp)]
    assert max(tops) == pytest.approx(16.0)  # MB: all of it at K = 1
    ticks = [line.get_ydata()[0] for line in fsdp.lines]
    assert ticks == pytest.approx([20.0, 10.0, 5.0])  # the predictions, not the bars
    fig.canvas.draw()


def test_fsdp_timeline_draws_work_and_collectives_per_rank():
    events = [
        Event("all-gather", 0, 0.000, 0.002, 100),
        Event("forward", 0, 0.002, 0.005),
        Event("all-gather", 1, 0.003, 0.006, 100),
        Event("forward", 1, 0.006, 0.008),
        Event("backward", 1, 0.009, 0.012),
        Event("reduce-scatter", 1, 0.012, 0.014, 100),
        Event("all-reduce", -1, 0.015, 0.016, 10),
    ]
    fig = plots.fsdp_timeline({"with prefetch": [events, events]}, {"with prefetch": 16.0})
    (ax,) = fig.axes
    assert len(bars(ax)) == 2 * len(events)  # every event of both ranks
    assert ax.get_title(loc="left") == "with prefetch: step 16 ms"
    assert min(b.get_x() for b in bars(ax)) == pytest.approx(0.0)  # ms since the first start
    fig.canvas.draw()


def _one_step():
    torch.manual_seed(0)
    model = minidp.FullyShardedDataParallel(
        GPT(GPTConfig(block_size=8, n_layer=2, n_head=2, n_embd=16)), units=(Block,)
    )
    model.events = []
    idx = torch.randint(256, (2, 9), generator=torch.Generator().manual_seed(dist.get_rank()))
    model(idx[:, :-1], idx[:, 1:])[1].backward()
    return model.events


def test_fsdp_timeline_from_a_real_step():
    ranks = minidp.launch(_one_step, 2)
    kinds = {e.kind for events in ranks for e in events}
    assert kinds == {"all-gather", "forward", "backward", "reduce-scatter", "all-reduce"}
    fig = plots.fsdp_timeline({"one step": ranks})
    assert len(bars(fig.axes[0])) == sum(len(events) for events in ranks)
    fig.canvas.draw()

"""Figures and widgets of notebooks 07-09, without a browser or a screen.

A figure is checked by what it holds (lines, bars, labels); a widget by setting a control's
`.value`, as a learner's slider would, and reading its state back. The timeline is also drawn
from a real run's events, so that it keeps up with what minidp.ddp records.
"""

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
import torch.distributed as dist
from matplotlib.patches import Rectangle

import minidp
from minidp import data, model
from minidp.course import plots, widgets
from minidp.events import Event


def bars(ax) -> list[Rectangle]:
    return [p for p in ax.patches if isinstance(p, Rectangle)]


# ---- 07


def test_replica_gaps_draws_one_line_per_run_and_the_tolerance():
    gaps = {"right": torch.tensor([0.0, 1e-16, 2e-16]), "wrong": torch.tensor([0.0, 0.1, 0.2])}
    fig = plots.replica_gaps(gaps, tolerance=1e-12)
    (ax,) = fig.axes
    assert ax.get_yscale() == "log"
    assert [line.get_label() for line in ax.lines] == ["right", "wrong", "tolerance"]
    assert ax.lines[0].get_ydata()[0] == 1e-18  # an exact 0 sits on the floor of the log scale
    fig.canvas.draw()


# ---- 08: synthetic traces, then a real one


def trace(t0: float, buckets: int, ddp: bool = True) -> list[Event]:
    """One rank's step: forward 10 ms, backward 20 ms with a gradient and a bucket every 5 ms,
    the wait for the last bucket, and a 3 ms optimizer step."""
    ms = lambda x: t0 + x / 1e3
    events = [Event("forward", -1, ms(0)), Event("backward", -1, ms(10))]
    if ddp:
        for i in range(buckets):
            events += [Event("grad", i, ms(12 + 5 * i)), Event("launch", i, ms(12 + 5 * i))]
            events.append(Event("done", i, ms(16 + 5 * i)))
        events.append(Event("backward end", -1, ms(30)))
    return events + [
        Event("step", -1, ms(31 + 2 * buckets)),
        Event("end", -1, ms(34 + 2 * buckets)),
    ]


def test_step_seconds_spans_all_ranks():
    ranks = [trace(1.0, 3), trace(1.002, 3)]  # rank 1 starts 2 ms later
    assert plots.step_seconds(ranks) == pytest.approx((1.002 + 0.040) - 1.0)


def test_fastest_step_picks_the_same_step_on_every_rank():
    slow, fast = [trace(0.0, 4), trace(0.0, 4)], [trace(5.0, 1), trace(5.0, 1)]
    steps = [[slow[0], fast[0]], [slow[1], fast[1]]]  # steps[rank][step]
    assert plots.fastest_step(steps) == fast


def test_ddp_timeline_draws_phases_buckets_and_ready_ticks():
    traces = {
        "after-backward": [trace(0.0, 1), trace(0.0, 1)],
        "bucketed": [trace(0.0, 3), trace(0.0, 3)],
        "torch": [trace(0.0, 0, ddp=False), trace(0.0, 0, ddp=False)],  # no DDP events at all
    }
    fig = plots.ddp_timeline(traces, {"after-backward": 50.0, "bucketed": 40.0, "torch": 35.0})
    axes = [ax for ax in fig.axes if ax.get_title(loc="left")]
    assert [ax.get_title(loc="left") for ax in axes] == [
        "after-backward: step 50 ms",
        "bucketed: step 40 ms",
        "torch: step 35 ms",
    ]
    for ax, buckets in zip(axes, (1, 3, 0), strict=True):
        assert len(bars(ax)) == 2 * (3 + buckets)  # per rank: 3 phases and a bar per bucket
        ticks = [line for line in ax.lines if line.get_marker() == "|"]
        assert sum(len(line.get_xdata()) for line in ticks) == 2 * buckets
        labels = [t.get_text() for t in ax.get_yticklabels()]
        assert labels == ["rank 1 comm", "rank 1 work", "rank 0 comm", "rank 0 work"]
    orange = matplotlib.colors.to_rgba(plots.PHASES["backward"])
    backward = [b for b in bars(axes[1]) if b.get_facecolor() == orange]
    assert len(backward) == 2
    assert backward[0].get_width() == pytest.approx(20.0)  # backward: from its start to its end
    # The legend names every colour drawn: three phases and the two alternating bucket colours.
    legend = {patch.get_facecolor() for patch in fig.legends[0].get_patches()}
    drawn = {bar.get_facecolor() for ax in axes for bar in bars(ax)}
    assert drawn <= legend and len(legend) == 5
    fig.canvas.draw()


def _real_traces():
    """Two traced steps of a tiny GPT under our bucketed DDP, as notebook 08 records them."""
    torch.manual_seed(0)
    net = model.GPT(model.GPTConfig(block_size=8, n_layer=2, n_head=2, n_embd=16))
    ddp = minidp.DistributedDataParallel(net, bucket_cap_mb=0.01)
    idx = torch.randint(256, (2, 9), generator=torch.Generator().manual_seed(dist.get_rank()))
    steps = []
    for _ in range(2):
        dist.barrier()
        ddp.events = [Event("forward")]  # the time of an Event is when it is made
        loss = ddp(idx[:, :-1], idx[:, 1:])[1]
        ddp.events.append(Event("backward"))
        loss.backward()
        ddp.events += [Event("step"), Event("end")]
        steps.append(ddp.events)
    return steps, len(ddp.buckets)


def test_ddp_timeline_draws_a_real_run():
    per_rank = minidp.launch(_real_traces, 2, timeout=30)
    n_buckets = per_rank[0][1]
    ranks = plots.fastest_step([steps for steps, _ in per_rank])
    for rank_trace in ranks:
        done = [e.index for e in rank_trace if e.kind == "done"]
        assert sorted(done) == list(range(n_buckets))  # gloo's thread stamped every bucket
    fig = plots.ddp_timeline({"bucketed": ranks})
    assert len(bars(fig.axes[0])) == 2 * (3 + n_buckets)
    fig.canvas.draw()


def test_bucket_sweep_has_the_curve_its_labels_and_the_baselines():
    fig = plots.bucket_sweep(
        [0.25, 1.0, 4.0], [90.0, 70.0, 80.0], {"after-backward": 100.0, "compute": 50.0}, [30, 9, 3]
    )
    (ax,) = fig.axes
    assert ax.get_xscale() == "log"
    curve, *baselines = ax.lines
    assert list(curve.get_ydata()) == [90.0, 70.0, 80.0]
    assert [line.get_label() for line in baselines] == ["after-backward", "compute"]
    assert [t.get_text() for t in ax.texts] == ["30", "9", "3"]


# ---- 09


def test_large_batch_runs_draws_loss_and_rate_per_run():
    seen = torch.arange(1, 5) * 8.0
    runs = {
        "small": (seen, torch.tensor([5.5, 4.0, 3.5, 3.2]), torch.full((4,), 0.1)),
        "diverges": (seen, torch.tensor([5.5, 50.0, float("inf"), float("nan")]), torch.ones(4)),
    }
    fig = plots.large_batch_runs(runs, log=False, ylim=(2.5, 7.0))
    ax_loss, ax_lr = fig.axes
    assert [line.get_label() for line in ax_loss.lines] == ["small", "diverges"]
    assert len(ax_lr.lines) == 2 and ax_loss.get_ylim() == (2.5, 7.0)
    assert ax_loss.get_yscale() == "linear"
    assert plots.large_batch_runs(runs).axes[0].get_yscale() == "log"
    fig.canvas.draw()  # inf and nan do not break the drawing


# ---- widgets


def test_timeline_explorer_shows_the_chosen_variant():
    traces = {"after-backward": [trace(0.0, 1)], "bucketed": [trace(0.0, 4)]}
    w = widgets.TimelineExplorer(traces)
    assert w.label == "after-backward" and "1 all-reduce per rank" in w.label_html.value
    w.variant.value = "bucketed"
    assert w.label == "bucketed" and "4 all-reduces" in w.label_html.value
    assert w.seconds == pytest.approx(plots.step_seconds(traces["bucketed"]))
    assert w.fig.axes[0].get_title(loc="left").startswith("bucketed: step")
    assert "application/vnd.jupyter.widget-view+json" in w._repr_mimebundle_()
    untraced = widgets.TimelineExplorer({"torch": [trace(0.0, 0, ddp=False)]})
    assert (
        "not traced" in untraced.label_html.value
        and "0 all-reduces" not in untraced.label_html.value
    )


@pytest.fixture(scope="module")
def regression():
    return data.linear_data(m=512, x_range=(0.0, 3.0))


def test_large_batch_explorer_tracks_lags_and_diverges(regression):
    X, y = regression
    w = widgets.LargeBatchExplorer(X, y, batch=4, lr=0.02)
    assert w.k.value == 4 and w.rule.value == "linear: cη" and w.status == "tracks"
    assert w.large_lr == pytest.approx(0.08) and len(w.large) == 1600 // 16 + 1
    w.rule.value = "same η"
    assert w.status == "lags" and w.large_lr == pytest.approx(0.02)
    w.rule.value = "square root: √c η"
    assert w.large_lr == pytest.approx(0.04)
    w.rule.value = "linear: cη"
    w.k.value = 32  # 32 η = 0.64 is above 2 / λ_max for this data
    assert w.large_lr > w.limit and w.status == "diverges"
    assert len(w.fig.axes[0].lines) == 2
    assert "diverges" in w.label.value


def test_large_batch_explorer_limit_is_the_stability_limit_of_notebook_02(regression):
    X, y = regression
    w = widgets.LargeBatchExplorer(X, y)
    eigenvalues = torch.linalg.eigvalsh(X.T @ X / len(y))
    assert w.limit == pytest.approx(2 / eigenvalues.max().item())
    assert max(w.k.options) * w.batch <= len(y)  # every batch size on the slider exists

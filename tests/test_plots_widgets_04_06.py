"""Figures and widgets of notebooks 04-06, without a browser or a screen.

A figure is checked by what it holds (cells, lines, arrows); a widget by setting a control's
`.value`, as a learner's slider would, and reading its state back.
"""

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
import torch.distributed as dist
from matplotlib.patches import Circle, Rectangle
from matplotlib.text import Annotation

from minidp import collectives, data, launch
from minidp.course import plots, widgets
from minidp.parameter_server import RoundTime, SGDConfig, delayed_sgd


def cells(ax) -> list[Rectangle]:
    return [p for p in ax.patches if isinstance(p, Rectangle)]


def texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


# ---- 04


def test_contributors_reads_the_digits():
    assert plots.contributors(1, 3) == [0]
    assert plots.contributors(101, 3) == [0, 2]
    assert plots.contributors(2220, 4) == [1, 2, 3]


def test_collective_draws_before_and_after_with_undefined_rows():
    before = [torch.tensor([1.0, 2.0, 3.0]) * 10**r for r in range(3)]
    after = [sum(before), None, None]  # a reduce: only rank 0's result is defined
    fig = plots.collective("reduce", before, after)
    ax_before, ax_after = fig.axes
    assert len(cells(ax_before)) == 9 and texts(ax_before)[:3] == ["1", "2", "3"]
    assert len(cells(ax_after)) == 9  # 3 defined cells and 2 hatched rows of 3
    assert sum(1 for c in cells(ax_after) if c.get_hatch()) == 6
    assert texts(ax_after) == ["111", "222", "333"]
    assert fig._suptitle.get_text() == "reduce"


def test_nan_cells_are_left_empty():
    nan = float("nan")
    before = [torch.tensor([nan] * r + [10.0**r] + [nan] * (3 - r)) for r in range(4)]
    after = [torch.tensor([1.0, 10.0, 100.0, 1000.0])] * 4
    fig = plots.collective("all-gather", before, after)
    assert len(cells(fig.axes[0])) == 4 and len(cells(fig.axes[1])) == 16
    assert [c.get_xy() for c in cells(fig.axes[0])] == [(r, r) for r in range(4)]  # the diagonal


# ---- 05


def test_round_times_has_a_line_per_algorithm_in_each_panel():
    times = [
        {"server": RoundTime(0.01 * k, 0.008 * k), "ring": RoundTime(0.005, 0.004)}
        for k in (1, 2, 3)
    ]
    fig = plots.round_times([1, 2, 3], times)
    for ax in fig.axes:
        assert [line.get_label() for line in ax.lines] == ["server", "ring"]
    assert list(fig.axes[1].lines[0].get_ydata()) == pytest.approx([8, 16, 24])


def test_staleness_effect_and_delay_counts():
    fig = plots.staleness_effect([0, 2, 4], {"η = 0.1": [1.0, 1.1, 1.5], "η = 0.3": [1, 2, 9]})
    assert len(fig.axes[0].lines) == 2
    fig = plots.delay_counts({2: [0, 1, 1, 1], 3: [0, 1, 2, 2, 2, 3]})
    bars = cells(fig.axes[0])
    assert len(bars) == 2 + 4
    assert [b.get_height() for b in bars[:2]] == pytest.approx([0.25, 0.75])


@pytest.fixture(scope="module")
def line_data():
    X, y = data.linear_data(m=64)
    return X.double(), y.double()


def test_staleness_explorer_follows_its_sliders(line_data):
    X, y = line_data
    config = SGDConfig(lr=0.1, steps=40, batch_size=8)
    w = widgets.StalenessExplorer(X, y, config, staleness=0)
    torch.testing.assert_close(w.history, delayed_sgd(X, y, config, 0))
    w.staleness.value = 5
    torch.testing.assert_close(w.history, delayed_sgd(X, y, config, 5))
    assert not w.diverged and "s = 5" in w.label.value
    assert len(w.fig.axes[0].lines) == 2
    w.lr.value = 0.5  # too much for gradients 5 updates late
    assert w.diverged and "diverges" in w.label.value


# ---- 06


def test_cost_model_and_its_fit():
    assert plots.cost_terms("ring", 1200, 4) == (6, 1800)
    assert plots.cost_terms("ring", 1200, 4, duplex=False) == (6, 3600)
    assert plots.cost_terms("naive", 1200, 4) == (6, 7200)
    assert plots.cost_terms("tree", 1200, 4) == (4, 4800)
    assert plots.cost_terms("tree", 1200, 5) == (6, 7200)  # 3 levels for 5 ranks
    alpha, beta = 2e-4, 1e-9
    measured = {
        n: {name: plots.cost_seconds(name, n, 3, alpha, beta) for name in ("ring", "naive")}
        for n in (1e3, 1e5, 1e7)
    }
    assert plots.fit_alpha_beta(measured, 3) == pytest.approx((alpha, beta))
    both = plots.fit_alpha_beta(measured, 3, ("ring", "naive"))
    assert both == pytest.approx((alpha, beta))
    for sizes in measured.values():
        sizes["torch"] = sizes["ring"]
    fig = plots.alpha_beta(measured, 3, alpha, beta)
    labels = [line.get_label() for line in fig.axes[0].lines]
    assert labels.count("torch") == labels.count("ring") == 1  # torch: points only, no model
    assert len(fig.axes[0].lines) == 5
    assert (
        "half-duplex"
        in plots.alpha_beta(measured, 3, alpha, beta, duplex=False).axes[0].get_title()
    )


def _recorded_ring(p: int = 4):
    def work():
        x, record = torch.full((p,), 10.0 ** dist.get_rank()), []
        collectives.ring_all_reduce(x, record=record)
        return x, record

    results = launch(work, p)
    start = torch.stack([torch.full((p,), 10.0**r) for r in range(p)])
    return start, [x for x, _ in results], [t for _, record in results for t in record]


def test_ring_replay_steps_through_a_real_run_and_ends_where_it_did():
    start, finals, transfers = _recorded_ring(4)
    w = widgets.RingReplay(start, transfers)
    assert w.step == 0 and w.moving == [] and torch.equal(w.values, start)
    w.slider.value = 3  # the end of the reduce-scatter: rank r owns chunk r + 1 complete
    assert [t.phase for t in w.moving] == ["reduce-scatter"] * 4
    assert [w.values[r, (r + 1) % 4].item() for r in range(4)] == [1111.0] * 4
    ring_ax, grid_ax = w.fig.axes
    assert sum(isinstance(p, Circle) for p in ring_ax.patches) == 4
    assert sum(isinstance(t, Annotation) for t in ring_ax.texts) == 4  # four arrows
    assert sum(1 for c in cells(grid_ax) if c.get_edgecolor()[:3] != (1.0, 1.0, 1.0)) == 4
    w.slider.value = w.slider.max
    assert [t.phase for t in w.moving] == ["all-gather"] * 4
    assert torch.equal(w.values, torch.stack(finals))

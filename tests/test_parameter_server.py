"""minidp.parameter_server: each server against SGD in one process (delayed_sgd)."""

import pytest
import torch

from minidp import data
from minidp.parameter_server import (
    SGDConfig,
    batch_indices,
    delayed_sgd,
    run_async,
    run_async_free,
    run_sync,
    time_per_round,
)

CONFIG = SGDConfig(lr=0.1, steps=24, batch_size=4, seed=3)


@pytest.fixture(scope="module")
def xy():
    X, y = data.linear_data(m=64, theta=(1.0, -2.0, 0.5), seed=1)
    return X.double(), y.double()  # float64: agreement to rounding, not to a tolerance


def test_batches_are_a_pure_function_of_seed_and_step():
    assert torch.equal(batch_indices(50, 7, 0, 8), batch_indices(50, 7, 0, 8))
    assert not torch.equal(batch_indices(50, 7, 0, 8), batch_indices(50, 8, 0, 8))
    assert not torch.equal(batch_indices(50, 7, 0, 8), batch_indices(50, 7, 1, 8))


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_sync_server_is_sgd_on_the_concatenated_batch(xy, workers):
    X, y = xy
    history = run_sync(X, y, workers, CONFIG)
    reference = delayed_sgd(X, y, CONFIG, staleness=0, batch_size=workers * CONFIG.batch_size)
    assert history.shape == (CONFIG.steps + 1, 3)
    torch.testing.assert_close(history, reference, rtol=0, atol=1e-12)


def test_delayed_sgd_with_staleness_zero_is_plain_sgd(xy):
    X, y = xy
    theta, thetas = torch.zeros(3, dtype=X.dtype), []
    for t in range(CONFIG.steps):
        thetas.append(theta)
        rows = batch_indices(len(y), t, CONFIG.seed, CONFIG.batch_size)
        residual = X[rows] @ theta - y[rows]
        theta = theta - CONFIG.lr * X[rows].T @ residual / len(rows)
    thetas.append(theta)
    torch.testing.assert_close(delayed_sgd(X, y, CONFIG), torch.stack(thetas))


def test_delayed_sgd_uses_the_parameters_of_s_updates_ago(xy):
    X, y = xy
    config = SGDConfig(lr=0.1, steps=5, batch_size=4)
    history = delayed_sgd(X, y, config, staleness=2)
    # Updates 0, 1, 2 all compute at theta_0; update 3 at theta_1, update 4 at theta_2.
    for t, read in [(0, 0), (1, 0), (2, 0), (3, 1), (4, 2)]:
        rows = batch_indices(len(y), t, config.seed, 4)
        grad = X[rows].T @ (X[rows] @ history[read] - y[rows]) / 4
        torch.testing.assert_close(history[t + 1], history[t] - 0.1 * grad)


@pytest.mark.parametrize("workers, staleness", [(1, 0), (3, 0), (2, 1), (3, 2), (2, 5)])
def test_async_with_fixed_staleness_is_delayed_sgd(xy, workers, staleness):
    X, y = xy
    history = run_async(X, y, workers, CONFIG, staleness)
    torch.testing.assert_close(history, delayed_sgd(X, y, CONFIG, staleness), rtol=0, atol=0)


def test_async_with_staleness_zero_is_sequential_sgd_whatever_the_workers(xy):
    X, y = xy
    one, three = run_async(X, y, 1, CONFIG, 0), run_async(X, y, 3, CONFIG, 0)
    assert torch.equal(one, three)


def test_async_is_reproducible_and_staleness_changes_the_path(xy):
    X, y = xy
    first, again = run_async(X, y, 3, CONFIG, 2), run_async(X, y, 3, CONFIG, 2)
    assert torch.equal(first, again)
    assert not torch.allclose(first, run_async(X, y, 3, CONFIG, 0))


def test_negative_staleness_is_refused(xy):
    with pytest.raises(ValueError, match="staleness"):
        run_async(*xy, 2, CONFIG, -1)


@pytest.mark.parametrize("workers", [1, 3])
def test_free_running_async_applies_every_update_once(xy, workers):
    X, y = xy
    history, delays = run_async_free(X, y, workers, CONFIG)
    assert history.shape == (CONFIG.steps + 1, 3)
    assert len(delays) == CONFIG.steps
    # A delay has no upper bound (a worker the OS puts aside can miss many updates), but it is
    # never negative, and the first update is computed at theta_0 before any other exists.
    assert delays[0] == 0 and min(delays) >= 0
    if workers == 1:  # one worker: nothing is ever stale, and it is plain SGD
        torch.testing.assert_close(history, delayed_sgd(X, y, CONFIG), rtol=0, atol=0)
    # It still learns: the loss falls.
    loss = ((X @ history.T - y[:, None]) ** 2).mean(dim=0)
    assert loss[-1] < loss[0] / 4


def test_time_per_round_reports_both_algorithms():
    times = time_per_round(2, numel=1 << 12, repeats=2)
    assert set(times) == {"server", "ring"}
    for t in times.values():
        assert 0 < t.wall < 5 and 0 <= t.busiest < 5

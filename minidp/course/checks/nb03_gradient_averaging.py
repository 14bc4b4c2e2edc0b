"""Checkers of notebook 03, gradient averaging."""

from collections.abc import Callable

import torch
from torch import Tensor

from minidp import data, linear
from minidp.course.checks.core import CheckResult, checker, compare
from minidp.course.checks.nb01_loss import linear_cases


def _worker_grads(theta: Tensor, X: Tensor, y: Tensor, K: int) -> list[Tensor]:
    """Each of K workers' gradient on its shard: worker k's is rows [k m/K, (k+1) m/K) of (X, y)."""
    shard = lambda t, k: data.rank_slice(t, k, K)
    return [linear.mse_grad(theta, shard(X, k), shard(y, k)) for k in range(K)]


def _sharded_cases() -> list[tuple]:
    """(theta, X, y, K) with m divisible by K; K * K is never m, so /K twice and /m differ."""
    _, m12, m30 = linear_cases()  # (theta, X, y) with m = 12 and m = 30
    return [(*m12, 3), (*m30, 5), (*m30, 2)]


@checker("03.worker_grads")
def _check_worker_grads(fn: Callable) -> CheckResult:
    mistakes = [
        (
            lambda t, X, y, K: [linear.mse_grad(t, X[k::K], y[k::K]) for k in range(K)],
            "worker k takes the contiguous rows [k m/K, (k+1) m/K), as minidp.data.rank_slice does",
        ),
        (
            lambda t, X, y, K: [g / K for g in _worker_grads(t, X, y, K)],
            "each worker's loss is the mean over its own m/K examples: divide by m/K, not m",
        ),
        (
            lambda t, X, y, K: [g * len(y) / K for g in _worker_grads(t, X, y, K)],
            "each worker's loss is a mean, not a sum: divide by its m/K examples",
        ),
        (
            lambda t, X, y, K: [linear.mse_grad(t, X, y)] * K,
            "each worker sees only its shard of the data, not all of it",
        ),
    ]
    return compare("03.worker_grads", fn, _worker_grads, _sharded_cases(), mistakes)


@checker("03.weighted_average")
def _check_weighted_average(fn: Callable) -> CheckResult:
    g = torch.Generator().manual_seed(3)
    cases = [
        ([torch.randn(2, generator=g) for _ in range(3)], [2, 5, 9]),
        ([torch.randn(3, generator=g) for _ in range(4)], [10, 30, 60, 20]),
        ([torch.randn(2, generator=g) for _ in range(2)], [4, 4]),
    ]
    weighted_sum = lambda grads, sizes: sum(m * gk for m, gk in zip(sizes, grads, strict=True))
    mistakes = [
        (
            lambda grads, sizes: torch.stack(grads).mean(0),
            "a plain mean treats unequal shards alike: weight shard k by m_k / m",
        ),
        (weighted_sum, "divide by the total number of examples m = sum of the m_k"),
        (lambda grads, sizes: sum(grads), "that is a sum: weight each shard by m_k / m"),
        (
            lambda grads, sizes: weighted_sum(grads, sizes) / (sum(sizes) * len(sizes)),
            "the weights m_k / m already sum to 1: do not also divide by K",
        ),
    ]
    return compare("03.weighted_average", fn, linear.average_gradients, cases, mistakes)


@checker("03.dp_step")
def _check_dp_step(fn: Callable) -> CheckResult:
    def stepped(theta, X, y, K, lr, combine):
        return theta - lr * combine(torch.stack(_worker_grads(theta, X, y, K)), K, len(y))

    reference = lambda t, X, y, K, lr: stepped(t, X, y, K, lr, lambda G, K, m: G.mean(0))
    mistakes = [
        (
            lambda t, X, y, K, lr: stepped(t, X, y, K, lr, lambda G, K, m: G.sum(0)),
            "an all-reduce sums the K gradients: divide the sum by K",
        ),
        (
            lambda t, X, y, K, lr: stepped(t, X, y, K, lr, lambda G, K, m: G.sum(0) / m),
            "divide the sum by the number of workers K, not of examples m",
        ),
        (
            lambda t, X, y, K, lr: stepped(t, X, y, K, lr, lambda G, K, m: G.mean(0) / K),
            "you divided by K twice: the mean of the K gradients is already the average",
        ),
        (
            lambda t, X, y, K, lr: stepped(t, X, y, K, lr, lambda G, K, m: G[0]),
            "that is worker 0's gradient alone: average all K workers' gradients",
        ),
        (lambda t, X, y, K, lr: reference(t, X, y, K, -lr), "step against the gradient"),
        (lambda t, X, y, K, lr: reference(t, X, y, K, 1.0), "multiply by the learning rate"),
    ]
    cases = [(*case, lr) for case, lr in zip(_sharded_cases(), (0.1, 0.05, 0.2), strict=True)]
    return compare("03.dp_step", fn, reference, cases, mistakes)

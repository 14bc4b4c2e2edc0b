"""Checkers of notebook 05, parameter server and async."""

from collections.abc import Callable

import torch
from torch import Tensor

from minidp import data, linear
from minidp.course.checks.core import INCORRECT, CheckResult, checker, compare
from minidp.parameter_server import batch_indices


def _delayed_sgd(grad: Callable, theta0: Tensor, lr: float, steps: int, s: int) -> Tensor:
    """theta_{t+1} = theta_t - lr grad(theta_{t-s}, t), reading theta_0 while t < s (lr is η)."""
    thetas = [theta0]
    for t in range(steps):
        thetas.append(thetas[t] - lr * grad(thetas[max(t - s, 0)], t))
    return torch.stack(thetas)


def _stale_base(grad: Callable, theta0: Tensor, lr: float, steps: int, s: int) -> Tensor:
    thetas = [theta0]  # the mistake: stepping from the stale parameters, not the current ones
    for t in range(steps):
        old = thetas[max(t - s, 0)]
        thetas.append(old - lr * grad(old, t))
    return torch.stack(thetas)


def _linear_grad(seed: int) -> Callable:
    """grad(theta, t): the gradient of update t's batch of 4 rows of a small linear data set."""
    X, y = data.linear_data(24, theta=(1.0, -2.0, 0.5), seed=seed)

    def grad(theta: Tensor, t: int) -> Tensor:
        rows = batch_indices(len(y), t, seed, 4)
        return linear.mse_grad(theta, X[rows], y[rows])

    return grad


@checker("05.delayed_sgd")
def _check_delayed_sgd(fn: Callable) -> CheckResult:
    cases = [
        (_linear_grad(1), torch.zeros(3), 0.1, 8, 2),
        (_linear_grad(2), torch.tensor([0.5, 1.0, -1.0]), 0.05, 10, 3),
        (_linear_grad(3), torch.zeros(3), 0.1, 6, 0),
    ]
    ref = _delayed_sgd
    mistakes = [
        (
            lambda g, th, lr, T, s: ref(g, th, lr, T, 0),
            "the gradient of update t is taken at "
            "θ_{t-s}, the parameters of s updates ago, not at the current θ_t",
        ),
        (
            lambda g, th, lr, T, s: ref(g, th, lr, T, s + 1),
            "off by one: update t reads θ_{t-s}, so with s = 0 it is plain SGD",
        ),
        (
            lambda g, th, lr, T, s: ref(g, th, lr, T, max(s - 1, 0)),
            "off by one: update t reads θ_{t-s}, so with s = 0 it is plain SGD",
        ),
        (
            _stale_base,
            "only the gradient is stale: the server applies it to its current θ_t, "
            "θ_{t+1} = θ_t - η g_t(θ_{t-s})",
        ),
        (lambda g, th, lr, T, s: ref(g, th, lr, T, s)[1:], "include θ_0: return steps + 1 rows"),
        (lambda g, th, lr, T, s: ref(g, th, lr, T, s)[-1], "return every θ, (steps + 1, len(θ_0))"),
    ]
    result = compare("05.delayed_sgd", fn, ref, cases, mistakes)
    if "IndexError" in result.hint:  # thetas[t - s] with t < s: before the list's start
        hint = "while t < s there is no θ_{t-s}: read θ_0, which every worker starts from"
        return CheckResult("05.delayed_sgd", INCORRECT, f"{hint} ({result.hint})")
    return result


@checker("05.round_bytes")
def _check_round_bytes(fn: Callable) -> CheckResult:
    server = lambda K, n: 2 * K * n
    ring = lambda K, n: 4 * (K - 1) / K * n
    cases = [(2, 1000), (3, 600), (4, 4096), (8, 1 << 20)]
    mistakes = [
        (
            lambda K, n: (K * n, ring(K, n)),
            "the server both receives K gradients and sends K copies of θ: count bytes in and out",
        ),
        (
            lambda K, n: (server(K, n), ring(K, n) / 2),
            "a ring rank receives as much as it sends: count bytes in and out",
        ),
        (lambda K, n: (K * n, ring(K, n) / 2), "count bytes in and out, for both"),
        (
            lambda K, n: (server(K, n), 4 * (K - 1) * n),
            "each ring step moves one chunk of n/K bytes, not the whole tensor",
        ),
        (
            lambda K, n: (server(K, n), 2 * (K - 1) / K * n),
            "the ring has two phases, "
            "reduce-scatter and all-gather, each K - 1 steps; count bytes in and out",
        ),
        (
            lambda K, n: (server(K, n), 4 * K / K * n),
            "a ring of K ranks takes K - 1 steps per phase, not K",
        ),
    ]
    return compare("05.round_bytes", fn, lambda K, n: (server(K, n), ring(K, n)), cases, mistakes)

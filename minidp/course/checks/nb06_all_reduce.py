"""Checkers of notebook 06, all-reduce."""

from collections.abc import Callable

import torch.distributed as dist
from torch import Tensor

from minidp.course.checks.core import (
    CORRECT,
    INCORRECT,
    NOT_ATTEMPTED,
    SKIPPED,
    CheckResult,
    checker,
    compare,
    judge,
    learner_call,
    on_workers,
    rank_tensor,
    same,
)


def _ring_rs_simulated(
    xs: list[Tensor],
    direction: int = 1,
    add: bool = True,
    send_shift: int = 0,
    into_shift: int = -1,
) -> list[Tensor] | None:
    """Every rank's x after p - 1 steps of a ring reduce-scatter, right or wrong, in one process.

    At step s rank r sends chunk (r - s + send_shift) % p to rank r + direction, and adds (or
    copies) what arrives into chunk (r - s + into_shift) % p. The defaults are the right ring;
    None where a wrong one would fail on chunks of different sizes.
    """
    p, xs = len(xs), [x.clone() for x in xs]
    for s in range(p - 1):
        sent = [x.tensor_split(p)[(r - s + send_shift) % p].clone() for r, x in enumerate(xs)]
        for r, x in enumerate(xs):
            arrived, into = sent[(r - direction) % p], x.tensor_split(p)[(r - s + into_shift) % p]
            if arrived.shape != into.shape:
                return None
            into.add_(arrived) if add else into.copy_(arrived)
    return xs


def _rs_worker(fn: Callable, n: int) -> Tensor | str:
    x = rank_tensor(dist.get_rank(), n, seed=6)
    return SKIPPED if learner_call(fn, x) is SKIPPED else x


def _owned(xs: list[Tensor] | None, shift: int = 1) -> list[Tensor] | None:
    """Chunk (r + shift) % p of each rank's x: what rank r owns after a reduce-scatter."""
    if xs is None:
        return None
    return [x.tensor_split(len(xs))[(r + shift) % len(xs)] for r, x in enumerate(xs)]


_RS_MISTAKES = [
    (
        dict(add=False),
        "you copied what arrived over your chunk: add it to your own values "
        "instead (chunk += received), which is what makes it a sum",
    ),
    (
        dict(direction=-1),
        "you sent to the left and received from the right: the ring runs "
        "r → r + 1, so send to (r + 1) % p and receive from (r - 1) % p",
    ),
    (
        dict(into_shift=0),
        "wrong chunk: at step s add what arrives into chunk (r - s - 1) % p, "
        "the one your left neighbour sent, not chunk (r - s) % p that you just sent",
    ),
    (
        dict(send_shift=-1, into_shift=-1),
        "wrong chunk: at step s send chunk (r - s) % p (your "
        "own chunk r at step 0) and add what arrives into chunk (r - s - 1) % p",
    ),
]


@checker("06.ring_reduce_scatter")
def _check_ring_reduce_scatter(fn: Callable) -> CheckResult:
    exercise = "06.ring_reduce_scatter"
    # First sizes p divides, then sizes it does not: a ring right on the first and wrong on the
    # second has one mistake left, and the hint can name it.
    cases = [(2, 8), (3, 12), (4, 8), (3, 10), (4, 7), (2, 5), (4, 6)]
    for p, n in cases:
        got = on_workers(exercise, p, _rs_worker, fn, n)
        if isinstance(got, CheckResult) and got.status == NOT_ATTEMPTED:
            return got
        xs = [rank_tensor(r, n, seed=6) for r in range(p)]
        expected = _owned([sum(xs)] * p)
        if not isinstance(got, CheckResult) and same(_owned(got), expected):
            continue
        if n % p:  # right on every size p divides: the uneven chunks are what is left
            why = got.hint if isinstance(got, CheckResult) else "some sums are wrong"
            return CheckResult(exercise, INCORRECT, _UNEVEN_HINT.format(n=n, p=p, why=why))
        if isinstance(got, CheckResult):
            return got
        if same(got, xs):
            hint = "x is unchanged: add into the chunks of x itself (x.tensor_split(p) are views)"
            return CheckResult(exercise, INCORRECT, hint)
        if same(_owned(got, shift=0), _owned([sum(xs)] * p, shift=0)):
            hint = (
                "your ring sums, but rank r ends with chunk r: send your own chunk r at step 0, "
                "so that rank r ends with chunk (r + 1) % p, where the all-gather starts"
            )
            return CheckResult(exercise, INCORRECT, hint)
        mistakes = [(_owned(_ring_rs_simulated(xs, **how)), hint) for how, hint in _RS_MISTAKES]
        return judge(exercise, _owned(got), expected, mistakes)
    return CheckResult(exercise, CORRECT)


_UNEVEN_HINT = (
    "right when p divides the size, wrong for {n} elements on {p} ranks: split x with "
    "x.tensor_split(p), whose chunks differ by at most one element, and receive into a buffer "
    "the size of the chunk that arrives. ({why})"
)


@checker("06.ring_seconds")
def _check_ring_seconds(fn: Callable) -> CheckResult:
    ring = lambda n, p, a, b: 2 * (p - 1) * a + 2 * (p - 1) / p * n * b
    cases = [(1e6, 4, 1e-4, 1e-9), (4e3, 8, 5e-5, 2e-9), (3e7, 3, 2e-4, 1e-9), (1e5, 2, 1e-5, 1e-8)]
    mistakes = [
        (
            lambda n, p, a, b: ring(n, p, a, b) / 2,
            "that is one phase: the all-reduce is a "
            "reduce-scatter and an all-gather, p - 1 steps each",
        ),
        (
            lambda n, p, a, b: 2 * (p - 1) * (a + n * b),
            "each step moves one chunk of n/p bytes, "
            "not the whole message (that is the naive all-reduce's cost)",
        ),
        (
            lambda n, p, a, b: 2 * p * a + 2 * n * b,
            "a ring of p ranks takes p - 1 steps per phase, not p",
        ),
        (lambda n, p, a, b: 2 * (p - 1) / p * n * b, "every step also pays the latency α"),
        (lambda n, p, a, b: 2 * (p - 1) * a, "every byte also costs β: add the bandwidth term"),
        (
            lambda n, p, a, b: 2 * (p - 1) * a + (p - 1) / p * n * b,
            "both phases move bytes: 2(p - 1)/p · n · β",
        ),
    ]
    return compare("06.ring_seconds", fn, ring, cases, mistakes)

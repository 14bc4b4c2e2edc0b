"""Checkers of notebook 06, all-reduce: the ring's two halves, run on real processes, and its
alpha-beta cost. Typical wrong rings are simulated in one process, so a wrong answer is matched
to the mistake that gives it and to that mistake's hint."""

from collections.abc import Callable

import torch
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


def _ring_simulated(
    xs: list[Tensor], add: bool, send: int, into: int, direction: int = 1
) -> list[Tensor] | None:
    """Every rank's x after a phase of a ring, right or wrong, simulated in one process.

    At step s rank r sends chunk (r - s + send) % p to rank r + direction, and adds (or copies)
    what arrives into chunk (r - s + into) % p, for p - 1 steps. RS and AG below are the right
    reduce-scatter and all-gather; None where a wrong ring would fail on chunks of different
    sizes.
    """
    p, xs = len(xs), [x.clone() for x in xs]
    for s in range(p - 1):
        sent = [x.tensor_split(p)[(r - s + send) % p].clone() for r, x in enumerate(xs)]
        for r, x in enumerate(xs):
            arrived, chunk = sent[(r - direction) % p], x.tensor_split(p)[(r - s + into) % p]
            if arrived.shape != chunk.shape:
                return None
            chunk.add_(arrived) if add else chunk.copy_(arrived)
    return xs


RS = dict(add=True, send=0, into=-1)  # send chunk r - s, add into chunk r - s - 1
AG = dict(add=False, send=1, into=0)  # send chunk r + 1 - s, copy over chunk r - s


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
        dict(RS, add=False),
        "you copied what arrived over your chunk: add it to your own values "
        "instead (chunk += received), which is what makes it a sum",
    ),
    (
        dict(RS, direction=-1),
        "you sent to the left and received from the right: the ring runs "
        "r → r + 1, so send to (r + 1) % p and receive from (r - 1) % p",
    ),
    (
        dict(RS, into=0),
        "wrong chunk: at step s add what arrives into chunk (r - s - 1) % p, "
        "the one your left neighbour sent, not chunk (r - s) % p that you just sent",
    ),
    (
        dict(RS, send=-1, into=-1),
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
        mistakes = [(_owned(_ring_simulated(xs, **how)), hint) for how, hint in _RS_MISTAKES]
        return judge(exercise, _owned(got), expected, mistakes)
    return CheckResult(exercise, CORRECT)


_UNEVEN_HINT = (
    "right when p divides the size, wrong for {n} elements on {p} ranks: split x with "
    "x.tensor_split(p), whose chunks differ by at most one element, and receive into a buffer "
    "the size of the chunk that arrives. ({why})"
)


# ---- 06.ring_all_gather: the ring's second half, after a reduce-scatter done right


def _reduce_scatter(x: Tensor) -> None:
    """The ring's first half, done right: afterwards rank r holds the sum of chunk (r + 1) % p."""
    p, r = dist.get_world_size(), dist.get_rank()
    chunks = x.tensor_split(p)
    for s in range(p - 1):
        into = chunks[(r - s - 1) % p]
        arrived = torch.empty_like(into)
        recv = dist.irecv(arrived, (r - 1) % p)
        dist.isend(chunks[(r - s) % p], (r + 1) % p).wait()
        recv.wait()
        into += arrived


def _ag_worker(fn: Callable, n: int) -> Tensor | str:
    """A whole ring all-reduce on this rank: our reduce-scatter, then the learner's all-gather."""
    x = rank_tensor(dist.get_rank(), n, seed=7)
    _reduce_scatter(x)
    return SKIPPED if learner_call(fn, x) is SKIPPED else x


_AG_MISTAKES = [
    (
        dict(AG, add=True),
        "you added what arrived to your chunk: in the all-gather each chunk that arrives is "
        "already the full sum, so copy it over yours (or receive straight into the chunk)",
    ),
    (
        dict(AG, direction=-1),
        "you sent to the left and received from the right: the ring runs r → r + 1, so send "
        "to (r + 1) % p and receive from (r - 1) % p",
    ),
    (
        dict(AG, send=0, into=-1),
        "off by one chunk: those are the reduce-scatter's indices. After it rank r owns chunk "
        "(r + 1) % p, so at step s send chunk (r + 1 - s) % p and receive chunk (r - s) % p",
    ),
    (
        dict(AG, send=0),
        "off by one chunk: at step s send chunk (r + 1 - s) % p, the one you own at step 0 and "
        "then the one that has just arrived, not chunk (r - s) % p",
    ),
    (
        dict(AG, into=1),
        "wrong chunk: what arrives from the left at step s is chunk (r - s) % p; you wrote it "
        "over the chunk you were sending, (r + 1 - s) % p",
    ),
]


@checker("06.ring_all_gather")
def _check_ring_all_gather(fn: Callable) -> CheckResult:
    exercise = "06.ring_all_gather"
    # As for the reduce-scatter: sizes p divides first, then sizes it does not.
    for p, n in [(2, 8), (3, 12), (4, 8), (3, 10), (4, 7), (2, 5)]:
        got = on_workers(exercise, p, _ag_worker, fn, n)
        if isinstance(got, CheckResult) and got.status == NOT_ATTEMPTED:
            return got
        xs = [rank_tensor(r, n, seed=7) for r in range(p)]
        expected = [sum(xs)] * p  # what dist.all_reduce gives every rank
        if not isinstance(got, CheckResult) and same(got, expected):
            continue
        if n % p:
            why = got.hint if isinstance(got, CheckResult) else "some chunks are wrong"
            return CheckResult(exercise, INCORRECT, _UNEVEN_HINT.format(n=n, p=p, why=why))
        if isinstance(got, CheckResult):
            return got
        owned = _ring_simulated(xs, **RS)  # each rank's x when the all-gather starts
        if same(got, owned):  # receiving into a copy, or no step at all
            hint = (
                "x is unchanged: receive into the chunks of x itself (x.tensor_split(p) are "
                "views), for p - 1 steps (one with 2 ranks)"
            )
            return CheckResult(exercise, INCORRECT, hint)
        mistakes = [(_ring_simulated(owned, **how), hint) for how, hint in _AG_MISTAKES]
        return judge(exercise, got, expected, mistakes)
    return CheckResult(exercise, CORRECT)


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

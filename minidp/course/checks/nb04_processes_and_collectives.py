"""Checkers of notebook 04, processes and collectives: they run the learner's function on
real processes."""

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor

from minidp.course.checks.core import (
    CORRECT,
    SKIPPED,
    CheckResult,
    checker,
    judge,
    learner_call,
    on_workers,
    rank_tensor,
)
from minidp.course.i18n import _


def _exchange_worker(fn: Callable, n: int) -> Tensor | str:
    return learner_call(fn, rank_tensor(dist.get_rank(), n))


@checker("04.exchange")
def _check_exchange(fn: Callable) -> CheckResult:
    for p, n in ((2, 5), (3, 4), (4, 3)):
        got = on_workers("04.exchange", p, _exchange_worker, fn, n)
        if isinstance(got, CheckResult):
            return got
        xs = [rank_tensor(r, n) for r in range(p)]
        mistakes = [
            (
                [xs[(r + 1) % p] for r in range(p)],
                _(
                    "you received from the right: the tensors "
                    "move r → r + 1, so send to (r + 1) % p and receive from (r - 1) % p"
                ),
            ),
            (xs, _("each rank returned its own tensor: return the buffer you received into")),
            (
                [torch.zeros(n)] * p,
                _(
                    "you returned the buffer before the message arrived: "
                    "wait() on the irecv's request first"
                ),
            ),
        ]
        result = judge("04.exchange", got, [xs[(r - 1) % p] for r in range(p)], mistakes)
        if not result.correct:
            return result
    return CheckResult("04.exchange", CORRECT)


def _in_place_broadcast_worker(fn: Callable, n: int, src: int) -> Tensor | str:
    x = rank_tensor(dist.get_rank(), n)
    return SKIPPED if learner_call(fn, x, src) is SKIPPED else x


@checker("04.broadcast")
def _check_broadcast(fn: Callable) -> CheckResult:
    for p, n, src in ((3, 4, 0), (3, 5, 2), (2, 3, 1), (4, 2, 1)):
        got = on_workers("04.broadcast", p, _in_place_broadcast_worker, fn, n, src)
        if isinstance(got, CheckResult):
            return got
        xs = [rank_tensor(r, n) for r in range(p)]
        mistakes = [
            ([xs[0]] * p, _("the source is rank `src`, not always rank 0")),
            (
                xs,
                _(
                    "x is unchanged on the receivers: receive into x itself (dist.recv(x, src)), "
                    "since a broadcast works in place"
                ),
            ),
        ]
        result = judge("04.broadcast", got, [xs[src]] * p, mistakes)
        if not result.correct:
            return result
    return CheckResult("04.broadcast", CORRECT)

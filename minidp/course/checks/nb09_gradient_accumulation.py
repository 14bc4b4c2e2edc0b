"""Checkers of notebook 09, gradient accumulation: the learner's accumulation step on real
processes; the loss scale that counts valid tokens over ranks and micro-batches; warmup."""

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor

from minidp import data
from minidp.course.checks.core import (
    CORRECT,
    INCORRECT,
    SKIPPED,
    CheckResult,
    checker,
    compare,
    learner_call,
    on_workers,
    same,
)
from minidp.course.checks.nb08_overlap_and_buckets import tiny_gpt
from minidp.course.i18n import _
from minidp.ddp import DistributedDataParallel

# Each rank's 6 sequences come as micro-batches of 3, 2 and 1 (an epoch's last batch is often
# short), so weighting each micro-batch's mean loss by its share differs from dividing by M.
_MICRO_SIZES, _ACC_K, _ACC_LR = (3, 2, 1), 2, 0.5
_PER_RANK = sum(_MICRO_SIZES)


def _accumulation_batch() -> tuple[Tensor, Tensor]:
    """The global batch of the check: 2 ranks x 6 sequences of 8 tokens, inputs and targets."""
    idx = torch.randint(256, (_ACC_K * _PER_RANK, 9), generator=torch.Generator().manual_seed(9))
    return idx[:, :-1], idx[:, 1:]


def _micro_batches(rank: int, world_size: int) -> list[tuple[Tensor, Tensor]]:
    x, y = (data.rank_slice(t, rank, world_size) for t in _accumulation_batch())
    return list(zip(x.split(_MICRO_SIZES), y.split(_MICRO_SIZES), strict=True))


def _accumulation_worker(fn: Callable) -> tuple[Tensor, int, int] | str:
    """The learner's step on our DDP: the update it made, all-reduces launched, buckets."""
    rank, K = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    ddp = DistributedDataParallel(tiny_gpt().double(), bucket_cap_mb=0.01)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=_ACC_LR)
    before = torch.nn.utils.parameters_to_vector(ddp.parameters()).detach().clone()
    for p in ddp.parameters():  # what an earlier step left behind: zero_grad must clear it
        p.grad = torch.full_like(p, 0.01)
    ddp.events = []
    if learner_call(fn, ddp, optimizer, _micro_batches(rank, K)) is SKIPPED:
        return SKIPPED
    after = torch.nn.utils.parameters_to_vector(ddp.parameters()).detach()
    launches = sum(1 for event in ddp.events if event.kind == "launch")
    return after - before, launches, len(ddp.buckets)


def _micro_rows(m: int) -> list[int]:
    """Rows of the global batch in every rank's micro-batch m, which DDP averages together."""
    start = sum(_MICRO_SIZES[:m])
    return [r * _PER_RANK + start + j for r in range(_ACC_K) for j in range(_MICRO_SIZES[m])]


def _accumulated_update(
    ms: list[int], scales: list[float], stale=False, step_each=False, zero_each=True
) -> Tensor:
    """One process's update for an accumulation done right or wrong, on the 2 ranks' data.

    ms: the micro-batches whose backward counts; scales: each one's loss factor; stale: leftover
    gradients kept; step_each: an optimizer step after every backward, followed by zero_grad
    when zero_each.
    """
    torch.manual_seed(0)
    net = tiny_gpt().double()
    optimizer = torch.optim.SGD(net.parameters(), lr=_ACC_LR)
    before = torch.nn.utils.parameters_to_vector(net.parameters()).detach().clone()
    x, y = _accumulation_batch()
    for p in net.parameters():
        p.grad = torch.full_like(p, 0.01) if stale else None
    for i, (m, scale) in enumerate(zip(ms, scales, strict=True)):
        rows = _micro_rows(m)
        (net(x[rows], y[rows])[1] * scale).backward()
        if step_each or i == len(ms) - 1:
            optimizer.step()
            if zero_each:
                optimizer.zero_grad()
    return torch.nn.utils.parameters_to_vector(net.parameters()).detach() - before


@checker("09.accumulation_step")
def _check_accumulation_step(fn: Callable) -> CheckResult:
    exercise, K, M = "09.accumulation_step", _ACC_K, len(_MICRO_SIZES)
    # Computed before the workers start, so that they inherit what torch loads on first use.
    every, last = list(range(M)), [M - 1]
    shares = [b / _PER_RANK for b in _MICRO_SIZES]  # b_m / B: a micro-batch's share of examples
    reference = _accumulated_update(every, shares)
    got = on_workers(exercise, K, _accumulation_worker, fn)
    if isinstance(got, CheckResult):
        return got
    (update, launches, buckets), (other, *_rest) = got
    if not same(update, other, rtol=1e-9, atol=1e-12):
        hint = _(
            "the replicas differ after your step: every rank must apply the same averaged "
            "gradient. The last backward runs outside `model.no_sync()` (that is when DDP "
            "averages), and `optimizer.step()` comes only after it"
        )
        return CheckResult(exercise, INCORRECT, hint)
    if same(update, reference):
        if launches > buckets:
            hint = _(
                "the step is right, but DDP all-reduced {n} times: run every backward but the "
                "last inside `with model.no_sync():`, so gradients travel once"
            ).format(n=launches // buckets)
            return CheckResult(exercise, INCORRECT, hint)
        return CheckResult(exercise, CORRECT)
    stepped = _("you stepped after every micro-batch: call `optimizer.step()` once, after the last")
    mistakes = [
        (
            _accumulated_update(every, [1 / M] * M),
            _(
                "dividing by M weighs every micro-batch alike, but here they hold 3, 2 and 1 "
                "sequences: scale each micro-batch's mean loss by its share of the examples, "
                "len(x) / (total examples on this rank)"
            ),
        ),
        (
            _accumulated_update(every, [1.0] * M),
            _(
                "the gradient is too large: each micro-batch's loss is a mean over its own "
                "examples; scale it by its share of the examples, so that the backward passes add "
                "up to one mean"
            ),
        ),
        (
            _accumulated_update(every, [s / K for s in shares]),
            _("do not divide by the number of ranks: DDP already averages over them"),
        ),
        (
            _accumulated_update(last, shares[-1:]),
            _(
                "only the last micro-batch counted: call `optimizer.zero_grad()` once, before the "
                "loop, not inside it; backward adds into .grad, which is what accumulates"
            ),
        ),
        (
            _accumulated_update(last, [1.0]),
            _("only the last micro-batch counted: zero the gradients once, before the loop"),
        ),
        (
            _accumulated_update(every, shares, stale=True),
            _(
                "gradients left from before your step were added in: start with "
                "`optimizer.zero_grad()`"
            ),
        ),
        (_accumulated_update(every, shares, step_each=True), stepped),
        (_accumulated_update(every, shares, step_each=True, zero_each=False), stepped),
        (_accumulated_update(every, [1 / M] * M, step_each=True), stepped),
        (_accumulated_update(every, [1.0] * M, step_each=True), stepped),
    ]
    for wrong, hint in mistakes:
        if same(update, wrong):
            return CheckResult(exercise, INCORRECT, hint)
    return CheckResult(exercise, INCORRECT, _("compare with the accumulation loop above"))


def _token_scale(counts: Tensor, rank: int, j: int) -> Tensor:
    """K v_kj / V: DDP's average over the K ranks then weighs every valid target by 1 / V."""
    return len(counts) * counts[rank, j] / counts.sum()


# Valid-target counts v_kj, (K, M), and the (rank, micro-batch) asked about. The first case
# tells every mistake below apart; the others vary K and M (one of them M = 1, no accumulation).
_COUNT_CASES = [
    (torch.tensor([[50, 7, 31], [12, 64, 3]]), 0, 1),
    (torch.tensor([[50, 7, 31], [12, 64, 3]]), 1, 2),
    (torch.tensor([[9, 40], [25, 2], [30, 30], [1, 17]]), 3, 0),
    (torch.tensor([[120], [8]]), 1, 0),
]


@checker("09.token_loss_scale")
def _check_token_loss_scale(fn: Callable) -> CheckResult:
    # v: the micro-batch's count; V: the step's; K ranks, M micro-batches: each as learners write it
    mistakes = [
        (
            lambda v, r, j: 1 / v.shape[1],
            _(
                "that is each micro-batch's mean divided by M, the bug found in 2024: a target "
                "then weighs 1/(K M v), more where few valid targets share its micro-batch. Scale "
                "by the micro-batch's count v instead"
            ),
        ),
        (
            lambda v, r, j: 1 / v.numel(),
            _(
                "do not divide by K: DDP already averages over the ranks (and dividing each mean "
                "by M is the bug of 2024: scale by the micro-batch's count v)"
            ),
        ),
        (
            lambda v, r, j: v[r, j] / v[r].sum(),
            _(
                "that divides by this rank's own count: the ranks hold different numbers of valid "
                "targets, and DDP weighs them alike. All-reduce the counts, divide by V, the count "
                "over every rank and micro-batch, and multiply by K"
            ),
        ),
        (
            lambda v, r, j: len(v) * v[r, j] / v[r].sum(),
            _(
                "that divides by this rank's own count: all-reduce the counts, and divide by V, "
                "the count over every rank and micro-batch"
            ),
        ),
        (
            lambda v, r, j: v[r, j] / v.sum(),
            _(
                "K times too small: V already counts every rank's targets, and DDP divides by K "
                "again when it averages. Multiply by K (divide by V / K, the mean count per rank)"
            ),
        ),
        (
            lambda v, r, j: len(v) * v[r, j] / v.sum() / v.shape[1],
            _("do not divide by M as well: V already counts the targets of every micro-batch"),
        ),
        (
            lambda v, r, j: len(v) * v[r, j] / v[:, j].sum() / v.shape[1],
            _(
                "each micro-step was normalised by its own count over the ranks, but the "
                "micro-steps hold different counts too: divide by V, over every rank and "
                "micro-batch"
            ),
        ),
        (
            lambda v, r, j: v[r, j],
            _(
                "that gives the sum of the micro-batch's losses over its targets: divide it by V / "
                "K"
            ),
        ),
        (
            lambda v, r, j: 1.0,
            _("the micro-batch's mean loss needs a factor: its count v, times K / V"),
        ),
    ]
    return compare("09.token_loss_scale", fn, _token_scale, _COUNT_CASES, mistakes)


def _warmup(step: int, base_lr: float, c: float, warmup_steps: int) -> float:
    """Goyal et al.'s gradual warmup: from base_lr linearly to c * base_lr, then constant."""
    if step >= warmup_steps:
        return c * base_lr
    return base_lr * (1 + (c - 1) * step / warmup_steps)


@checker("09.warmup_lr")
def _check_warmup_lr(fn: Callable) -> CheckResult:
    def schedule(lr_at: Callable) -> Callable:
        return lambda base, c, w: [lr_at(t, base, c, w) for t in range(w + 4)]

    def shaped(lr_at: Callable) -> Callable:  # the rate at each step, made plain floats
        return lambda base, c, w: [float(v) for v in schedule(lr_at)(base, c, w)]

    mistakes = [
        (
            schedule(lambda t, b, c, w: c * b * min(t, w) / w),
            _("the warmup starts at the small-batch rate η, not at 0: at step 0 the rate is η"),
        ),
        (
            schedule(lambda t, b, c, w: c * b * min(t + 1, w) / w),
            _(
                "that is warmup from 0, as the trainer of notebook 10 does; Goyal et al. start at "
                "the small-batch rate η"
            ),
        ),
        (
            schedule(lambda t, b, c, w: b * min(t, w) / w),
            _("after warmup the rate is cη (the linear scaling rule), not η"),
        ),
        (schedule(lambda t, b, c, w: c * b), _("no warmup: the rate must climb from η to cη")),
        (
            schedule(lambda t, b, c, w: b * (1 + (c - 1) * t / w)),
            _("stop climbing at cη once step ≥ warmup_steps"),
        ),
        (
            schedule(lambda t, b, c, w: _warmup(t + 1, b, c, w)),
            _("off by one: at step 0 the rate is η, and it reaches cη at step warmup_steps"),
        ),
        (
            schedule(lambda t, b, c, w: _warmup(t, b, c**0.5, w)),
            _("that is the square-root rule: the linear rule multiplies the rate by c"),
        ),
    ]
    cases = [(0.1, 4, 5), (0.05, 8, 10), (0.2, 2, 3)]
    return compare("09.warmup_lr", shaped(fn), shaped(_warmup), cases, mistakes)

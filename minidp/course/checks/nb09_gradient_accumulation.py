"""Checkers of notebook 09, gradient accumulation: the learner's accumulation step on real
processes; warmup."""

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
    (update, launches, buckets), (other, _, _) = got
    if not same(update, other, rtol=1e-9, atol=1e-12):
        hint = (
            "the replicas differ after your step: every rank must apply the same averaged "
            "gradient. The last backward runs outside model.no_sync() (that is when DDP averages), "
            "and optimizer.step() comes only after it"
        )
        return CheckResult(exercise, INCORRECT, hint)
    if same(update, reference):
        if launches > buckets:
            hint = (
                f"the step is right, but DDP all-reduced {launches // buckets} times: run every "
                "backward but the last inside `with model.no_sync():`, so gradients travel once"
            )
            return CheckResult(exercise, INCORRECT, hint)
        return CheckResult(exercise, CORRECT)
    stepped = "you stepped after every micro-batch: call optimizer.step() once, after the last"
    mistakes = [
        (
            _accumulated_update(every, [1 / M] * M),
            "dividing by M weighs every micro-batch alike, but here they hold 3, 2 and 1 "
            "sequences: scale each micro-batch's mean loss by its share of the examples, "
            "len(x) / (total examples on this rank)",
        ),
        (
            _accumulated_update(every, [1.0] * M),
            "the gradient is too large: each micro-batch's loss is a mean over its own examples; "
            "scale it by its share of the examples, so that the backward passes add up to one mean",
        ),
        (
            _accumulated_update(every, [s / K for s in shares]),
            "do not divide by the number of ranks: DDP already averages over them",
        ),
        (
            _accumulated_update(last, shares[-1:]),
            "only the last micro-batch counted: call optimizer.zero_grad() once, before the loop, "
            "not inside it; backward adds into .grad, which is what accumulates",
        ),
        (
            _accumulated_update(last, [1.0]),
            "only the last micro-batch counted: zero the gradients once, before the loop",
        ),
        (
            _accumulated_update(every, shares, stale=True),
            "gradients left from before your step were added in: start with optimizer.zero_grad()",
        ),
        (_accumulated_update(every, shares, step_each=True), stepped),
        (_accumulated_update(every, shares, step_each=True, zero_each=False), stepped),
        (_accumulated_update(every, [1 / M] * M, step_each=True), stepped),
        (_accumulated_update(every, [1.0] * M, step_each=True), stepped),
    ]
    for wrong, hint in mistakes:
        if same(update, wrong):
            return CheckResult(exercise, INCORRECT, hint)
    return CheckResult(exercise, INCORRECT, "compare with the accumulation loop above")


def _warmup(step: int, base_lr: float, k: int, warmup_steps: int) -> float:
    """Goyal et al.'s gradual warmup: from base_lr linearly to k * base_lr, then constant."""
    if step >= warmup_steps:
        return k * base_lr
    return base_lr * (1 + (k - 1) * step / warmup_steps)


@checker("09.warmup_lr")
def _check_warmup_lr(fn: Callable) -> CheckResult:
    def schedule(lr_at: Callable) -> Callable:
        return lambda base, k, w: [lr_at(t, base, k, w) for t in range(w + 4)]

    def shaped(lr_at: Callable) -> Callable:  # the rate at each step, made plain floats
        return lambda base, k, w: [float(v) for v in schedule(lr_at)(base, k, w)]

    mistakes = [
        (
            schedule(lambda t, b, k, w: k * b * min(t, w) / w),
            "the warmup starts at the small-batch rate η, not at 0: at step 0 the rate is η",
        ),
        (
            schedule(lambda t, b, k, w: k * b * min(t + 1, w) / w),
            "that is warmup from 0, as the trainer of notebook 10 does; Goyal et al. start at "
            "the small-batch rate η",
        ),
        (
            schedule(lambda t, b, k, w: b * min(t, w) / w),
            "after warmup the rate is kη (the linear scaling rule), not η",
        ),
        (schedule(lambda t, b, k, w: k * b), "no warmup: the rate must climb from η to kη"),
        (
            schedule(lambda t, b, k, w: b * (1 + (k - 1) * t / w)),
            "stop climbing at kη once step ≥ warmup_steps",
        ),
        (
            schedule(lambda t, b, k, w: _warmup(t + 1, b, k, w)),
            "off by one: at step 0 the rate is η, and it reaches kη at step warmup_steps",
        ),
        (
            schedule(lambda t, b, k, w: _warmup(t, b, k**0.5, w)),
            "that is the square-root rule: the linear rule multiplies the rate by k",
        ),
    ]
    cases = [(0.1, 4, 5), (0.05, 8, 10), (0.2, 2, 3)]
    return compare("09.warmup_lr", shaped(fn), shaped(_warmup), cases, mistakes)

"""Checkers of notebook 10, training a GPT: the trainer's step, written by the learner and run
on 2 processes, judged against the same step computed in one process (the test suite checks that
one process against minidp.train's own train_step on 2); MFU and micro-batches."""

from collections.abc import Callable
from functools import cache

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
from minidp.course.i18n import N_, _
from minidp.ddp import DistributedDataParallel

# ---- 10.train_step

# 2 ranks of 6 sequences each, and SGD: AdamW would hide a gradient grad_accum times too large,
# since it divides every gradient by its own running size; SGD's step shows it. Each case is
# (grad_accum, grad_clip): 3 micro-steps under a limit no gradient reaches, so that the scale of
# the gradient shows; 2 under a limit every gradient exceeds, so that where clipping happens shows.
_STEP_K, _STEP_ROWS, _STEP_LR, _STEPS = 2, 6, 0.5, 2
_STEP_CASES = ((3, 1e3), (2, 0.05))


def _step_batches(rank: int, world_size: int) -> list[tuple[Tensor, Tensor]]:
    """This rank's rows of two steps' global batches: (6, 8) inputs and targets each."""
    g = torch.Generator().manual_seed(10)
    rows = [torch.randint(256, (_STEP_K * _STEP_ROWS, 9), generator=g) for _ in range(_STEPS)]
    mine = [data.rank_slice(r, rank, world_size) for r in rows]
    return [(r[:, :-1], r[:, 1:]) for r in mine]


def _start() -> torch.nn.Module:
    torch.manual_seed(0)
    return tiny_gpt().double()


@cache
def _simulated(grad_accum: int, grad_clip: float, mistake: str = "") -> tuple[Tensor, list]:
    """Two steps written right, or with one mistake (one of _STEP_MISTAKES' names), on K
    replicas in one process, DDP's average taken by hand where the step synchronises: replica
    0's parameters after them, and each replica's losses [[step 0, step 1], ...]."""
    nets = [_start() for _ in range(_STEP_K)]
    opts = [torch.optim.SGD(net.parameters(), lr=_STEP_LR) for net in nets]
    batches = [_step_batches(rank, _STEP_K) for rank in range(_STEP_K)]
    every = mistake.startswith("step each")  # synchronise and step after every micro-step
    clip = lambda: [torch.nn.utils.clip_grad_norm_(n.parameters(), grad_clip) for n in nets]
    zero, step = lambda: [o.zero_grad() for o in opts], lambda: [o.step() for o in opts]
    losses = [[] for _ in nets]
    for t in range(_STEPS):
        sums = [0.0] * len(nets)
        for i in range(grad_accum):
            last = i == grad_accum - 1
            if mistake == "zero each":
                zero()
            if mistake == "clip before last" and last:
                clip()
            for k, net in enumerate(nets):
                x, y = (part.chunk(grad_accum)[i] for part in batches[k][t])
                loss = net(x, y)[1]
                (loss if mistake.endswith("unscaled") else loss / grad_accum).backward()
                sums[k] += loss.item() / grad_accum
            if last or every:
                _average(nets)
            if mistake == "clip each":
                clip()
            if every:
                step()
                zero()
        if mistake not in ("clip each", "clip before last", "no clip"):
            clip()
        if mistake == "zero before step":
            zero()
        if not every:
            step()
        if mistake not in ("no zero", "zero each"):
            zero()
        for k, total in enumerate(sums):
            losses[k].append(total)
    return torch.nn.utils.parameters_to_vector(nets[0].parameters()).detach(), losses


def _average(nets: list[torch.nn.Module]) -> None:
    """What DDP's synchronised backward leaves in every replica's .grad: the mean over them."""
    with torch.no_grad():
        for params in zip(*(net.parameters() for net in nets), strict=True):
            if params[0].grad is not None:
                mean = sum(p.grad for p in params) / len(params)
                for p in params:
                    p.grad.copy_(mean)


_STEPPED = N_(
    "you stepped after every micro-step: call `optimizer.step()` once, after the last backward"
)
_STEP_MISTAKES = {  # a mistake's name (see _simulated): its hint
    "unscaled": N_(
        "the gradient is grad_accum times too large: divide each micro-step's loss by "
        "grad_accum before its backward, so that what accumulates is the mean, not the sum"
    ),
    "clip each": N_(
        "you clipped after every backward: clip once, after the last backward, when .grad "
        "holds the whole step's averaged gradient"
    ),
    "clip before last": N_(
        "you clipped before the last backward: the last micro-step's gradient went unclipped, "
        "and the others were clipped as local, not yet averaged, gradients. Clip after the "
        "last one"
    ),
    "no clip": N_(
        "the gradient was not clipped: call "
        "`torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)` after the last "
        "backward, before `optimizer.step()`"
    ),
    "no zero": N_(
        "the second step also used the first step's gradients: zero them once per step, "
        "`optimizer.zero_grad()` after `optimizer.step()` (or before the first backward)"
    ),
    "zero each": N_(
        "only the last micro-step counted: zero_grad inside the loop throws away what has "
        "accumulated; call it once per step"
    ),
    "zero before step": N_(
        "nothing moved: zero_grad ran between the backward passes and `optimizer.step()`, which "
        "then found no gradients. Zero them after the step"
    ),
    "step each": _STEPPED,
    "step each, unscaled": _STEPPED,
}


def _train_step_worker(fn: Callable) -> list | str:
    """For each case, two of the learner's steps on this rank, from the same start: (parameters
    after them, the losses it returned, all-reduces in each step, DDP's buckets)."""
    results = []
    for grad_accum, grad_clip in _STEP_CASES:
        ddp = DistributedDataParallel(_start())  # one bucket: one all-reduce per sync
        optimizer = torch.optim.SGD(ddp.parameters(), lr=_STEP_LR)
        losses, launches = [], []
        for x, y in _step_batches(dist.get_rank(), dist.get_world_size()):
            ddp.events = []
            loss = learner_call(fn, ddp, optimizer, x, y, grad_accum, grad_clip)
            if isinstance(loss, str) and loss == SKIPPED:
                return SKIPPED
            losses.append(_number(loss))
            launches.append(sum(1 for event in ddp.events if event.kind == "launch"))
        params = torch.nn.utils.parameters_to_vector(ddp.parameters()).detach()
        results.append((params, losses, launches, len(ddp.buckets)))
    return results


def _number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        return None


@checker("10.train_step")
def _check_train_step(fn: Callable) -> CheckResult:
    exercise = "10.train_step"
    for grad_accum, grad_clip in _STEP_CASES:  # before the workers start: they inherit torch's
        _simulated(grad_accum, grad_clip)  # loaded code (a fork), and the answers are cached
    got = on_workers(exercise, _STEP_K, _train_step_worker, fn)
    if isinstance(got, CheckResult):
        return got
    for case, (grad_accum, grad_clip) in enumerate(_STEP_CASES):
        hint = _step_verdict([outcomes[case] for outcomes in got], grad_accum, grad_clip)
        if hint:
            return CheckResult(exercise, INCORRECT, hint)
    return CheckResult(exercise, CORRECT)


def _step_verdict(ranks: list[tuple], grad_accum: int, grad_clip: float) -> str:
    """The hint for one case's outcomes on every rank, or "" if the learner's step is right."""
    params, _losses, launches, buckets = ranks[0]
    if not all(same(params, other[0], rtol=1e-9, atol=1e-12) for other in ranks[1:]):
        return _(
            "the replicas differ after your step: every rank must step with the same averaged "
            "gradient. Run all but the last micro-step inside `model.no_sync()` and the last "
            "outside it (its backward averages what has accumulated), then clip and step"
        )
    right, expected = _simulated(grad_accum, grad_clip)
    if not same(params, right):
        for mistake, hint in _STEP_MISTAKES.items():
            if same(params, _simulated(grad_accum, grad_clip, mistake)[0]):
                return _(hint)
        return _("your step differs from train_step's: compare with train_step at the top")
    if any(n != buckets for n in launches):
        return _(
            "the step is right, but DDP all-reduced {n} times in a step: run every micro-step "
            "but the last inside `with model.no_sync():`"
        ).format(n=max(launches) // buckets)
    for (_params, mine, *_rest), losses in zip(
        ranks, expected, strict=True
    ):  # each rank: its own rows
        if None in mine:
            return _("return the step's loss: the mean of the micro-steps' losses")
        if not same(mine, losses):
            if same(mine, [grad_accum * e for e in losses]):
                return _("you returned the sum of the micro-steps' losses: return their mean")
            return _(
                "the parameters are right, but return the mean of the micro-steps' losses (each "
                "micro-step's loss before dividing by grad_accum)"
            )
    return ""


# ---- one-line formulas


def _mfu(n_params, n_layer, n_embd, block_size, tokens_per_s, peak_flops, n_gpus) -> float:
    """As minidp.train measures it: 6N + 12 n_layer T d FLOPs per token (PaLM, appendix B)."""
    flops_per_token = 6 * n_params + 12 * n_layer * block_size * n_embd
    return flops_per_token * tokens_per_s / (peak_flops * n_gpus)


@checker("10.mfu")
def _check_mfu(fn: Callable) -> CheckResult:
    cases = [
        (85_000_000, 12, 768, 1024, 4.0e5, 989e12, 8),
        (120_000, 2, 64, 1024, 3.0e4, 1e11, 2),
        (1_500_000_000, 48, 1600, 1024, 1.0e5, 312e12, 16),
    ]
    attention = lambda L, d, T: 12 * L * T * d
    mistakes = [
        (
            lambda N, L, d, T, tps, peak, n: (2 * N + attention(L, d, T) / 3) * tps / (peak * n),
            _("that counts the forward pass only: backward costs twice as much, 6N in all"),
        ),
        (
            lambda N, L, d, T, tps, peak, n: 6 * N * tps / (peak * n),
            _(
                "add the attention's 12 n_layer T d FLOPs per token: with a long context they "
                "matter"
            ),
        ),
        (
            lambda N, L, d, T, tps, peak, n: _mfu(N, L, d, T, tps, peak, 1),
            _("peak_flops is one GPU's: the job's peak is n_gpus times it"),
        ),
        (
            lambda N, L, d, T, tps, peak, n: _mfu(N, L, d, T, tps, peak, 1) * n,
            _("divide by the job's peak, n_gpus × peak_flops, not multiply"),
        ),
        (
            lambda N, L, d, T, tps, peak, n: 100 * _mfu(N, L, d, T, tps, peak, n),
            _("a fraction, not a percentage"),
        ),
    ]
    return compare("10.mfu", fn, _mfu, cases, mistakes)


@checker("10.micro_batch")
def _check_micro_batch(fn: Callable) -> CheckResult:
    per_gpu = lambda B, nodes, gpus, accum: B // (nodes * gpus * accum)
    cases = [(512, 2, 8, 4), (256, 4, 4, 2), (96, 1, 2, 3), (1024, 8, 8, 1)]
    mistakes = [
        (lambda B, n, g, a: B // (g * a), _("every node's GPUs take part: divide by nnodes too")),
        (
            lambda B, n, g, a: B // (n * g),
            _("the batch is also split over grad_accum micro-steps: divide by it too"),
        ),
        (
            lambda B, n, g, a: B // (n * a),
            _("each node runs nproc_per_node processes, one per GPU: divide by it too"),
        ),
        (lambda B, n, g, a: B // (n * g) * a, _("divide by grad_accum, do not multiply")),
        (
            lambda B, n, g, a: B * n * g * a,
            _("the global batch is shared out: divide, not multiply"),
        ),
    ]
    return compare("10.micro_batch", fn, per_gpu, cases, mistakes)

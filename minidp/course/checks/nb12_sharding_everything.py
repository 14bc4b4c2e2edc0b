"""Checkers of notebook 12, sharding everything: the ZeRO-2 step, and a unit's gather, compute
and free, both run on real worker processes."""

import gc
import weakref
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from minidp.course.checks.core import (
    CORRECT,
    INCORRECT,
    SKIPPED,
    CheckResult,
    checker,
    learner_call,
    on_workers,
    same,
)
from minidp.course.i18n import _

ROWS, STEPS = 12, 2  # rows of the batch (a multiple of 2, 3 and 4), optimizer steps


def _net() -> torch.nn.Module:
    """66 parameters: with 4 ranks, shards of 17 and 2 zeros of padding."""
    torch.manual_seed(12)
    return torch.nn.Sequential(
        torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3)
    ).double()


def _loss(net: torch.nn.Module, step: int, rows: slice) -> Tensor:
    g = torch.Generator().manual_seed(step)
    x, y = torch.randn(ROWS, 5, generator=g).double(), torch.randn(ROWS, 3, generator=g).double()
    return F.mse_loss(net(x[rows]), y[rows])


def _flat(params: list[Tensor], K: int) -> Tensor:
    """The parameters end to end, zero-padded to a multiple of K."""
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    return F.pad(flat, (0, -len(flat) % K))


def _zero2_worker(fn: Callable):
    """Two ZeRO-2 steps with fn on this rank's rows: the parameters after each, whether the full
    gradients were still there after fn, and the size of the shard's gradient."""
    rank, K = dist.get_rank(), dist.get_world_size()
    net = _net()
    params = list(net.parameters())
    S = len(_flat(params, K)) // K
    shard = _flat(params, K)[rank * S : (rank + 1) * S].clone()
    optimizer = torch.optim.SGD([shard], lr=0.1, momentum=0.9)
    per = ROWS // K
    after, kept, shard_grad = [], False, None
    for step in range(STEPS):
        _loss(net, step, slice(rank * per, (rank + 1) * per)).backward()
        with torch.no_grad():
            if learner_call(fn, params, shard, optimizer) == SKIPPED:
                return SKIPPED
        kept = kept or any(p.grad is not None for p in params)
        shard_grad = None if shard.grad is None else shard.grad.numel()
        net.zero_grad(set_to_none=True)  # so that one mistake does not hide behind another
        after.append(_flat(params, 1))
    return torch.stack(after), kept, shard_grad, S


def _zero2_references(K: int) -> dict[str, Tensor]:
    """Parameters after each step: right, and for each typical mistake."""
    out = {}
    for name, scale in [("right", 1.0), ("sum", float(K))]:
        net = _net()
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        rows = []
        for step in range(STEPS):
            optimizer.zero_grad()
            (scale * _loss(net, step, slice(0, ROWS))).backward()
            optimizer.step()
            rows.append(_flat(list(net.parameters()), 1))
        out[name] = torch.stack(rows)
    out["start"] = _flat(list(_net().parameters()), 1).expand(STEPS, -1)
    out["local"] = _local_steps(K)
    return out


def _local_steps(K: int) -> Tensor:
    """SGD with momentum where each rank's range stepped with that rank's own gradient."""
    net, momentum, rows = _net(), None, []
    params = list(net.parameters())
    per = ROWS // K
    for step in range(STEPS):
        mixed = []
        for r in range(K):
            net.zero_grad()
            _loss(net, step, slice(r * per, (r + 1) * per)).backward()
            grads = _flat([p.grad for p in params], K)
            mixed.append(grads.chunk(K)[r])
        g = torch.cat(mixed)[: sum(p.numel() for p in params)]
        momentum = g if momentum is None else 0.9 * momentum + g
        with torch.no_grad():
            theta = _flat(params, 1) - 0.1 * momentum
            torch.nn.utils.vector_to_parameters(theta, params)
        rows.append(theta)
    return torch.stack(rows)


@checker("12.zero2_step")
def _check_zero2_step(fn: Callable) -> CheckResult:
    exercise = "12.zero2_step"
    for K in (2, 3):
        got = on_workers(exercise, K, _zero2_worker, fn)
        if isinstance(got, CheckResult):
            return got
        refs = _zero2_references(K)
        thetas, kept, shard_grad, S = zip(*got, strict=True)
        result = _judge_zero2(exercise, K, thetas, refs, kept[0], shard_grad[0], S[0])
        if not result.correct:
            return result
    return CheckResult(exercise, CORRECT)


def _judge_zero2(exercise, K, thetas, refs, kept, shard_grad, S) -> CheckResult:
    def hint(text: str) -> CheckResult:
        return CheckResult(exercise, INCORRECT, _("with {K} ranks: {text}").format(K=K, text=text))

    right = all(same(t, refs["right"], rtol=1e-9, atol=1e-12) for t in thetas)
    if right and kept:
        return hint(
            _(
                "the steps are right, but the full gradients are still there after your step: "
                "ZeRO-2 keeps only this rank's shard of the gradient, so set every p.grad to None "
                "once it has been reduce-scattered"
            )
        )
    if right:
        return CheckResult(exercise, CORRECT)
    if all(same(t, refs["sum"], rtol=1e-9, atol=1e-12) for t in thetas):
        return hint(_("the gradient is K times too large: a reduce-scatter sums, divide by K"))
    if all(same(t, refs["local"], rtol=1e-9, atol=1e-12) for t in thetas):
        return hint(
            _(
                "each rank stepped its shard with its own gradient only: the shard needs the "
                "gradient summed over all ranks, which the reduce-scatter delivers"
            )
        )
    if all(same(t, refs["start"]) for t in thetas):
        return hint(
            _(
                "the parameters never change: step the optimizer on the shard (shard.grad = the "
                "averaged gradient), then write the all-gathered shards back into the parameters"
            )
        )
    n = refs["right"].shape[1]
    for r, t in enumerate(thetas):  # only this rank's own range moved: no all-gather
        own = slice(r * S, min((r + 1) * S, n))
        others = torch.ones(n, dtype=torch.bool)
        others[own] = False
        if same(t[0, own], refs["right"][0, own]) and same(t[0, others], refs["start"][0, others]):
            return hint(
                _(
                    "each rank updated only its own shard of the parameters: all-gather the "
                    "updated shards so that every rank gets every part"
                )
            )
    if shard_grad not in (None, S):
        text = _("shard.grad must have the shard's {S} elements, not {got}")
        return hint(text.format(S=S, got=shard_grad))
    if not same(thetas[0], thetas[-1]):
        return hint(_("the ranks ended with different parameters: every rank needs every shard"))
    return hint(
        _(
            "compare with the picture: pad the flat gradient to K * shard.numel(), "
            "reduce-scatter it (rank r gets the sum of chunk r), divide by K, step the shard, "
            "all-gather, copy back"
        )
    )


# ---- 12.gather_compute_free


def _unit() -> torch.nn.Module:
    torch.manual_seed(121)
    return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.GELU(), torch.nn.Linear(6, 4))


def _unit_worker(fn: Callable):
    """The output of fn on this rank's shard, and whether the gathered parameters outlived it."""
    rank, K = dist.get_rank(), dist.get_world_size()
    module = _unit()
    names = [name for name, _ in module.named_parameters()]
    params = [p.detach() for p in module.parameters()]
    S = len(_flat(params, K)) // K
    shard = _flat(params, K)[rank * S : (rank + 1) * S].clone()
    seen: list = []

    def compute(x: Tensor, full: list[Tensor]) -> Tensor:
        seen.extend(weakref.ref(t) for t in full)
        return torch.func.functional_call(module, dict(zip(names, full, strict=True)), (x,))

    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(rank))
    with torch.no_grad():
        out = learner_call(fn, shard, [p.shape for p in params], compute, x)
    if isinstance(out, str) and out == SKIPPED:
        return SKIPPED
    gc.collect()
    alive = any(ref() is not None for ref in seen)
    return out, alive, len(seen), x


def _reversed_ranks(x: Tensor, K: int) -> Tensor:
    """The output had the shards been put together in the wrong rank order."""
    module = _unit()
    params = [p.detach() for p in module.parameters()]
    flat = _flat(params, K)
    flat = torch.cat(list(reversed(flat.chunk(K))))
    full, offset = [], 0
    for p in params:
        full.append(flat[offset : offset + p.numel()].view(p.shape))
        offset += p.numel()
    names = [name for name, _ in module.named_parameters()]
    return torch.func.functional_call(module, dict(zip(names, full, strict=True)), (x,))


@checker("12.gather_compute_free")
def _check_gather_compute_free(fn: Callable) -> CheckResult:
    exercise = "12.gather_compute_free"
    for K in (2, 3):
        got = on_workers(exercise, K, _unit_worker, fn)
        if isinstance(got, CheckResult):
            return got
        for out, alive, shown, x in got:
            with torch.no_grad():
                expected, wrong_order = _unit()(x), _reversed_ranks(x, K)
            if not isinstance(out, Tensor):
                hint = _("return the unit's output alone, a tensor (the gathered parameters go)")
                return CheckResult(exercise, INCORRECT, hint)
            if shown == 0:
                hint = _("call compute(x, params) with the gathered parameters, in the order given")
                return CheckResult(exercise, INCORRECT, hint)
            if same(out, wrong_order) and not same(out, expected):
                hint = _("all-gather lists the shards in rank order: rank 0's first, then rank 1's")
                return CheckResult(exercise, INCORRECT, hint)
            if not same(out, expected):
                hint = _(
                    "with {K} ranks the output is wrong: concatenate the K gathered shards and "
                    "cut parameter i at offset sum(numel of those before it), viewed as shapes[i]"
                ).format(K=K)
                return CheckResult(exercise, INCORRECT, hint)
            if alive:
                hint = _(
                    "the output is right, but the gathered parameters outlive the call: the "
                    "point of a unit is that its whole parameters exist only while it computes, "
                    "so keep no reference to them (no global, no attribute)"
                )
                return CheckResult(exercise, INCORRECT, hint)
    return CheckResult(exercise, CORRECT)

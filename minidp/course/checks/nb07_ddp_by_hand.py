"""Checkers of notebook 07, DDP by hand: the learner's start broadcast and gradient averaging,
on real processes."""

from collections.abc import Callable

import torch
import torch.distributed as dist
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


class _Normed(torch.nn.Module):
    """Two layers around a BatchNorm, whose running statistics are buffers, not parameters."""

    def __init__(self):
        super().__init__()
        self.hidden = torch.nn.Linear(3, 4)
        self.norm = torch.nn.BatchNorm1d(4)
        self.out = torch.nn.Linear(4, 2)


def _rank_start(rank: int) -> _Normed:
    """The model as rank `rank` builds it on its own: its own random parameters and buffers."""
    torch.manual_seed(700 + rank)
    net = _Normed()
    with torch.no_grad():
        net.norm.running_mean.normal_()
        net.norm.running_var.uniform_(0.5, 2.0)
        net.norm.num_batches_tracked.fill_(3 * rank + 1)
    return net


def _state(net: torch.nn.Module) -> dict[str, Tensor]:
    return {name: t.detach().clone() for name, t in net.state_dict().items()}


def _broadcast_worker(fn: Callable) -> dict[str, Tensor] | str:
    net = _rank_start(dist.get_rank())
    return SKIPPED if learner_call(fn, net) is SKIPPED else _state(net)


@checker("07.broadcast_parameters")
def _check_broadcast_parameters(fn: Callable) -> CheckResult:
    exercise, p = "07.broadcast_parameters", 3
    got = on_workers(exercise, p, _broadcast_worker, fn)
    if isinstance(got, CheckResult):
        return got
    starts = [_state(_rank_start(r)) for r in range(p)]
    names = list(starts[0])
    params = [name for name, _ in _Normed().named_parameters()]
    right = {name for name in names if all(same(g[name], starts[0][name]) for g in got)}
    if len(right) == len(names):
        return CheckResult(exercise, CORRECT)
    floats = [name for name in names if starts[0][name].is_floating_point()]
    total = lambda name: sum(s[name] for s in starts)
    if all(same(g[name], total(name) / p) for g in got for name in floats):
        hint = _(
            "every rank holds the average of the K starts: equal, but not rank 0's, and an "
            "average of K random initialisations is shrunk by about √K; broadcast rank 0's instead"
        )
        return CheckResult(exercise, INCORRECT, hint)
    if all(same(g[name], total(name)) for g in got for name in floats):
        hint = _("an all-reduce sums the starts: broadcast copies rank 0's (dist.broadcast, src=0)")
        return CheckResult(exercise, INCORRECT, hint)
    for src in range(1, p):
        if all(same(g[name], starts[src][name]) for g in got for name in names):
            return CheckResult(
                exercise, INCORRECT, _("every rank has rank {src}'s: use src=0").format(src=src)
            )
    if all(same(g[name], s[name]) for g, s in zip(got, starts, strict=True) for name in names):
        hint = _(
            "every rank kept its own start. Broadcast each tensor itself, in place: "
            "dist.broadcast(p.data, src=0); broadcasting a copy (p.clone(), torch.cat) leaves "
            "the model unchanged"
        )
        return CheckResult(exercise, INCORRECT, hint)
    if set(params) <= right:
        hint = _(
            "the parameters match rank 0's, but the buffers (BatchNorm's running statistics) "
            "are each rank's own: broadcast model.buffers() too"
        )
        return CheckResult(exercise, INCORRECT, hint)
    wrong = [name for name in params if name not in right]
    hint = _(
        "{wrong} of {total} parameters ({names}) still differ from rank 0's: broadcast every "
        "tensor of model.parameters() and model.buffers()"
    ).format(wrong=len(wrong), total=len(params), names=", ".join(wrong))
    return CheckResult(exercise, INCORRECT, hint)


_GRAD_SHAPES = [(4, 3), (3,), (2, 2, 2), (5,)]


def _rank_grads(rank: int) -> list[Tensor]:
    g = torch.Generator().manual_seed(710 + rank)
    return [torch.randn(shape, generator=g) for shape in _GRAD_SHAPES]


def _average_worker(fn: Callable) -> tuple[list[Tensor], int] | str:
    params = [torch.nn.Parameter(torch.zeros(shape)) for shape in _GRAD_SHAPES]
    for param, grad in zip(params, _rank_grads(dist.get_rank()), strict=True):
        param.grad = grad
    # The learner's function all-reduces with the function it is given: this one counts its
    # calls. The exercise asks for one, whatever the number of parameters.
    calls = []

    def counting_all_reduce(tensor: Tensor, *args, **kwargs):
        calls.append(1)
        return dist.all_reduce(tensor, *args, **kwargs)

    if learner_call(fn, params, counting_all_reduce) is SKIPPED:
        return SKIPPED
    return [param.grad.clone() for param in params], len(calls)


@checker("07.average_gradients")
def _check_average_gradients(fn: Callable) -> CheckResult:
    exercise, p = "07.average_gradients", 3
    got = on_workers(exercise, p, _average_worker, fn)
    if isinstance(got, CheckResult):
        return got
    grads = [_rank_grads(r) for r in range(p)]
    sums = [sum(g[i] for g in grads) for i in range(len(_GRAD_SHAPES))]
    # What each rank's parameter i holds under each answer, right or wrong.
    kinds = {
        "mean": lambda r, i: sums[i] / p,
        "own": lambda r, i: grads[r][i],
        "sum": lambda r, i: sums[i],
        "twice": lambda r, i: sums[i] / p**2,
        "by 2": lambda r, i: sums[i] / 2,
    }
    found = set()
    for r, (got_grads, _calls) in enumerate(got):
        for i, grad in enumerate(got_grads):
            kind = next((k for k, value in kinds.items() if same(grad, value(r, i))), "other")
            found.add(kind)
    calls = got[0][1]
    if found == {"mean"}:
        if calls > 1:
            hint = _(
                "the averages are right, but you called all_reduce {calls} times, once per "
                "parameter: each call pays the latency α. Copy all gradients into one flat buffer "
                "(torch.cat), all-reduce it once, and copy the slices back"
            ).format(calls=calls)
            return CheckResult(exercise, INCORRECT, hint)
        if calls == 0:
            hint = _(
                "the averages are right, but not through the all_reduce your function is given: "
                "call all_reduce(buffer), not dist.all_reduce(buffer), so that any all-reduce "
                "(notebook 06's ring, or the checker's, which counts the calls) can be passed in"
            )
            return CheckResult(exercise, INCORRECT, hint)
        return CheckResult(exercise, CORRECT)
    hints = {
        "sum": _("all_reduce sums over the ranks: divide by the world size K"),
        "twice": _("you divided by K twice: all_reduce gives the sum, one division the mean"),
        "by 2": _(
            "you divided by 2, but there are {p} ranks here: use dist.get_world_size()"
        ).format(p=p),
    }
    if len(found) == 1 and next(iter(found)) in hints:
        return CheckResult(exercise, INCORRECT, hints[next(iter(found))])
    if found == {"own"}:
        if calls == 0:
            return CheckResult(
                exercise, INCORRECT, _("the gradients are unchanged: all-reduce them")
            )
        hint = _(
            "the gradients are unchanged: torch.cat makes a copy, so after the all-reduce copy "
            "each slice of the averaged buffer back into its p.grad"
        )
        return CheckResult(exercise, INCORRECT, hint)
    if found == {"mean", "own"}:
        hint = _(
            "only some parameters were averaged; the others still hold this rank's own gradient, "
            "and the replicas will drift apart: average every parameter's gradient"
        )
        return CheckResult(exercise, INCORRECT, hint)
    hint = _("each p.grad must become the mean over the K ranks")
    return CheckResult(exercise, INCORRECT, hint)

"""Checkers of notebook 08, overlap and buckets: gradient hooks, and a bucket assignment run by
a real DDP (ours, given the learner's buckets through its `buckets=` argument)."""

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor

from minidp import data, model
from minidp.course.checks.core import (
    CORRECT,
    INCORRECT,
    NOT_ATTEMPTED,
    STUB_HINT,
    CheckResult,
    checker,
    on_workers,
    run_trial,
    same,
)
from minidp.course.i18n import _
from minidp.ddp import DistributedDataParallel


class _OutOfOrder(torch.nn.Module):
    """Layers used in another order than defined: backward follows use, not definition."""

    def __init__(self):
        super().__init__()
        self.first = torch.nn.Linear(4, 4)
        self.second = torch.nn.Linear(4, 4)
        self.third = torch.nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.third(torch.tanh(self.first(torch.tanh(self.second(x)))))


def tiny_gpt() -> model.GPT:
    """A GPT small enough for a check in a fraction of a second; tied embeddings included."""
    return model.GPT(model.GPTConfig(block_size=8, n_layer=2, n_head=2, n_embd=16))


def _hook_cases() -> list[tuple[torch.nn.Module, Callable]]:
    """(module, compute_loss) pairs, each built fresh so that no earlier hook is left on it."""
    torch.manual_seed(0)
    toy, gpt = _OutOfOrder(), tiny_gpt()
    x = torch.randn(5, 4)
    idx = torch.randint(256, (2, 9), generator=torch.Generator().manual_seed(0))
    return [
        (toy, lambda: toy(x).pow(2).mean()),
        (gpt, lambda: gpt(idx[:, :-1], idx[:, 1:])[1]),
    ]


def _ready_order(module: torch.nn.Module, compute_loss: Callable) -> list[str]:
    """Names of module's parameters in the order one backward finishes their gradients."""
    names = {p: name for name, p in module.named_parameters()}  # tensors hash by identity
    order: list[str] = []
    handles = [
        p.register_post_accumulate_grad_hook(lambda p: order.append(names[p])) for p in names
    ]
    try:
        compute_loss().backward()
    finally:
        for handle in handles:
            handle.remove()
    return order


def _ready_order_trial(fn: Callable, module: torch.nn.Module, compute_loss: Callable) -> tuple:
    """fn's answer, and what one more backward adds to it (a hook still registered records it)."""
    got = fn(module, compute_loss)
    if not isinstance(got, list):
        return got, 0
    seen = len(got)
    compute_loss().backward()
    return got[:seen], len(got) - seen


@checker("08.ready_order")
def _check_ready_order(fn: Callable) -> CheckResult:
    exercise = "08.ready_order"
    for (module, compute_loss), (ref_module, ref_loss) in zip(
        _hook_cases(), _hook_cases(), strict=True
    ):
        expected = _ready_order(ref_module, ref_loss)
        try:
            got, later = run_trial(_ready_order_trial, fn, module, compute_loss)
        except NotImplementedError:
            return CheckResult(exercise, NOT_ATTEMPTED, _(STUB_HINT))
        except Exception as e:
            hint = _("it raised {error}: {message}").format(error=type(e).__name__, message=e)
            return CheckResult(exercise, INCORRECT, hint)
        if not isinstance(got, list) or not all(isinstance(name, str) for name in got):
            hint = _("return a list of names (str), as model.named_parameters() gives them")
            return CheckResult(exercise, INCORRECT, hint)
        if later:
            hint = _(
                "your hooks are still registered after your function returned, and record every "
                "later backward too: keep the handles and call handle.remove() on each"
            )
            return CheckResult(exercise, INCORRECT, hint)
        if got == expected:
            continue
        defined = [name for name, _ in module.named_parameters()]
        if not got:
            hint = _("the list is empty: register the hooks, then run compute_loss().backward()")
        elif got == defined:
            hint = _(
                "that is the order the model defines its parameters in; record the names "
                "inside a hook, as backward reaches each one"
            )
        elif got == defined[::-1]:
            hint = _(
                "reversed definition order is a good guess, but backward follows the order in "
                "which forward used the layers (here not the order they were defined in): record "
                "the names inside a hook"
            )
        elif sorted(got) == sorted(expected * 2):
            hint = _("each name appears twice: did you run backward twice, or register two hooks?")
        else:
            hint = _("use register_post_accumulate_grad_hook and append the name when it runs")
        return CheckResult(exercise, INCORRECT, hint)
    return CheckResult(exercise, CORRECT)


def _buckets(sizes: list[int], cap: int) -> list[list[int]]:
    """Parameter indices in reverse order, cut into buckets of at most cap bytes (a parameter
    larger than cap alone in its bucket): DistributedDataParallel's rule without its small first
    bucket."""
    buckets, size = [], 0
    for i in reversed(range(len(sizes))):
        if not buckets or size + sizes[i] > cap:
            buckets.append([])
            size = 0
        buckets[-1].append(i)
        size += sizes[i]
    return buckets


def _bucket_cases() -> list[tuple[list[int], int]]:
    """(bytes per parameter, cap): a parameter over the cap, buckets that fill exactly, a cap
    below every parameter, and one above all of them together."""
    mixed = [4000, 64, 256, 1024, 768, 2048, 16, 3072, 512]
    return [(mixed, 2048), ([400, 1600, 400, 1200, 800, 1200], 2000), (mixed, 10), (mixed, 1 << 20)]


def _bucket_mistakes(sizes: list[int], cap: int) -> list[tuple[list[list[int]], str]]:
    forward = [[len(sizes) - 1 - i for i in b] for b in _buckets(sizes[::-1], cap)]
    eager = []  # a bucket closed as soon as it reaches the cap, not before it would exceed it
    for i in reversed(range(len(sizes))):
        if not eager or sum(sizes[j] for j in eager[-1]) + sizes[i] >= cap:
            eager.append([])
        eager[-1].append(i)
    return [
        (
            forward,
            _(
                "your first bucket holds the first parameters, whose gradients backward produces "
                "last, so it could only start at the very end: walk the parameters in reverse"
            ),
        ),
        (forward[::-1], _("cut the buckets walking the parameters in reverse, from the last one")),
        (
            eager,
            _(
                "a bucket may hold exactly cap bytes: start a new one only when the next "
                "parameter would take it over the cap"
            ),
        ),
        (
            [[i] for i in reversed(range(len(sizes)))],
            _(
                "one parameter per bucket is per-parameter DDP, one message each: fill each "
                "bucket up to cap bytes"
            ),
        ),
    ]


def _bucket_structure(buckets, sizes: list[int], cap: int) -> str | None:
    """What is wrong with `buckets` whatever the order: a missing, repeated or oversized one."""
    if not isinstance(buckets, list) or not all(isinstance(b, list) for b in buckets):
        return _("return a list of buckets, each a list of parameter indices")
    flat = [i for b in buckets for i in b]
    for i in range(len(sizes)):
        if flat.count(i) > 1:
            return _("parameter {i} is in {count} buckets: each belongs to exactly one").format(
                i=i, count=flat.count(i)
            )
        if i not in flat:
            return _(
                "parameter {i} is in no bucket: every parameter needs one, or DDP waits forever"
            ).format(i=i)
    if any(not b for b in buckets):
        return _("there is an empty bucket: a parameter larger than cap goes alone in a new bucket")
    for k, b in enumerate(buckets):
        total = sum(sizes[i] for i in b)
        if len(b) > 1 and total > cap:
            return _(
                "bucket {k} holds {total} bytes, over the cap of {cap}: start a new bucket "
                "before adding a parameter that does not fit"
            ).format(k=k, total=total, cap=cap)
    return None


def _buckets_worker(fn: Callable, cap: int) -> tuple[Tensor, list[str]]:
    """One SGD step of a tiny GPT under our DDP with fn's buckets: parameters and event order."""
    rank, K = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    module = tiny_gpt().double()
    sizes = [p.numel() * p.element_size() for p in module.parameters()]
    ddp = DistributedDataParallel(module, buckets=fn(sizes, cap))
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.5)
    idx = torch.randint(256, (4, 9), generator=torch.Generator().manual_seed(1))
    mine = data.rank_slice(idx, rank, K)
    ddp.events = []
    ddp(mine[:, :-1], mine[:, 1:])[1].backward()
    optimizer.step()
    events = [e.kind for e in ddp.events if e.kind in ("launch", "backward end")]
    return torch.nn.utils.parameters_to_vector(ddp.parameters()).detach(), events


def _one_process_step() -> Tensor:
    """The same step as _buckets_worker's, in one process on the whole batch."""
    torch.manual_seed(0)
    net = tiny_gpt().double()
    idx = torch.randint(256, (4, 9), generator=torch.Generator().manual_seed(1))
    net(idx[:, :-1], idx[:, 1:])[1].backward()
    torch.optim.SGD(net.parameters(), lr=0.5).step()
    return torch.nn.utils.parameters_to_vector(net.parameters()).detach()


@checker("08.buckets")
def _check_buckets(fn: Callable) -> CheckResult:
    exercise = "08.buckets"
    for sizes, cap in _bucket_cases():
        try:
            got = fn(list(sizes), cap)
        except NotImplementedError:
            return CheckResult(exercise, NOT_ATTEMPTED, _(STUB_HINT))
        except Exception as e:
            hint = _("it raised {error}: {message}").format(error=type(e).__name__, message=e)
            return CheckResult(exercise, INCORRECT, hint)
        problem = _bucket_structure(got, sizes, cap)
        if problem:
            hint = _("with cap {cap}: {problem}").format(cap=cap, problem=problem)
            return CheckResult(exercise, INCORRECT, hint)
        as_sets = lambda buckets: [sorted(b) for b in buckets]  # order inside a bucket is free
        if as_sets(got) == as_sets(_buckets(sizes, cap)):
            continue
        for wrong, hint in _bucket_mistakes(sizes, cap):
            if as_sets(got) == as_sets(wrong):
                return CheckResult(exercise, INCORRECT, hint)
        return CheckResult(exercise, INCORRECT, _("compare with the rule above, on paper"))
    # Right on paper: now as a real DDP on 2 processes, which must equal one process on the
    # whole batch, and start its first all-reduce while backward still runs.
    cap = 4096  # several buckets for the tiny GPT's float64 parameters
    expected = _one_process_step()  # first: the workers inherit what torch loads on first use
    results = on_workers(exercise, 2, _buckets_worker, fn, cap)
    if isinstance(results, CheckResult):
        return results
    if not all(same(theta, expected, rtol=1e-9, atol=1e-12) for theta, _ in results):
        return CheckResult(
            exercise, INCORRECT, _("with your buckets DDP did not match one process")
        )
    if results[0][1][0] != "launch":
        hint = _("the first bucket launched only after backward ended: fill buckets in reverse")
        return CheckResult(exercise, INCORRECT, hint)
    return CheckResult(exercise, CORRECT)

"""Checker of notebook 08's hard mechanism, the learner's overlapped DDP: gradient hooks that start
asynchronous all-reduces during backward, and a `finish()` that waits for them after it.

The learner's `my_overlapped_ddp(module, all_reduce)` runs on 3 real processes, two SGD steps of a
small GPT with a tied embedding and a frozen one, against one process on the whole batch. The
all-reduce it is given is dist.all_reduce, recorded: every start (of which tensor, blocking or
not) and every wait, in order, with the end of backward among them. Overlap is judged from that
order, never from a clock: each all-reduce must start before backward ends, and none may be
waited for before it ends.
"""

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
    learner_call,
    on_workers,
    same,
)
from minidp.course.checks.nb08_overlap_and_buckets import tiny_gpt
from minidp.course.i18n import N_, _

EXERCISE, RANKS, STEPS, ROWS = "08.overlapped_ddp", 3, 2, 6  # ROWS: the global batch, 2 per rank
FROZEN = "frozen parameter"  # what a worker returns when the learner hooked a frozen parameter


def _model() -> torch.nn.Module:
    """The same GPT on every rank, in float64; its position embedding frozen, as in fine-tuning."""
    torch.manual_seed(0)
    net = tiny_gpt().double()
    net.wpe.weight.requires_grad_(False)
    return net


def _batch(step: int) -> Tensor:
    """The global batch of step `step`: ROWS sequences of 8 tokens and their targets."""
    return torch.randint(256, (ROWS, 9), generator=torch.Generator().manual_seed(80 + step))


class _Work:
    """A work handle that notes when it is waited for; anything else goes to the real one."""

    def __init__(self, work, events: list):
        self.work, self.events, self.waited = work, events, False

    def wait(self, *args, **kwargs):
        self.events.append("wait")
        self.waited = True
        return self.work.wait(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.work, name)


class _RecordedAllReduce:
    """dist.all_reduce, with its contract, writing down each start: "launch" (async_op=True) or
    "blocking", after "of a parameter" when the tensor is a parameter's storage, not a gradient."""

    def __init__(self, params: list[Tensor]):
        self.storages = {p.data_ptr() for p in params}
        self.events: list[str] = []
        self.works: list[_Work] = []

    def __call__(self, tensor: Tensor, op=dist.ReduceOp.SUM, group=None, async_op: bool = False):
        if tensor.data_ptr() in self.storages:
            self.events.append("of a parameter")
        self.events.append("launch" if async_op else "blocking")
        work = dist.all_reduce(tensor, op=op, group=group, async_op=async_op)
        if not async_op:
            return work
        self.works.append(_Work(work, self.events))
        return self.works[-1]


def _grads(net: torch.nn.Module) -> list[Tensor | None]:
    return [None if p.grad is None else p.grad.detach().clone() for p in net.parameters()]


def _step(net: torch.nn.Module, recorded: _RecordedAllReduce, finish: Callable, idx: Tensor):
    """One backward and finish() on this rank's rows: (gradients after finish(), the recorded
    events, how many all-reduces nobody waited for), or SKIPPED for a stub."""
    recorded.events.clear()
    loss = net(idx[:, :-1], idx[:, 1:])[1]
    try:
        if learner_call(loss.backward) is SKIPPED:  # the learner's hooks run in here
            return SKIPPED
        recorded.events.append("backward end")
        if learner_call(finish) is SKIPPED:
            return SKIPPED
        grads = _grads(net)  # as the optimizer would see them: before anything else waits
        return grads, list(recorded.events), sum(not work.waited for work in recorded.works)
    finally:
        for work in recorded.works:  # nothing may be left in flight when the worker ends
            work.work.wait()
        recorded.works.clear()


def _overlap_worker(fn: Callable) -> list | str:
    """STEPS steps with fn's hooks, each step's _step, in order."""
    rank = dist.get_rank()
    net = _model()
    recorded = _RecordedAllReduce(list(net.parameters()))
    try:
        finish = learner_call(fn, net, recorded)
    except RuntimeError as e:
        if "doesn't require gradient" in str(e):
            return FROZEN
        raise
    if finish is SKIPPED or not callable(finish):
        return finish if finish is SKIPPED else "not callable"
    optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.5)
    steps = []
    for step in range(STEPS):
        optimizer.zero_grad()
        steps.append(_step(net, recorded, finish, data.rank_slice(_batch(step), rank, RANKS)))
        if steps[-1] is SKIPPED:
            return SKIPPED
        optimizer.step()
    return steps


def _one_process() -> list[list[Tensor | None]]:
    """The gradients of the same STEPS steps in one process, on the whole batch."""
    net = _model()
    optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.5)
    steps = []
    for step in range(STEPS):
        idx = _batch(step)
        optimizer.zero_grad()
        net(idx[:, :-1], idx[:, 1:])[1].backward()
        steps.append(_grads(net))
        optimizer.step()
    return steps


def _equal(got: list[Tensor | None], expected: list[Tensor | None], scale: float = 1.0) -> bool:
    """Whether every gradient is `scale` times the expected one (None where None is expected)."""
    if len(got) != len(expected):
        return False
    return all(
        (g is None) == (e is None) and (e is None or same(g, scale * e, rtol=1e-9, atol=1e-12))
        for g, e in zip(got, expected, strict=True)
    )


HINTS = {
    FROZEN: N_(
        "register_post_accumulate_grad_hook raised on a frozen parameter (requires_grad=False): "
        "it never gets a gradient, so give it no hook; only parameters with p.requires_grad"
    ),
    "not callable": N_("return finish, the function itself (not finish()), for the loop to call"),
    "parameter": N_(
        "you all-reduced a parameter (p or p.data), not its gradient: the hook receives the "
        "parameter p, and the tensor to sum over the ranks is p.grad"
    ),
    "unwaited": N_(
        "some all-reduces were never waited for: async_op=True returns at once, and the sum "
        "arrives later. finish() must call work.wait() on every one before the gradients are used"
    ),
    "none": N_(
        "no all-reduce went through the all_reduce your function is given: call "
        "all_reduce(p.grad, async_op=True), not dist.all_reduce, in the hook"
    ),
    "nothing": N_(
        "no all-reduce was started, and the gradients are not the mean over the ranks: register "
        "start_all_reduce on every parameter that requires a gradient, and start the "
        "all-reduce in it"
    ),
    "twice": N_(
        "more all-reduces than parameters with a gradient: a hook was registered twice on one "
        "parameter. The tied embedding appears twice in named_parameters(remove_duplicate=False) "
        "or in each module's own parameters; use module.parameters(), which lists it once"
    ),
    "sum": N_(
        "the gradients are the sum over the ranks: divide each by K in finish(), after wait()"
    ),
    "divided twice": N_(
        "you divided by K twice: the all-reduce gives the sum, one division the mean"
    ),
    "stale": N_(
        "the first step is right, the second is not: finish() must forget the all-reduces it has "
        "waited for (pending.clear()), or the next backward divides old gradients again"
    ),
    "blocking": N_(
        "an all-reduce was started without async_op=True: it blocks backward until the sum has "
        "arrived, so nothing overlaps. Start it with async_op=True and wait in finish()"
    ),
    "wait in hook": N_(
        "an all-reduce was waited for before backward ended, inside the hook: backward stops "
        "until the sum arrives, and nothing overlaps. Keep the work, and wait in finish()"
    ),
    "after backward": N_(
        "every all-reduce started after backward had ended: that is notebook 07's loop, with no "
        "overlap. Start each one in a gradient hook, as soon as its gradient is ready"
    ),
}


def _verdict(got: list, expected: list) -> str | None:
    """The key in HINTS of what is wrong with the workers' results, or None when all is right."""
    if any(isinstance(r, str) for r in got):
        return next(r for r in got if isinstance(r, str))
    steps = [step for rank in got for step in rank]  # every rank's (grads, events, unwaited)
    events = [e for _, step_events, _ in steps for e in step_events]
    if "of a parameter" in events:
        return "parameter"
    if any(unwaited for _, _, unwaited in steps):
        return "unwaited"
    started = [e for e in events if e in ("launch", "blocking")]
    trainable = sum(g is not None for g in expected[0])
    if started and len(started) > trainable * len(steps):
        return "twice"
    grads = [[step[0] for step in rank] for rank in got]  # [rank][step]
    if not all(_equal(g, e) for rank in grads for g, e in zip(rank, expected, strict=True)):
        if all(_equal(rank[0], expected[0], RANKS) for rank in grads):
            return "sum"
        if all(_equal(rank[0], expected[0], 1 / RANKS) for rank in grads):
            return "divided twice"
        if all(_equal(rank[0], expected[0]) for rank in grads):
            return "stale"
        return "nothing" if not started else "wrong"
    if not started:
        return "none"
    if "blocking" in started:
        return "blocking"
    for _grads, step_events, _unwaited in steps:
        before = step_events[: step_events.index("backward end")]
        if "wait" in before:
            return "wait in hook"
        if "launch" not in before:
            return "after backward"
    return None


@checker(EXERCISE)
def _check_overlapped_ddp(fn: Callable) -> CheckResult:
    expected = _one_process()  # first: the workers inherit what torch loads on first use
    got = on_workers(EXERCISE, RANKS, _overlap_worker, fn)
    if isinstance(got, CheckResult):
        if "NoneType" in got.hint:  # p.grad /= K on a parameter that has no gradient
            hint = _(
                "a frozen parameter has no gradient (p.grad is None): leave it out of finish()"
            )
            return CheckResult(EXERCISE, INCORRECT, hint)
        return got
    problem = _verdict(got, expected)
    if problem is None:
        return CheckResult(EXERCISE, CORRECT)
    if problem in HINTS:
        return CheckResult(EXERCISE, INCORRECT, _(HINTS[problem]))
    generic = _(
        "with {ranks} ranks, after finish() every p.grad must be the mean over the ranks of "
        "their gradients, as one process computes on the whole batch"
    ).format(ranks=RANKS)
    return CheckResult(EXERCISE, INCORRECT, generic)

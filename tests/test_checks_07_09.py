"""The checkers of notebooks 07-09: each accepts correct answers (the reference and other ways
of writing it), tells typical wrong answers apart by their own hints, and says "not attempted"
for an untouched stub, quickly, even when the stub raises inside worker processes.

The wrong answers are written here the way a learner would write them, not taken from the
checkers, so a checker whose mistake list drifts from what learners really do fails here.
"""

import contextlib
import time

import pytest
import torch
import torch.distributed as dist
from checking import assert_hint, stub, verdict
from solutions import notebook_solutions

from minidp.course import checks
from minidp.course.checks import CORRECT, INCORRECT, NOT_ATTEMPTED

pytestmark = pytest.mark.usefixtures("no_orphans")

# ---- the notebooks' own solutions (taken from the notebooks, not copied here)

SOLUTIONS = {ex: fn for nb in ("07", "08", "09") for ex, fn in notebook_solutions(nb).items()}
# Some typical mistakes below are a right answer, changed: built from the notebooks' solutions.
my_average_gradients = SOLUTIONS["07.average_gradients"]
my_overlapped_ddp = SOLUTIONS["08.overlapped_ddp"]
my_buckets = SOLUTIONS["08.buckets"]

EXERCISES = [
    "07.broadcast_parameters",
    "07.average_gradients",
    "08.ready_order",
    "08.buckets",
    "08.overlapped_ddp",
    "09.accumulation_step",
    "09.token_loss_scale",  # its other tests: test_checks_09_10.py
    "09.warmup_lr",
]


def test_every_checker_of_07_to_09_is_tested():
    assert {name for name in checks.CHECKERS if name[:2] in ("07", "08", "09")} == set(EXERCISES)
    assert set(SOLUTIONS) <= set(EXERCISES)


@pytest.mark.parametrize("exercise", sorted(SOLUTIONS))
def test_the_notebooks_solution_is_correct(exercise):
    assert verdict(exercise, SOLUTIONS[exercise]) == (CORRECT, "")


@pytest.mark.parametrize("exercise", EXERCISES)
def test_a_stub_is_not_attempted_and_says_so_quickly(exercise):
    checks.check(exercise, stub)  # the first call pays for what torch loads on first use
    start = time.monotonic()
    assert verdict(exercise, stub)[0] == NOT_ATTEMPTED
    assert time.monotonic() - start < 5


# ---- 07.broadcast_parameters


def broadcast_state_dict(model):  # another right answer: every tensor of the state dict, by .data
    for t in model.state_dict().values():
        dist.broadcast(t, 0)


def broadcast_nothing(model):
    pass


def broadcast_copies(model):  # the copy is broadcast, the model keeps its own values
    for p in model.parameters():
        dist.broadcast(p.detach().clone(), src=0)
    for b in model.buffers():
        dist.broadcast(b.clone(), src=0)


def broadcast_from_one(model):
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            dist.broadcast(t, src=1)


def average_starts(model):
    with torch.no_grad():
        for t in model.parameters():
            dist.all_reduce(t)
            t /= dist.get_world_size()
        for t in model.buffers():
            if t.is_floating_point():
                dist.all_reduce(t)
                t /= dist.get_world_size()


def sum_starts(model):
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            dist.all_reduce(t)


def broadcast_parameters_only(model):
    with torch.no_grad():
        for p in model.parameters():
            dist.broadcast(p, src=0)


def broadcast_weights_only(model):
    with torch.no_grad():
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if "bias" not in name:
                dist.broadcast(t, src=0)


def test_broadcast_parameters_accepts_another_correct_answer():
    assert verdict("07.broadcast_parameters", broadcast_state_dict) == (CORRECT, "")


@pytest.mark.parametrize(
    ("fn", "words"),
    [
        (broadcast_nothing, "kept its own start"),
        (broadcast_copies, "in place"),
        (broadcast_from_one, "rank 1's"),
        (average_starts, "average of the K starts"),
        (sum_starts, "sums the starts"),
        (broadcast_parameters_only, "buffers"),
        (broadcast_weights_only, "still differ"),
    ],
)
def test_broadcast_parameters_recognises_mistakes(fn, words):
    assert_hint("07.broadcast_parameters", fn, words)


# ---- 07.average_gradients: each takes the all-reduce to use, as the exercise asks


def average_flat_torch_utils(params, all_reduce=dist.all_reduce):
    grads = [p.grad for p in params]
    flat = torch._utils._flatten_dense_tensors(grads)
    all_reduce(flat)
    for g, avg in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads), strict=True):
        g.copy_(avg / dist.get_world_size())


def average_flat_split(params, all_reduce=dist.all_reduce):  # new gradients, not copies into them
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    all_reduce(flat)
    for p, avg in zip(params, flat.split([p.numel() for p in params]), strict=True):
        p.grad = avg.view_as(p) / dist.get_world_size()


def average_flat_with_dist_all_reduce(params, all_reduce=dist.all_reduce):  # ignores the argument
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    for p, avg in zip(params, flat.split([p.numel() for p in params]), strict=True):
        p.grad = avg.view_as(p) / dist.get_world_size()


def average_per_parameter(params, all_reduce=dist.all_reduce):
    for p in params:
        all_reduce(p.grad)
        p.grad /= dist.get_world_size()


def sum_flat(params, all_reduce=dist.all_reduce):
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    all_reduce(flat)
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset : offset + p.numel()].view_as(p))
        offset += p.numel()


def average_flat_twice(params, all_reduce=dist.all_reduce):
    K = dist.get_world_size()
    flat = torch.cat([p.grad.reshape(-1) / K for p in params])
    all_reduce(flat)
    flat /= K
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset : offset + p.numel()].view_as(p))
        offset += p.numel()


def average_flat_by_two(params, all_reduce=dist.all_reduce):  # tested on 2 workers, where it worked
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    all_reduce(flat)
    flat /= 2
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset : offset + p.numel()].view_as(p))
        offset += p.numel()


def average_flat_not_copied_back(params, all_reduce=dist.all_reduce):
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    all_reduce(flat)
    flat /= dist.get_world_size()


def average_nothing(params, all_reduce=dist.all_reduce):
    for p in params:
        p.grad = p.grad * 1.0


def average_matrices_only(params, all_reduce=dist.all_reduce):
    weights = [p for p in params if p.dim() >= 2]
    flat = torch.cat([p.grad.reshape(-1) for p in weights])
    all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for p in weights:
        p.grad.copy_(flat[offset : offset + p.numel()].view_as(p))
        offset += p.numel()


def average_without_the_argument(params):  # the exercise's signature before it took all_reduce
    my_average_gradients(params)


@pytest.mark.parametrize("fn", [average_flat_torch_utils, average_flat_split])
def test_average_gradients_accepts_correct_answers(fn):
    assert verdict("07.average_gradients", fn) == (CORRECT, "")


@pytest.mark.parametrize(
    ("fn", "words"),
    [
        (average_per_parameter, "called all_reduce 4 times"),
        (average_flat_with_dist_all_reduce, "not through the all_reduce your function is given"),
        (sum_flat, "divide by the world size"),
        (average_flat_twice, "divided by K twice"),
        (average_flat_by_two, "divided by 2"),
        (average_flat_not_copied_back, "copy each slice"),
        (average_nothing, "all-reduce them"),
        (average_matrices_only, "only some parameters"),
        (average_without_the_argument, "TypeError"),
    ],
)
def test_average_gradients_recognises_mistakes(fn, words):
    assert_hint("07.average_gradients", fn, words)


def rank_zero_only(params, all_reduce=dist.all_reduce):
    if dist.get_rank() == 0:
        my_average_gradients(params, all_reduce)


def test_a_deadlock_is_a_verdict_in_seconds():
    start = time.monotonic()
    status, hint = verdict("07.average_gradients", rank_zero_only)
    assert status == INCORRECT and "waited" in hint
    assert time.monotonic() - start < 30


def test_a_crash_in_a_worker_is_incorrect_with_the_error(capsys):
    status, hint = verdict(
        "07.average_gradients", lambda params, all_reduce: params[0].grad.view(5, 5)
    )
    assert status == INCORRECT and "RuntimeError" in hint
    assert "view" in capsys.readouterr().out  # the worker's traceback is printed for the learner


# ---- 08.ready_order


def ready_order_by_name(model, compute_loss):  # one hook per parameter, each knowing its name
    order, handles = [], []
    for name, p in model.named_parameters():
        handles.append(
            p.register_post_accumulate_grad_hook(lambda _, name=name: order.append(name))
        )
    try:
        compute_loss().backward()
    finally:
        for handle in handles:
            handle.remove()
    return order


def definition_order(model, compute_loss):
    compute_loss().backward()
    return [name for name, _ in model.named_parameters()]


def reversed_definition_order(model, compute_loss):
    return [name for name, _ in model.named_parameters()][::-1]


def hooks_left_behind(model, compute_loss):
    names = {p: name for name, p in model.named_parameters()}
    order = []
    for p in names:
        p.register_post_accumulate_grad_hook(lambda p: order.append(names[p]))
    compute_loss().backward()
    return order


def hooks_without_backward(model, compute_loss):
    names = {p: name for name, p in model.named_parameters()}
    order = []
    handles = [
        p.register_post_accumulate_grad_hook(lambda p: order.append(names[p])) for p in names
    ]
    for handle in handles:
        handle.remove()
    return order


def parameters_not_names(model, compute_loss):
    order = []
    handles = [p.register_post_accumulate_grad_hook(order.append) for p in model.parameters()]
    compute_loss().backward()
    for handle in handles:
        handle.remove()
    return order


def two_backwards(model, compute_loss):
    names = {p: name for name, p in model.named_parameters()}
    order = []
    handles = [
        p.register_post_accumulate_grad_hook(lambda p: order.append(names[p])) for p in names
    ]
    compute_loss().backward()
    compute_loss().backward()
    for handle in handles:
        handle.remove()
    return order


@pytest.mark.parametrize("fn", [ready_order_by_name])
def test_ready_order_accepts_correct_answers(fn):
    assert verdict("08.ready_order", fn) == (CORRECT, "")


@pytest.mark.parametrize(
    ("fn", "words"),
    [
        (definition_order, "order the model defines"),
        (reversed_definition_order, "order in which forward used"),
        (hooks_left_behind, "handle.remove()"),
        (hooks_without_backward, "empty"),
        (parameters_not_names, "list of names"),
        (two_backwards, "appears twice"),
    ],
)
def test_ready_order_recognises_mistakes(fn, words):
    assert_hint("08.ready_order", fn, words)


# ---- 08.buckets


def buckets_sorted_inside(sizes, cap):  # the order inside a bucket does not matter
    return [sorted(b) for b in my_buckets(sizes, cap)]


def buckets_forward(sizes, cap):
    result, size = [], 0
    for i in range(len(sizes)):
        if not result or size + sizes[i] > cap:
            result.append([])
            size = 0
        result[-1].append(i)
        size += sizes[i]
    return result


def buckets_forward_then_reversed(sizes, cap):
    return buckets_forward(sizes, cap)[::-1]


def buckets_closed_at_the_cap(sizes, cap):
    result, size = [], 0
    for i in reversed(range(len(sizes))):
        if not result or size + sizes[i] >= cap:
            result.append([])
            size = 0
        result[-1].append(i)
        size += sizes[i]
    return result


def buckets_closed_after_overflow(sizes, cap):  # adds first, and only then looks at the size
    result, current, size = [], [], 0
    for i in reversed(range(len(sizes))):
        current.append(i)
        size += sizes[i]
        if size > cap:
            result.append(current)
            current, size = [], 0
    return result + ([current] if current else [])


def one_parameter_per_bucket(sizes, cap):
    return [[i] for i in reversed(range(len(sizes)))]


def one_bucket(sizes, cap):
    return [list(reversed(range(len(sizes))))]


def buckets_with_an_empty_one(sizes, cap):
    result, size = [[]], 0  # starts with an empty bucket, which a large parameter leaves behind
    for i in reversed(range(len(sizes))):
        if size + sizes[i] > cap:
            result.append([])
            size = 0
        result[-1].append(i)
        size += sizes[i]
    return result


def buckets_missing_the_first(sizes, cap):
    for_all = my_buckets(sizes, cap)
    return [[i for i in b if i != 0] for b in for_all if b != [0]]


def buckets_sharing_a_boundary(sizes, cap):  # each new bucket repeats the last parameter
    result = my_buckets(sizes, cap)
    for k in range(1, len(result)):
        result[k] = [result[k - 1][-1], *result[k]]
    return result


@pytest.mark.parametrize("fn", [buckets_sorted_inside])
def test_buckets_accepts_correct_answers(fn):
    assert verdict("08.buckets", fn) == (CORRECT, "")


@pytest.mark.parametrize(
    ("fn", "words"),
    [
        (buckets_forward, "walk the parameters in reverse"),
        (buckets_forward_then_reversed, "cut the buckets walking"),
        (buckets_closed_at_the_cap, "exactly cap bytes"),
        (buckets_closed_after_overflow, "over the cap"),
        (one_parameter_per_bucket, "per-parameter DDP"),
        (one_bucket, "over the cap"),
        (buckets_with_an_empty_one, "empty bucket"),
        (buckets_missing_the_first, "parameter 0 is in no bucket"),
        (buckets_sharing_a_boundary, "buckets: each belongs to exactly one"),
    ],
)
def test_buckets_recognises_mistakes(fn, words):
    assert_hint("08.buckets", fn, words)


def test_buckets_rule_matches_the_example_in_the_notebook():
    assert checks.nb08_overlap_and_buckets._buckets([100, 300, 200], 400) == [[2], [1, 0]]


# ---- 09.accumulation_step


def accumulate(model, optimizer, micro_batches):
    total = sum(len(x) for x, _ in micro_batches)
    optimizer.zero_grad()
    for i, (x, y) in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        with contextlib.nullcontext() if last else model.no_sync():
            (model(x, y)[1] * len(x) / total).backward()
    optimizer.step()


def accumulate_sum_losses(model, optimizer, micro_batches):  # sum losses over tokens, then mean
    total = sum(y.numel() for _, y in micro_batches)
    optimizer.zero_grad()
    *first, last = micro_batches
    with model.no_sync():
        for x, y in first:
            (model(x, y)[1] * y.numel() / total).backward()
    x, y = last
    (model(x, y)[1] * y.numel() / total).backward()
    optimizer.step()


def accumulate_with(scale, zero_inside=False, zero=True, step_inside=False, sync="last"):
    """An accumulation step written with one of the usual mistakes."""

    def step(model, optimizer, micro_batches):
        M, total = len(micro_batches), sum(len(x) for x, _ in micro_batches)
        if zero:
            optimizer.zero_grad()
        for i, (x, y) in enumerate(micro_batches):
            last = i == M - 1
            if zero_inside:
                optimizer.zero_grad()
            quiet = sync == "never" or (sync == "last" and not last)
            with model.no_sync() if quiet else contextlib.nullcontext():
                (model(x, y)[1] * scale(len(x), M, total)).backward()
            if step_inside:
                optimizer.step()
        if not step_inside:
            optimizer.step()

    return step


share = lambda b, M, total: b / total


@pytest.mark.parametrize("fn", [accumulate, accumulate_sum_losses])
def test_accumulation_step_accepts_correct_answers(fn):
    assert verdict("09.accumulation_step", fn) == (CORRECT, "")


@pytest.mark.parametrize(
    ("fn", "words"),
    [
        (accumulate_with(lambda b, M, total: 1 / M), "hold 3, 2 and 1"),
        (accumulate_with(lambda b, M, total: 1.0), "too large"),
        (
            accumulate_with(lambda b, M, total: b / total / 2),
            "do not divide by the number of ranks",
        ),
        (accumulate_with(share, zero_inside=True), "only the last micro-batch"),
        (accumulate_with(lambda b, M, total: 1.0, zero_inside=True), "only the last micro-batch"),
        (accumulate_with(share, zero=False), "left from before"),
        (accumulate_with(share, step_inside=True, sync="always"), "stepped after every"),
        (accumulate_with(share, step_inside=True), "replicas differ"),
        (accumulate_with(share, sync="never"), "replicas differ"),
        (accumulate_with(share, sync="always"), "all-reduced 3 times"),
    ],
)
def test_accumulation_step_recognises_mistakes(fn, words):
    assert_hint("09.accumulation_step", fn, words)


# ---- 09.warmup_lr


def warmup(step, base_lr, k, warmup_steps):
    if step >= warmup_steps:
        return k * base_lr
    return base_lr + (k - 1) * base_lr * step / warmup_steps


def warmup_with_torch(step, base_lr, k, warmup_steps):
    """The rate torch's LinearLR gives at `step`, for an optimizer built with k * base_lr."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=k * base_lr)
    schedule = torch.optim.lr_scheduler.LinearLR(optimizer, 1 / k, total_iters=warmup_steps)
    for _ in range(step):
        optimizer.step()
        schedule.step()
    return optimizer.param_groups[0]["lr"]


@pytest.mark.parametrize("fn", [warmup, warmup_with_torch])
def test_warmup_lr_accepts_correct_answers(fn):
    assert verdict("09.warmup_lr", fn) == (CORRECT, "")


@pytest.mark.parametrize(
    ("fn", "words"),
    [
        (lambda t, b, k, w: k * b * min(t / w, 1.0), "not at 0"),
        (lambda t, b, k, w: k * b * min((t + 1) / w, 1.0), "notebook 10"),
        (lambda t, b, k, w: b * min(t / w, 1.0), "not η"),
        (lambda t, b, k, w: k * b, "no warmup"),
        (lambda t, b, k, w: b + (k - 1) * b * t / w, "stop climbing"),
        (lambda t, b, k, w: warmup(t + 1, b, k, w), "off by one"),
        (lambda t, b, k, w: warmup(t, b, k**0.5, w), "square-root"),
    ],
)
def test_warmup_lr_recognises_mistakes(fn, words):
    assert_hint("09.warmup_lr", fn, words)


def test_the_hints_of_each_checker_differ():
    """Telling mistakes apart means hints that say different things."""
    hints = {
        "07.broadcast_parameters": [
            broadcast_nothing,
            broadcast_from_one,
            average_starts,
            sum_starts,
            broadcast_parameters_only,
            broadcast_weights_only,
        ],
        "07.average_gradients": [
            average_per_parameter,
            average_flat_with_dist_all_reduce,
            sum_flat,
            average_flat_twice,
            average_flat_by_two,
            average_flat_not_copied_back,
            average_nothing,
            average_matrices_only,
        ],
    }
    for exercise, fns in hints.items():
        said = [verdict(exercise, fn)[1] for fn in fns]
        assert len(set(said)) == len(said), exercise


# ---- 08.overlapped_ddp: the notebook's own solution, and learners' versions of it


def overlapped_ddp_dividing_first(module, all_reduce=dist.all_reduce):
    """Another right answer: divide before the sum (as torch's DDP does), keep only the works."""
    works = []

    def hook(p):
        p.grad /= dist.get_world_size()
        works.append(all_reduce(p.grad, async_op=True))

    for p in module.parameters():
        if p.requires_grad:
            p.register_post_accumulate_grad_hook(hook)

    def finish():
        while works:
            works.pop().wait()

    return finish


def overlapped_ddp(start=None, finish=None, register=None):
    """The notebook's skeleton, with some of its parts written another way."""

    def my_overlapped_ddp(module, all_reduce=dist.all_reduce):
        K, pending = dist.get_world_size(), []

        def start_all_reduce(p):
            if start:
                return start(p, all_reduce, pending)
            pending.append((p, all_reduce(p.grad, async_op=True)))

        def finish_sync():
            if finish:
                return finish(module, pending, K)
            for p, work in pending:
                work.wait()
                p.grad /= K
            pending.clear()

        if register:
            register(module, start_all_reduce)
        else:
            for p in module.parameters():
                if p.requires_grad:
                    p.register_post_accumulate_grad_hook(start_all_reduce)
        return finish_sync

    return my_overlapped_ddp


def wait_without_dividing(module, pending, K):
    for _, work in pending:
        work.wait()
    pending.clear()


def wait_and_divide_twice(module, pending, K):
    for p, work in pending:
        work.wait()
        p.grad /= K * K
    pending.clear()


def wait_but_keep_the_list(module, pending, K):
    for p, work in pending:
        work.wait()
        p.grad /= K


def divide_without_waiting(module, pending, K):  # the sum may not have arrived yet
    for p, _ in pending:
        p.grad /= K
    pending.clear()


def divide_every_parameter(module, pending, K):  # the frozen one has no gradient
    for _, work in pending:
        work.wait()
    for p in module.parameters():
        p.grad /= K
    pending.clear()


def start_and_wait(p, all_reduce, pending):  # no overlap: backward stops at every hook
    all_reduce(p.grad, async_op=True).wait()
    p.grad /= dist.get_world_size()


def start_blocking(p, all_reduce, pending):
    all_reduce(p.grad)
    p.grad /= dist.get_world_size()


def start_on_the_parameter(p, all_reduce, pending):
    pending.append((p, all_reduce(p.data, async_op=True)))


def start_with_dist(p, all_reduce, pending):  # ignores the all_reduce it is given
    pending.append((p, dist.all_reduce(p.grad, async_op=True)))


def register_every_parameter(module, hook):  # the frozen one too
    for p in module.parameters():
        p.register_post_accumulate_grad_hook(hook)


def register_every_name(module, hook):  # the tied embedding twice
    for _, p in module.named_parameters(remove_duplicate=False):
        if p.requires_grad:
            p.register_post_accumulate_grad_hook(hook)


def register_nothing(module, hook):
    pass


def all_after_backward(module, all_reduce=dist.all_reduce):  # notebook 07's loop: no hooks
    def finish():
        works = [
            (p, all_reduce(p.grad, async_op=True))
            for p in module.parameters()
            if p.grad is not None
        ]
        for p, work in works:
            work.wait()
            p.grad /= dist.get_world_size()

    return finish


def returns_finish_called(module, all_reduce=dist.all_reduce):
    return my_overlapped_ddp(module, all_reduce)()


@pytest.mark.parametrize(
    "fn",
    [
        overlapped_ddp(),
        overlapped_ddp_dividing_first,
    ],
)
def test_overlapped_ddp_accepts_correct_answers(fn):
    assert verdict("08.overlapped_ddp", fn) == (CORRECT, "")


OVERLAPPED_MISTAKES = [
    (overlapped_ddp(finish=wait_without_dividing), "divide each by K"),
    (overlapped_ddp(finish=wait_and_divide_twice), "divided by K twice"),
    (overlapped_ddp(finish=wait_but_keep_the_list), "pending.clear()"),
    (overlapped_ddp(finish=divide_without_waiting), "never waited for"),
    (overlapped_ddp(finish=divide_every_parameter), "has no gradient"),
    (overlapped_ddp(start=start_and_wait), "inside the hook"),
    (overlapped_ddp(start=start_blocking), "without async_op=True"),
    (overlapped_ddp(start=start_on_the_parameter), "not its gradient"),
    (overlapped_ddp(start=start_with_dist), "not dist.all_reduce"),
    (overlapped_ddp(register=register_every_parameter), "frozen parameter"),
    (overlapped_ddp(register=register_every_name), "registered twice"),
    (overlapped_ddp(register=register_nothing), "no all-reduce was started"),
    (all_after_backward, "after backward had ended"),
    (returns_finish_called, "return finish"),
]


@pytest.mark.parametrize(("fn", "words"), OVERLAPPED_MISTAKES)
def test_overlapped_ddp_recognises_mistakes(fn, words):
    assert_hint("08.overlapped_ddp", fn, words)

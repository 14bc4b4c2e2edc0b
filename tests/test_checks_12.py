"""The checkers of notebook 12: each accepts a right answer, tells each typical wrong answer
apart by its own hint, and says "not attempted" for an untouched stub.

The notebook's own solutions are judged first; the other answers are written here the way a
learner would write them, not taken from the checkers.
"""

import math

import pytest
import torch
import torch.distributed as dist
from checking import assert_hint, stub, verdict
from solutions import notebook_solutions

from minidp.course import checks
from minidp.course.checks import CORRECT, NOT_ATTEMPTED

pytestmark = pytest.mark.usefixtures("no_orphans")

SOLUTIONS = notebook_solutions("12")  # the notebook's own, not copies kept here


@pytest.mark.parametrize("exercise", sorted(SOLUTIONS))
def test_the_notebooks_solution_is_correct(exercise):
    assert verdict(exercise, SOLUTIONS[exercise]) == (CORRECT, "")


def test_every_checker_of_12_is_tested():
    assert {name for name in checks.CHECKERS if name.startswith("12.")} == set(SOLUTIONS)


CACHE = []  # where a learner might keep the gathered parameters "for later"


# ---- 12.zero2_step, learner style


def _reduce_scatter_mean(params, shard):
    K = dist.get_world_size()
    flat = torch.zeros(K * shard.numel(), dtype=shard.dtype)
    grads = torch.cat([p.grad.reshape(-1) for p in params])
    flat[: len(grads)] = grads
    mine = torch.empty_like(shard)
    dist.reduce_scatter(mine, list(flat.chunk(K)))
    return mine, len(grads)


def _all_gather_into(params, shard, n):
    pieces = [torch.empty_like(shard) for _ in range(dist.get_world_size())]
    dist.all_gather(pieces, shard)
    torch.nn.utils.vector_to_parameters(torch.cat(pieces)[:n], params)


def my_zero2_step(params, shard, optimizer):
    mine, n = _reduce_scatter_mean(params, shard)
    for p in params:
        p.grad = None  # the full gradient goes: only this rank's shard is kept
    shard.grad = mine / dist.get_world_size()
    optimizer.step()
    _all_gather_into(params, shard, n)


def summed(params, shard, optimizer):
    mine, n = _reduce_scatter_mean(params, shard)
    for p in params:
        p.grad = None
    shard.grad = mine
    optimizer.step()
    _all_gather_into(params, shard, n)


def keeps_full_gradients(params, shard, optimizer):
    mine, n = _reduce_scatter_mean(params, shard)
    shard.grad = mine / dist.get_world_size()
    optimizer.step()
    _all_gather_into(params, shard, n)


def no_all_gather(params, shard, optimizer):
    mine, n = _reduce_scatter_mean(params, shard)
    for p in params:
        p.grad = None
    shard.grad = mine / dist.get_world_size()
    optimizer.step()
    flat = torch.nn.utils.parameters_to_vector(params)
    r, S = dist.get_rank(), shard.numel()
    own = flat[r * S : min((r + 1) * S, n)]
    own.copy_(shard[: len(own)])
    torch.nn.utils.vector_to_parameters(flat, params)


def never_copied_back(params, shard, optimizer):
    mine, _ = _reduce_scatter_mean(params, shard)
    for p in params:
        p.grad = None
    shard.grad = mine / dist.get_world_size()
    optimizer.step()


def local_gradient(params, shard, optimizer):
    r, S = dist.get_rank(), shard.numel()
    grads = torch.cat([p.grad.reshape(-1) for p in params])
    n = len(grads)
    own = torch.zeros(S, dtype=shard.dtype)
    piece = grads[r * S : (r + 1) * S]
    own[: len(piece)] = piece
    for p in params:
        p.grad = None
    shard.grad = own
    optimizer.step()
    _all_gather_into(params, shard, n)


def test_zero2_step_right():
    assert verdict("12.zero2_step", my_zero2_step) == (CORRECT, "")


@pytest.mark.parametrize(
    "wrong, words",
    [
        (summed, "divide by K"),
        (keeps_full_gradients, "set every p.grad to None"),
        (no_all_gather, "only its own shard"),
        (never_copied_back, "never change"),
        (local_gradient, "its own gradient only"),
    ],
)
def test_zero2_step_mistakes(wrong, words):
    assert_hint("12.zero2_step", wrong, words)


def test_zero2_step_not_attempted():
    assert verdict("12.zero2_step", stub)[0] == NOT_ATTEMPTED


# ---- 12.gather_compute_free, learner style


def _gathered(shard, reverse=False):
    pieces = [torch.empty_like(shard) for _ in range(dist.get_world_size())]
    dist.all_gather(pieces, shard)
    return torch.cat(pieces[::-1] if reverse else pieces)


def _cut(flat, shapes, restart=False):
    params, offset = [], 0
    for shape in shapes:
        n = math.prod(shape)
        params.append(flat[(0 if restart else offset) : (0 if restart else offset) + n].view(shape))
        offset += n
    return params


def my_gather_compute_free(shard, shapes, compute, x):
    params = _cut(_gathered(shard), shapes)
    return compute(x, params)  # params go out of scope here: freed


def reversed_ranks(shard, shapes, compute, x):
    return compute(x, _cut(_gathered(shard, reverse=True), shapes))


def every_parameter_from_the_start(shard, shapes, compute, x):
    return compute(x, _cut(_gathered(shard), shapes, restart=True))


def kept_for_later(shard, shapes, compute, x):
    CACHE.append(_cut(_gathered(shard), shapes))
    return compute(x, CACHE[-1])


def returns_the_parameters_too(shard, shapes, compute, x):
    params = _cut(_gathered(shard), shapes)
    return compute(x, params), params


def test_gather_compute_free_right():
    assert verdict("12.gather_compute_free", my_gather_compute_free) == (CORRECT, "")


@pytest.mark.parametrize(
    "wrong, words",
    [
        (reversed_ranks, "rank order"),
        (every_parameter_from_the_start, "cut parameter i at offset"),
        (kept_for_later, "outlive the call"),
        (returns_the_parameters_too, "output alone"),
    ],
)
def test_gather_compute_free_mistakes(wrong, words):
    assert_hint("12.gather_compute_free", wrong, words)


def test_gather_compute_free_not_attempted():
    assert verdict("12.gather_compute_free", stub)[0] == NOT_ATTEMPTED

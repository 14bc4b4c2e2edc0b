"""Tensor parallelism against the whole MLP on real processes; the GPipe schedule; 3D layouts."""

import pytest
import torch

from minidp.launch import launch
from minidp.model import MLP, GPTConfig
from minidp.model_parallel import (
    TensorParallelMLP,
    bubble_fraction,
    coordinates,
    gpipe_schedule,
    groups,
    shard_range,
)


def _mlp_and_input() -> tuple[MLP, torch.Tensor]:
    torch.manual_seed(0)
    mlp = MLP(GPTConfig(n_embd=16))
    for p in mlp.parameters():  # non-zero biases, so a bias added t times would show
        torch.nn.init.normal_(p, std=0.5)
    return mlp, torch.randn(2, 5, 16, dtype=torch.float64)


def _tensor_parallel_worker() -> dict:
    mlp, x = _mlp_and_input()
    shard = TensorParallelMLP(mlp.double())
    x = x.requires_grad_()
    y = shard(x)
    y.square().sum().backward()
    grads = {name: p.grad for name, p in shard.named_parameters()}
    return {"y": y.detach(), "x_grad": x.grad, **grads}


@pytest.mark.parametrize("t", [2, 4])
def test_tensor_parallel_mlp_equals_the_whole_mlp(t):
    mlp, x = _mlp_and_input()
    mlp = mlp.double()
    x = x.requires_grad_()
    y = mlp(x)
    y.square().sum().backward()
    results = launch(_tensor_parallel_worker, t)
    for rank, got in enumerate(results):
        units = shard_range(4 * 16, rank, t)
        torch.testing.assert_close(got["y"], y.detach())  # every rank holds the whole output
        torch.testing.assert_close(got["x_grad"], x.grad)  # f's all-reduce in backward
        torch.testing.assert_close(got["fc_weight"], mlp.fc.weight.grad[units])
        torch.testing.assert_close(got["fc_bias"], mlp.fc.bias.grad[units])
        torch.testing.assert_close(got["proj_weight"], mlp.proj.weight.grad[:, units])
        torch.testing.assert_close(got["proj_bias"], mlp.proj.bias.grad)


def test_shard_range_refuses_uneven_splits():
    assert shard_range(12, 2, 3) == slice(8, 12)
    with pytest.raises(ValueError, match="do not split"):
        shard_range(10, 0, 4)


@pytest.mark.parametrize("p, m", [(1, 1), (2, 3), (4, 4), (4, 8), (3, 10)])
def test_gpipe_schedule(p, m):
    work = gpipe_schedule(p, m)
    slot = {(s, kind, j): t for s, t, kind, j in work}
    assert len(slot) == 2 * p * m  # every micro-batch, forward and backward, on every stage
    assert len({(s, t) for s, t, _, _ in work}) == len(work)  # one thing at a time per stage
    for j in range(m):
        for s in range(1, p):  # a stage needs the activations of the stage before
            assert slot[(s, "F", j)] > slot[(s - 1, "F", j)]
            assert slot[(s - 1, "B", j)] > slot[(s, "B", j)]  # and gradients from the one after
    last_forward = max(t for _, t, kind, _ in work if kind == "F")
    assert min(t for _, t, kind, _ in work if kind == "B") > last_forward
    slots = 1 + max(t for _, t, _, _ in work)
    assert slots == 2 * (m + p - 1)
    idle = 1 - len(work) / (p * slots)
    assert idle == pytest.approx(bubble_fraction(p, m))


@pytest.mark.parametrize("dp, tp, pp", [(2, 2, 2), (4, 2, 1), (1, 4, 2), (3, 1, 2)])
def test_groups_partition_the_ranks(dp, tp, pp):
    layout = groups(dp, tp, pp)
    for kind, size in (("tensor", tp), ("data", dp), ("pipeline", pp)):
        members = sorted(r for g in layout[kind] for r in g)
        assert members == list(range(dp * tp * pp))
        assert all(len(g) == size for g in layout[kind])
    # Tensor-parallel partners are neighbours, so that they share a node's fast links.
    assert all(g == list(range(g[0], g[0] + tp)) for g in layout["tensor"])
    assert coordinates(dp * tp * pp - 1, dp, tp, pp) == (dp - 1, pp - 1, tp - 1)
    with pytest.raises(ValueError):
        coordinates(dp * tp * pp, dp, tp, pp)

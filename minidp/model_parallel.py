"""Model parallelism in miniature: when one replica no longer fits, split the model itself.

    y = TensorParallelMLP(mlp)(x)        # on every rank of a group: each holds 1/t of the MLP
    schedule = gpipe_schedule(stages=4, micro_batches=8)     # who computes what, when
    bubble_fraction(4, 8)                                    # the share of time spent idle
    coordinates(rank, dp=2, tp=2, pp=2)                      # where a rank sits in 3D

Tensor parallelism follows Megatron-LM (Shoeybi et al., "Megatron-LM: Training Multi-Billion
Parameter Language Models Using Model Parallelism", 2019, section 3): the MLP's first matrix is
split by its output columns, so each rank applies GELU to its own hidden units; the second by
its input rows, so each rank's output is a partial sum, and one all-reduce adds them up. Pipeline
parallelism follows GPipe (Huang et al., "GPipe: Efficient Training of Giant Neural Networks
using Pipeline Parallelism", NeurIPS 2019): the layers are cut into stages, the batch into
micro-batches, all forwards run, then all backwards. Ranks are numbered as in Megatron-LM:
tensor-parallel ranks adjacent (one node, the fastest links), then data-parallel, then pipeline.
"""

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from minidp.model import MLP

# ---- Tensor parallelism: Megatron's f and g, identities in one direction, all-reduces in the other


class _CopyToShards(torch.autograd.Function):
    """f: forward, every rank already holds the whole input; backward, sum its gradient's parts."""

    @staticmethod
    def forward(ctx, x: Tensor, group) -> Tensor:
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.clone()  # each rank's shard contributed part of dL/dx: add them up
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _SumShards(torch.autograd.Function):
    """g: forward, add up the partial outputs; backward, every rank needs the whole gradient."""

    @staticmethod
    def forward(ctx, partial: Tensor, group) -> Tensor:
        total = partial.clone()
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


def shard_range(n: int, rank: int, world_size: int) -> slice:
    """Rank `rank`'s contiguous block of n hidden units: [r n/t, (r+1) n/t)."""
    if n % world_size:
        raise ValueError(f"{n} hidden units do not split among {world_size} ranks")
    size = n // world_size
    return slice(rank * size, (rank + 1) * size)


class TensorParallelMLP(nn.Module):
    """This rank's 1/t of an MLP (h -> 4h -> GELU -> h): fc's output rows, proj's input columns."""

    def __init__(self, mlp: MLP, group=None):
        super().__init__()
        self.group = group
        rank, t = dist.get_rank(group), dist.get_world_size(group)
        units = shard_range(mlp.fc.out_features, rank, t)
        # nn.Linear keeps weight as (out, in): fc's output units are rows, proj's inputs columns.
        self.fc_weight = nn.Parameter(mlp.fc.weight.detach()[units].clone())  # (4h/t, h)
        self.fc_bias = nn.Parameter(mlp.fc.bias.detach()[units].clone())  # (4h/t,)
        self.proj_weight = nn.Parameter(mlp.proj.weight.detach()[:, units].clone())  # (h, 4h/t)
        # The second bias is added once, after the sum; every rank keeps the same copy.
        self.proj_bias = nn.Parameter(mlp.proj.bias.detach().clone())  # (h,)

    def forward(self, x: Tensor) -> Tensor:
        x = _CopyToShards.apply(x, self.group)
        hidden = F.gelu(F.linear(x, self.fc_weight, self.fc_bias))  # (..., 4h/t): no talk needed
        partial = F.linear(hidden, self.proj_weight)  # (..., h): this rank's share of the sum
        return _SumShards.apply(partial, self.group) + self.proj_bias


# ---- Pipeline parallelism: GPipe's schedule


def gpipe_schedule(stages: int, micro_batches: int) -> list[tuple[int, int, str, int]]:
    """(stage, time slot, "F" or "B", micro-batch) of every piece of work, a backward taking as
    long as a forward. Forward of micro-batch j reaches stage s at slot s + j; the backwards
    start from the last stage once every forward is done, and flow back the same way.
    """
    p, m = stages, micro_batches
    work = [(s, s + j, "F", j) for s in range(p) for j in range(m)]
    first_backward = m + p - 1  # the last stage's last forward ends at slot m + p - 2
    work += [(s, first_backward + (p - 1 - s) + j, "B", j) for s in range(p) for j in range(m)]
    return sorted(work, key=lambda w: (w[1], w[0]))


def bubble_fraction(stages: int, micro_batches: int) -> float:
    """Share of each stage's time spent idle in GPipe: (p - 1) / (m + p - 1)."""
    return (stages - 1) / (micro_batches + stages - 1)


# ---- 3D parallelism: which rank holds which piece


def coordinates(rank: int, dp: int, tp: int, pp: int) -> tuple[int, int, int]:
    """(data-parallel, pipeline, tensor) index of a global rank; tensor ranks are adjacent."""
    if not 0 <= rank < dp * tp * pp:
        raise ValueError(f"rank {rank} is not in a job of {dp} x {tp} x {pp} ranks")
    return (rank // tp) % dp, rank // (tp * dp), rank % tp


def groups(dp: int, tp: int, pp: int) -> dict[str, list[list[int]]]:
    """The process groups of a 3D layout: ranks that all-reduce together, per kind."""
    ranks = range(dp * tp * pp)
    at = {r: coordinates(r, dp, tp, pp) for r in ranks}

    def by(key) -> list[list[int]]:
        found: dict = {}
        for r in ranks:
            found.setdefault(key(at[r]), []).append(r)
        return list(found.values())

    return {
        "tensor": by(lambda c: (c[0], c[1])),  # same replica, same stage: split each matrix
        "data": by(lambda c: (c[1], c[2])),  # same piece of the model: average gradients
        "pipeline": by(lambda c: (c[0], c[2])),  # same replica, same shard: pass activations
    }

"""Gradient clipping for a gradient spread over the ranks: torch.nn.utils.clip_grad_norm_ as one
process would compute it, when each rank holds only pieces of the averaged gradient (ZeRO's and
FSDP's shards) and some parameters whole (those FSDP leaves replicated).

    norm = clip_grad_norm_(shards, replicated, max_norm=1.0, device=device)   # every rank

The norm is that of the whole gradient: each rank sums the squares of its pieces, one all-reduce
adds up the ranks' sums (the pieces together are every element exactly once), and the replicated
gradients, equal on every rank, are added after it, once. Every rank then scales what it holds
by the same factor, min(1, max_norm / (norm + 1e-6)), as torch does. Clipping each shard by its
own norm, or counting the replicated ones K times, would step differently from one process.
"""

import torch
import torch.distributed as dist
from torch import Tensor


def clip_grad_norm_(
    sharded: list[Tensor], replicated: list[Tensor], max_norm: float, device, group=None
) -> Tensor:
    """torch.nn.utils.clip_grad_norm_ of one process, for a gradient spread over the ranks: each
    rank holds the gradients of some pieces (`sharded`; over all ranks, every element exactly
    once) and of all the `replicated` parameters (equal on every rank). Scales them all by
    min(1, max_norm / (norm + 1e-6)) and returns the norm, on every rank, without a host read."""
    pieces = [p.grad for p in sharded if p.grad is not None]
    whole = [p.grad for p in replicated if p.grad is not None]
    squares = torch.zeros((), dtype=torch.float64, device=device)
    for g in pieces:
        squares += _squared_norm(g)
    dist.all_reduce(squares, group=group)  # the squares of every element, once
    for g in whole:  # added after the sum over ranks: once, not once per rank
        squares += _squared_norm(g)
    wide = any(g.dtype == torch.float64 for g in pieces + whole)
    norm = squares.sqrt().to(torch.float64 if wide else torch.float32)
    scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    for g in pieces + whole:
        g.mul_(scale.to(g.dtype))
    return norm


def _squared_norm(g: Tensor) -> Tensor:
    """|g|^2, g's norm taken in float32 at least (a bf16 gradient's too), squared in float64."""
    precision = torch.promote_types(g.dtype, torch.float32)
    return torch.linalg.vector_norm(g.detach(), dtype=precision).double().square()

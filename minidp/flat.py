"""Flat shards: tensors laid end to end and cut into K equal pieces, and the two collectives that
move them, recorded. The bookkeeping that ZeroRedundancyOptimizer and FullyShardedDataParallel
share.

    layout = FlatLayout([p.numel() for p in params], world_size=K)
    layout.pieces(rank)          # [Piece(index, start, stop, at)]: what of which tensor rank holds
    buffer = pack(layout, [p.grad for p in params], torch.float32)    # (K, S + n) for the wire
    out = reduce_scatter(buffer, group).wait()  # this rank's row of the sum: S numbers, n flags

Tensor i occupies elements offsets[i] to offsets[i] + numel[i] of a flat vector of N elements,
padded with zeros to K * S, S = ceil(N / K); rank r holds elements [r S, (r + 1) S). Equal shards
are what a reduce-scatter and an all-gather need, and cutting by elements rather than whole
tensors balances any model: a tensor may straddle two ranks, and each rank holds one `Piece` of
it. The ZeRO paper partitions this way (Rajbhandari et al. 2020, section 5: "Nd equal
partitions"), as do DeepSpeed and torch's first FSDP (FlatParameter).

A gradient that no rank computed must stay None, as in one process (an optimizer skips it, weight
decay included); so each rank sends, with its gradients, a flag of 1.0 per tensor it has a
gradient for, in every row of the buffer: after the reduce-scatter every rank knows, for each
tensor, whether any rank used it. n floats per row, next to S gradient numbers, ride for free.
"""

import math
import time
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from minidp.events import Event

# torch 2.13 renamed these two (and warns about the old names); minidp supports torch >= 2.4.
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def bytes_sent(events: list[Event], world_size: int) -> float:
    """Bytes one rank sends for the collectives among `events`, each run as a ring (notebook 06):
    (K-1)/K of the tensor for an all-gather or a reduce-scatter, twice that for an all-reduce."""
    share = {"all-gather": 1, "reduce-scatter": 1, "all-reduce": 2}
    per = (world_size - 1) / world_size
    return sum(share[e.kind] * per * e.nbytes for e in events if e.kind in share)


class Piece(NamedTuple):
    """Elements [start, stop) of tensor `index`, at offset `at` of the holding rank's shard."""

    index: int
    start: int
    stop: int
    at: int


class FlatLayout:
    """Where each of several tensors lies in the flat vector, and in which rank's shard."""

    def __init__(self, numels: list[int], world_size: int):
        self.numels, self.world_size = list(numels), world_size
        self.offsets = [sum(self.numels[:i]) for i in range(len(self.numels))]
        self.numel = sum(self.numels)  # N
        self.shard_numel = max(1, math.ceil(self.numel / world_size))  # S, never 0
        self.padded_numel = self.shard_numel * world_size  # K S
        self._pieces = [self._cut(rank) for rank in range(world_size)]

    def _cut(self, rank: int) -> list[Piece]:
        lo, hi, pieces = rank * self.shard_numel, (rank + 1) * self.shard_numel, []
        for i, (offset, n) in enumerate(zip(self.offsets, self.numels, strict=True)):
            a, b = max(lo, offset), min(hi, offset + n)
            if a < b:
                pieces.append(Piece(i, a - offset, b - offset, a - lo))
        return pieces

    def pieces(self, rank: int) -> list[Piece]:
        """The pieces of rank's shard, in flat order; a tensor of rank's range may be cut at its
        ends, one outside every range (numel 0) has none."""
        return self._pieces[rank]


def pack(layout: FlatLayout, tensors: list[Tensor | None], dtype: torch.dtype) -> Tensor:
    """The (K, S + n) buffer of a reduce-scatter: row r holds rank r's range of the flat vector
    of `tensors` (zeros for None and for the padding), then n used-flags (see the docstring)."""
    K, S, n = layout.world_size, layout.shard_numel, len(tensors)
    device = next((t.device for t in tensors if t is not None), torch.device("cpu"))
    buffer = torch.empty(K, S + n, dtype=dtype, device=device)
    if any(t is None for t in tensors):
        buffer[:, :S].zero_()  # a missing gradient counts as zeros
    else:
        for rank in range(K):  # only the padding, past element N of the flat vector
            buffer[rank, max(0, min(S, layout.numel - rank * S)) :].zero_()
    buffer[:, S:] = torch.tensor([float(t is not None) for t in tensors], dtype=dtype)
    for rank in range(K):
        for index, start, stop, at in layout.pieces(rank):
            if tensors[index] is not None:  # upcasts a bf16 gradient into a float32 buffer
                buffer[rank, at : at + stop - start] = tensors[index].reshape(-1)[start:stop]
    return buffer


def unpack(
    layout: FlatLayout,
    out: Tensor,
    pieces: list[Piece],
    targets: list[Tensor],
    had: list[bool],
    world_size: int,
    accumulate: bool = True,
) -> None:
    """Give each target (the tensor holding one of `pieces`) its gradient: its part of `out`, the
    summed row of pack's buffer, divided by world_size; added to a .grad the target already has
    when `accumulate`. Left None where no rank had a gradient (had: this rank's, per tensor)."""
    S = layout.shard_numel
    grads, flags = out[:S].div_(world_size), None
    for (index, start, stop, at), target in zip(pieces, targets, strict=True):
        if not had[index]:
            if flags is None:  # a host read, only when this rank lacks some gradient
                flags = out[S:].tolist()
            if flags[index] == 0:
                continue
        grad = grads[at : at + stop - start].view(target.shape)
        if target.grad is None or not accumulate:
            target.grad = grad  # a view of `out`: no copy
        else:
            target.grad += grad


class Pending:
    """A collective under way: wait() returns its result (and keeps its tensors alive till then)."""

    def __init__(self, work, finish: Callable[[], Tensor], *tensors: Tensor):
        # Its input tensors too: on a GPU the collective reads them on a stream of its own, and
        # memory freed here before it is done could be handed to the next allocation.
        self.work, self.finish, self.result, self.tensors = work, finish, None, tensors

    def wait(self) -> Tensor:
        if self.result is None:
            self.work.wait()
            self.result, self.tensors = self.finish(), ()
        return self.result


def _start(collective, kind: str, nbytes: int, group, events, unit: int, *tensors: Tensor):
    start = time.perf_counter()
    work = collective(*tensors, group=group, async_op=True)
    if events is not None:

        def done(_):  # stamped on the communication thread the moment the data has arrived
            events.append(Event(kind, unit, start, time.perf_counter(), nbytes))

        work.get_future().then(done)
    return work


def reduce_scatter(
    buffer: Tensor,
    group=None,
    events: list | None = None,
    unit: int = 0,
    native: bool | None = None,
) -> Pending:
    """Start summing pack's (K, S + n) buffer over the ranks; wait() gives this rank's row of
    the sum, (S + n,).

    gloo has no reduce-scatter of its own: torch's gloo backend all-reduces the whole buffer and
    keeps one chunk, twice the bytes. So unless `native` says otherwise, on gloo we exchange rows
    with one all-to-all (row j to rank j) and add the K rows that arrive, in rank order: each
    rank sends (K-1)/K of the buffer, as a ring's reduce-scatter does (notebook 06). NCCL's own
    reduce-scatter does that on GPUs.
    """
    K, nbytes = buffer.shape[0], buffer.numel() * buffer.element_size()
    if native is None:
        native = dist.get_backend(group) != "gloo"
    if native:
        out = torch.empty(buffer.shape[1], dtype=buffer.dtype, device=buffer.device)
        flat = buffer.view(-1)  # (K (S + n),): chunk j, row j, goes to rank j
        work = _start(_reduce_scatter, "reduce-scatter", nbytes, group, events, unit, out, flat)
        return Pending(work, lambda: out, buffer)
    rows = torch.empty_like(buffer)  # (K, S + n): row j from rank j
    work = _start(
        dist.all_to_all_single, "reduce-scatter", nbytes, group, events, unit, rows, buffer
    )
    return Pending(work, lambda: rows.sum(0) if K > 1 else rows[0], buffer)


def all_gather(out: Tensor, shard: Tensor, group=None, events: list | None = None, unit: int = 0):
    """Start gathering every rank's shard (S,) into out (K S,), in rank order; wait() gives out."""
    nbytes = out.numel() * out.element_size()
    work = _start(_all_gather, "all-gather", nbytes, group, events, unit, out, shard)
    return Pending(work, lambda: out, shard)


def all_reduce(buffer: Tensor, group=None, events: list | None = None, unit: int = 0):
    """Start summing buffer over the ranks, in place; wait() gives it."""
    nbytes = buffer.numel() * buffer.element_size()
    work = _start(dist.all_reduce, "all-reduce", nbytes, group, events, unit, buffer)
    return Pending(work, lambda: buffer)


# ---- optimizer state in pieces, and whole: checkpoints of ZeRO and of FSDP (minidp.sharding)


def gather_state(
    pieces: dict[Tensor, tuple[int, int, int]], state: dict, shapes: dict, group, to: int
) -> dict[int, dict] | None:
    """Every parameter's optimizer state, whole, on rank `to` (None on the others): a
    collective. `pieces` maps each tensor that an optimizer steps on this rank to (index, start,
    stop): elements [start, stop) of parameter `index`, whose shape is shapes[index]; `state`
    is that optimizer's state, by those tensors."""
    shard: dict[int, list] = {}  # parameter index -> [(start, stop, state of that piece)]
    for piece, (i, a, b) in pieces.items():
        if piece in state:
            # On the CPU: gathered as they are, GPU tensors would be rebuilt on rank `to` on
            # their sender's device index.
            cpu = {n: v.cpu() if torch.is_tensor(v) else v for n, v in state[piece].items()}
            shard.setdefault(i, []).append((a, b, cpu))
    rank, world_size = dist.get_rank(group), dist.get_world_size(group)
    shards: list = [None] * world_size if rank == to else None
    dst = to if group is None else dist.get_global_rank(group, to)
    dist.gather_object(shard, shards, dst=dst, group=group)
    if rank != to:
        return None
    parts: dict[int, list] = {}
    for s in shards:
        for i, pieces_of_i in s.items():
            parts.setdefault(i, []).extend(pieces_of_i)
    return {i: _join(sorted(parts[i], key=lambda x: x[0]), shapes[i]) for i in sorted(parts)}


def _join(pieces: list[tuple[int, int, dict]], shape: torch.Size) -> dict:
    """One parameter's state from its pieces' states: element-wise tensors (shaped like the
    piece, as Adam's m and v) joined in order; anything else (Adam's step) from the first."""
    joined = {}
    for name, first in pieces[0][2].items():
        if (
            torch.is_tensor(first)
            and first.numel() == pieces[0][1] - pieces[0][0]
            and (first.dim() > 0 or len(shape) == 0)
        ):
            joined[name] = torch.cat([s[name].reshape(-1) for _, _, s in pieces]).view(shape)
        else:
            joined[name] = first
    return joined


def cut_state(state: dict, shape: torch.Size, a: int, b: int, piece_shape: torch.Size) -> dict:
    """The state of elements [a, b) of a parameter of `shape`, shaped `piece_shape`, out of its
    whole state (the inverse of gather_state's join)."""
    return {
        name: v.reshape(-1)[a:b].view(piece_shape).clone()
        if torch.is_tensor(v) and v.shape == shape
        else v
        for name, v in state.items()
    }

"""All-reduce three ways, built from point-to-point send and receive only.

Each function keeps the contract of `torch.distributed.all_reduce(tensor)` with SUM: the tensor is
replaced in place by the sum of every rank's tensor; any shape, numel and world size; float or
integer dtype; bit-identical results on every rank (each sum is computed once, on one rank, and
copied to the others).

    naive_all_reduce   reduce to rank 0, which sends the sum back: the parameter-server pattern.
                       Rank 0's link carries 2(p-1)n bytes; everyone else waits on it.
    ring_all_reduce    reduce-scatter then all-gather around a ring of p ranks, in p chunks.
                       Each link carries 2(p-1)/p n bytes, which no algorithm can beat.
    tree_all_reduce    reduce up a binomial tree, broadcast back down: 2 log2(p) steps,
                       few messages (good for small tensors), n bytes per step (poor for big ones).

They run on gloo (CPUs), whose send/recv keep messages apart by tag; on NCCL use
dist.all_reduce. Pass `record=[]` to get a list of `Transfer`s: which rank sent which chunk to
whom, at which step and when; the all-reduce notebook replays them. The ring follows the
classic description in Patarasuk & Yuan, "Bandwidth optimal all-reduce algorithms for clusters
of workstations" (2009); the bandwidth terms are those of Thakur, Rabenseifner & Gropp (2005).
"""

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

# Pipelining: a chunk travels as segments of this many bytes, so adding one segment overlaps the
# arrival of the next. Smaller segments pipeline better but pay gloo's per-message cost more often.
SEGMENT_BYTES = 4 << 20


@dataclass(frozen=True)
class Transfer:
    """One message of an all-reduce, seen from its sender."""

    algorithm: str
    phase: str  # "reduce-scatter", "all-gather", "reduce" or "broadcast"
    step: int
    src: int  # ranks within the group
    dst: int
    chunk: int  # which of the p chunks (ring), or -1 for the whole tensor
    numel: int
    start: float  # seconds since the all-reduce began on the sender
    end: float


class _Comm:
    """Rank, size and point-to-point calls for one group, with optional recording."""

    def __init__(self, group, algorithm: str, record: list | None):
        self.group = group
        self.rank = dist.get_rank(group)
        self.size = dist.get_world_size(group)
        self.algorithm = algorithm
        self.record = record
        self.t0 = time.perf_counter()

    def _global(self, rank: int) -> int:
        return rank if self.group is None else dist.get_global_rank(self.group, rank)

    def isend(self, tensor: Tensor, dst: int, tag: int = 0):
        return dist.isend(tensor, self._global(dst), group=self.group, tag=tag)

    def irecv(self, tensor: Tensor, src: int, tag: int = 0):
        return dist.irecv(tensor, self._global(src), group=self.group, tag=tag)

    def log(self, phase: str, step: int, dst: int, chunk: int, numel: int, start: float) -> None:
        if self.record is not None:
            now = time.perf_counter() - self.t0
            t = Transfer(self.algorithm, phase, step, self.rank, dst, chunk, numel, start, now)
            self.record.append(t)

    def now(self) -> float:
        return time.perf_counter() - self.t0


def _run(algorithm, name: str, tensor: Tensor, group, record: list | None) -> None:
    """Apply an algorithm on a flat contiguous tensor with the contract of all_reduce(tensor)."""
    if dist.get_backend(group) == "nccl":
        # NCCL matches a pair's messages in the order they were posted and ignores tags, which
        # the ring relies on; on GPUs use dist.all_reduce (the course's algorithms are gloo's).
        raise NotImplementedError(f"minidp's {name} all-reduce runs on gloo, not NCCL")
    comm = _Comm(group, name, record)
    if comm.rank < 0 or comm.size == 1 or tensor.numel() == 0:  # not in the group: nothing
        return
    work = tensor if tensor.is_contiguous() else tensor.contiguous()
    algorithm(work.view(-1), comm)
    if work is not tensor:
        tensor.copy_(work)


_SCRATCH: dict[tuple[torch.dtype, torch.device], Tensor] = {}


def _scratch(numel: int, like: Tensor) -> Tensor:
    """A receive buffer kept between calls. A fresh multi-megabyte buffer each call costs a page
    fault per 4 KB page on first touch, which at 4 MB is a tenth of the whole all-reduce."""
    key = (like.dtype, like.device)
    buf = _SCRATCH.get(key)
    if buf is None or buf.numel() < numel:
        buf = _SCRATCH[key] = torch.empty(numel, dtype=like.dtype, device=like.device)
    return buf[:numel]


def _segments(start: int, stop: int, per_segment: int) -> list[tuple[int, int]]:
    """[start, stop) cut into pieces of at most per_segment elements."""
    return [(a, min(a + per_segment, stop)) for a in range(start, stop, per_segment)]


def _naive_all_reduce(flat: Tensor, comm: _Comm) -> None:
    """Sum in place: everyone sends to rank 0, which adds in rank order and sends the sum back."""
    n, p = flat.numel(), comm.size
    if comm.rank == 0:
        inbox = _scratch((p - 1) * n, flat).view(p - 1, n)  # row i from rank i + 1
        recvs = [comm.irecv(inbox[src - 1], src) for src in range(1, p)]
        for src, work in enumerate(recvs, start=1):
            work.wait()
            flat += inbox[src - 1]  # in rank order, so the rounding never depends on timing
        start = comm.now()
        sends = {dst: comm.isend(flat, dst) for dst in range(1, p)}
        for dst, work in sends.items():
            work.wait()
            comm.log("broadcast", 1, dst, -1, n, start)
    else:
        start = comm.now()
        comm.isend(flat, 0).wait()
        comm.log("reduce", 0, 0, -1, n, start)
        comm.irecv(flat, 0).wait()


def _ring_all_reduce(flat: Tensor, comm: _Comm) -> None:
    """Sum in place: reduce-scatter then all-gather around the ring rank -> rank + 1.

    Reduce-scatter: at step s rank r passes chunk r - s on to the right, after adding its own
    values into it; after p - 1 steps rank r holds the full sum of chunk r + 1. All-gather: the
    finished chunks travel once more around the ring, p - 1 steps, copied rather than added.
    In both phases what a rank sends at step t + 1 is what it received at step t, so each segment
    is passed on as soon as it has arrived (and been added): the ring is pipelined.
    """
    p, r = comm.size, comm.rank
    left, right = (r - 1) % p, (r + 1) % p
    # p chunks as equal as possible; some are empty when numel < p, and both neighbours skip them.
    q, extra = divmod(flat.numel(), p)
    sizes = [q + (i < extra) for i in range(p)]
    starts = [sum(sizes[:i]) for i in range(p)]
    per = max(1, SEGMENT_BYTES // flat.element_size())
    scratch = _scratch(max(sizes), flat)
    steps = 2 * (p - 1)

    def segments(chunk: int) -> list[tuple[int, int]]:
        return _segments(starts[chunk], starts[chunk] + sizes[chunk], per)

    def post_recvs(t: int) -> list:
        """Receive step t's chunk from the left: into scratch to add (reduce-scatter), or
        straight into place (all-gather). A message's tag is (step << 20) + segment."""
        chunk = (r - t - 1) % p
        lo, recvs = starts[chunk], []
        for i, (a, b) in enumerate(segments(chunk)):
            into = scratch[a - lo : b - lo] if t < p - 1 else flat[a:b]
            recvs.append((comm.irecv(into, left, tag=(t << 20) + i), a, b, into))
        return recvs

    # When chunks travel in several segments, the all-gather's receives are posted at once, so
    # that a neighbour can pass on each finished segment the moment it has one, across the
    # phase boundary. They are safe: a chunk's final sum cannot arrive before this rank's own
    # contribution to it has been received, so has left this buffer. With one segment a chunk
    # there is nothing to pipeline, and an early receive only makes gloo write the neighbour's
    # send inline, holding it up: 0.72-0.83x torch's speed at 1-8 MB instead of 0.86-0.92x.
    early = range(p - 1, steps) if max(sizes) > per else []
    pending = {t: post_recvs(t) for t in early}
    sends = [comm.isend(flat[a:b], right, tag=i) for i, (a, b) in enumerate(segments(r))]
    start = comm.now()
    for t in range(steps):
        reduce = t < p - 1
        # Reduce-scatter receives share one scratch buffer, free again once step t - 1 is added;
        # posted after this rank's sends (posted before, they measured slower on gloo).
        for i, (work, a, b, into) in enumerate(pending.pop(t) if t in pending else post_recvs(t)):
            work.wait()
            if reduce:
                flat[a:b] += into  # overlaps with the next segment's arrival
            if t + 1 < steps:  # pass it on at once: it is what step t + 1 sends
                sends.append(comm.isend(flat[a:b], right, tag=((t + 1) << 20) + i))
        out = (r - t) % p
        comm.log("reduce-scatter" if reduce else "all-gather", t, right, out, sizes[out], start)
        start = comm.now()
    for work in sends:
        work.wait()


def _tree_all_reduce(flat: Tensor, comm: _Comm) -> None:
    """Sum in place: reduce up a binomial tree rooted at rank 0, then broadcast back down.

    At level k (distance 2**k) every rank with bit k set sends its partial sum to rank - 2**k and
    drops out; after ceil(log2 p) levels rank 0 holds the sum. The broadcast retraces the levels
    in reverse. Works for any p: a partner beyond the last rank is simply absent.
    """
    p, r = comm.size, comm.rank
    levels = (p - 1).bit_length()
    inbox = _scratch(flat.numel(), flat)
    for k in range(levels):
        d = 1 << k
        if r % (2 * d) == d:  # bit k set and all lower bits clear: my turn to hand up
            start = comm.now()
            comm.isend(flat, r - d).wait()
            comm.log("reduce", k, r - d, -1, flat.numel(), start)
            break
        if r % (2 * d) == 0 and r + d < p:
            comm.irecv(inbox, r + d).wait()
            flat += inbox
    for k in reversed(range(levels)):
        d = 1 << k
        if r % (2 * d) == d:
            comm.irecv(flat, r - d).wait()
        elif r % (2 * d) == 0 and r + d < p:
            start = comm.now()
            comm.isend(flat, r + d).wait()
            comm.log("broadcast", 2 * levels - 1 - k, r + d, -1, flat.numel(), start)


def naive_all_reduce(tensor: Tensor, group=None, record: list | None = None) -> None:
    """Sum `tensor` over the group in place, through rank 0 (like dist.all_reduce with SUM)."""
    _run(_naive_all_reduce, "naive", tensor, group, record)


def ring_all_reduce(tensor: Tensor, group=None, record: list | None = None) -> None:
    """Sum `tensor` over the group in place, around a ring (like dist.all_reduce with SUM)."""
    _run(_ring_all_reduce, "ring", tensor, group, record)


def tree_all_reduce(tensor: Tensor, group=None, record: list | None = None) -> None:
    """Sum `tensor` over the group in place, up and down a tree (like dist.all_reduce with SUM)."""
    _run(_tree_all_reduce, "tree", tensor, group, record)


ALGORITHMS = {"naive": naive_all_reduce, "ring": ring_all_reduce, "tree": tree_all_reduce}


def timed(fn: Callable[[], object], repeats: int) -> list[float]:
    """Seconds per call of fn() on the slowest rank, for each repeat (a collective itself).

    A barrier lines the ranks up before each call; the time that counts is the slowest rank's,
    since an all-reduce is finished only when it is finished everywhere.
    """
    times = []
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        fn()
        elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
        times.append(elapsed.item())
    return times

"""All-reduce three ways, built from point-to-point send and receive only.

Each function keeps the contract of `torch.distributed.all_reduce(tensor)` with SUM: the tensor is
replaced in place by the sum of every rank's tensor; any shape, numel and world size; float or
integer dtype; bit-identical results on every rank (each sum is computed once, on one rank, and
copied to the others); on a rank outside `group`, nothing happens.

    naive_all_reduce   reduce to rank 0, which sends the sum back: the parameter-server pattern.
                       Rank 0's link carries 2(p-1)n bytes; everyone else waits on it.
    ring_all_reduce    reduce-scatter then all-gather around a ring of p ranks, in p chunks, one
                       chunk per step: the textbook ring. Each link carries 2(p-1)/p n bytes,
                       which no algorithm can beat.
    tree_all_reduce    reduce up a binomial tree, broadcast back down: 2 log2(p) steps,
                       few messages (good for small tensors), n bytes per step (poor for big ones).

minidp.fast_ring holds the same ring tuned for speed, on the plumbing defined here (`Comm`,
`run_all_reduce`). They run on gloo (CPUs); on NCCL use dist.all_reduce. Pass `record=[]` to get
a list of `Transfer`s: which rank sent which chunk to whom, at which step and when; the all-reduce
notebook replays them. The ring follows the classic description in Patarasuk & Yuan, "Bandwidth
optimal all-reduce algorithms for clusters of workstations" (2009); the bandwidth terms are those
of Thakur, Rabenseifner & Gropp (2005). `python -m minidp.bench allreduce` times them.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


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


class Comm:
    """Rank, size and point-to-point calls for one group, with optional recording."""

    def __init__(self, group, algorithm: str, record: list | None):
        self.group = group
        self.rank = dist.get_rank(group)  # -1 on a rank outside the group
        self.size = dist.get_world_size(group)
        self.algorithm = algorithm
        self.record = record
        self.t0 = time.perf_counter()

    def _global(self, rank: int) -> int:
        return rank if self.group is None else dist.get_global_rank(self.group, rank)

    # `via`: another group over the same ranks, whose connections carry the message instead of
    # this one's (the fast ring's second connection at 2 ranks). Ranks stay this group's.
    def isend(self, tensor: Tensor, dst: int, tag: int = 0, via=None):
        return dist.isend(
            tensor, self._global(dst), group=self.group if via is None else via, tag=tag
        )

    def irecv(self, tensor: Tensor, src: int, tag: int = 0, via=None):
        return dist.irecv(
            tensor, self._global(src), group=self.group if via is None else via, tag=tag
        )

    def log(self, phase: str, step: int, dst: int, chunk: int, numel: int, start: float) -> None:
        if self.record is not None:
            now = time.perf_counter() - self.t0
            t = Transfer(self.algorithm, phase, step, self.rank, dst, chunk, numel, start, now)
            self.record.append(t)

    def now(self) -> float:
        return time.perf_counter() - self.t0


def run_all_reduce(algorithm, name: str, tensor: Tensor, group, record: list | None) -> None:
    """Apply algorithm(flat, comm) with the contract of all_reduce(tensor): any shape or layout,
    in place, nothing to do outside the group, alone, or for an empty tensor."""
    comm = Comm(group, name, record)
    # Membership first: on a rank outside the group even get_backend(group) raises, where
    # dist.all_reduce simply returns.
    if comm.rank < 0 or comm.size == 1 or tensor.numel() == 0:
        return
    if dist.get_backend(group) == "nccl":
        # NCCL runs a rank's sends and receives in order on one stream, and a send there waits for
        # its receive: posted in the order these algorithms post them, they can wait on each other
        # in a circle. On GPUs use dist.all_reduce (the course's algorithms are gloo's).
        raise NotImplementedError(f"minidp's {name} all-reduce runs on gloo, not NCCL")
    work = tensor if tensor.is_contiguous() else tensor.contiguous()
    algorithm(work.view(-1), comm)
    if work is not tensor:
        tensor.copy_(work)


def _naive_all_reduce(flat: Tensor, comm: Comm) -> None:
    """Sum in place: everyone sends to rank 0, which adds in rank order and sends the sum back."""
    n, p = flat.numel(), comm.size
    if comm.rank == 0:
        inbox = flat.new_empty(p - 1, n)  # row i from rank i + 1
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


def _ring_all_reduce(flat: Tensor, comm: Comm) -> None:
    """Sum in place: reduce-scatter then all-gather around the ring rank -> rank + 1.

    Reduce-scatter: at step s rank r sends chunk r - s to the right and adds chunk r - s - 1,
    arriving from the left, into its own copy. What it sends at step s + 1 is what it has just
    added to, so a partial sum gains one rank's values per hop; after p - 1 steps rank r holds the
    full sum of chunk r + 1. All-gather: p - 1 more steps pass the finished chunks on around the
    ring, copied over the receiver's chunk rather than added.
    """
    p, r = comm.size, comm.rank
    left, right = (r - 1) % p, (r + 1) % p
    # p views into flat whose sizes differ by at most one; with fewer elements than ranks some
    # are empty, and an empty message is still sent, so every step looks the same.
    chunks = flat.tensor_split(p)
    inbox = torch.empty_like(chunks[0])  # chunk 0 is the largest
    for s in range(p - 1):  # reduce-scatter
        out, into = (r - s) % p, (r - s - 1) % p
        arrived = inbox[: chunks[into].numel()]
        start = comm.now()
        recv = comm.irecv(arrived, left)  # posted before the send waits: no deadlock
        comm.isend(chunks[out], right).wait()
        recv.wait()
        comm.log("reduce-scatter", s, right, out, chunks[out].numel(), start)
        chunks[into].add_(arrived)  # in place: chunks are views into flat
    for s in range(p - 1):  # all-gather
        out, into = (r + 1 - s) % p, (r - s) % p
        start = comm.now()
        recv = comm.irecv(chunks[into], left)  # straight into place: a copy, not a sum
        comm.isend(chunks[out], right).wait()
        recv.wait()
        comm.log("all-gather", p - 1 + s, right, out, chunks[out].numel(), start)


def _tree_all_reduce(flat: Tensor, comm: Comm) -> None:
    """Sum in place: reduce up a binomial tree rooted at rank 0, then broadcast back down.

    At level k (distance 2**k) every rank with bit k set sends its partial sum to rank - 2**k and
    drops out; after ceil(log2 p) levels rank 0 holds the sum. The broadcast retraces the levels
    in reverse. Works for any p: a partner beyond the last rank is simply absent.
    """
    p, r = comm.size, comm.rank
    levels = (p - 1).bit_length()
    inbox = torch.empty_like(flat)
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
    run_all_reduce(_naive_all_reduce, "naive", tensor, group, record)


def ring_all_reduce(tensor: Tensor, group=None, record: list | None = None) -> None:
    """Sum `tensor` over the group in place, around a ring (like dist.all_reduce with SUM)."""
    run_all_reduce(_ring_all_reduce, "ring", tensor, group, record)


def tree_all_reduce(tensor: Tensor, group=None, record: list | None = None) -> None:
    """Sum `tensor` over the group in place, up and down a tree (like dist.all_reduce with SUM)."""
    run_all_reduce(_tree_all_reduce, "tree", tensor, group, record)


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

"""The ring all-reduce, tuned for speed: chunks travel in pieces, the ring becomes a pipeline.

    from minidp.fast_ring import fast_ring_all_reduce
    fast_ring_all_reduce(tensor)            # like dist.all_reduce(tensor), SUM, on gloo
    python -m minidp.bench allreduce        # against dist.all_reduce and the textbook ring

The same algorithm as `minidp.collectives.ring_all_reduce` (reduce-scatter, then all-gather,
around the ring rank -> rank + 1) behind the same contract, with what makes it fast on gloo: each
chunk is cut into pieces that are passed on as soon as they arrive, across the phase boundary
too; each receive is posted one piece ahead, so the next piece travels while this one is added;
the only buffers are at most two pieces, allocated per call; at 2 ranks, where both neighbours
are one rank, the two directions travel on two connections (a second group over the same ranks,
made on the first call). Pipelining a ring's segments is what Patarasuk & Yuan (2009) analyse and
what gloo's own ring does (gloo/allreduce.cc: segments, two in flight, at most 1 MB each); the
piece size, the order of posting and the connections were measured on a 2-core machine, see the
README.
"""

import weakref

import torch
import torch.distributed as dist
from torch import Tensor

from minidp.collectives import Comm, run_all_reduce

# A fast ring's chunk travels in pieces of at most this many bytes. Each piece is passed on as
# soon as it has arrived and been added, so the next rank works while this one receives. Every
# piece is a message, though, and gloo pays ~0.1 ms of CPU for one. On 2 cores, at 32 MB, 4 MB
# pieces did best in paired runs at 3 ranks (0.94x torch's, against 0.91x for 2 MB and 0.89x
# for 8 MB) and well at 2 ranks, where the way back has a connection of its own (1.10x, where
# 2 MB pieces gave 1.04x and the added messages cost more than the pipelining saves).
SEGMENT_BYTES = 4 << 20


# At 2 ranks a rank's left and right are one rank, and gloo joins two ranks by one connection: one
# socket, read and written under one lock by one I/O thread in each process, so the ring's two
# directions would take turns. A second group over the same ranks is a second connection; rank
# 0's messages keep the group's own, rank 1's take the second. With it, 4 MB pieces and the first
# receive posted first, `bench allreduce` at 4 MB went from 0.77-0.94x torch's to 0.97-1.17x.
_SECOND_CONNECTION: "weakref.WeakKeyDictionary[dist.ProcessGroup, dist.ProcessGroup]"
_SECOND_CONNECTION = weakref.WeakKeyDictionary()  # looked up by the group it doubles


def second_connection(group) -> "dist.ProcessGroup | None":
    """A second group over `group`'s ranks, made on the first call and reused; None for a group
    smaller than the world, since making a group takes every rank of the world.

    A collective, like the all-reduce that calls it: every rank of the group must call it. The
    second group lives until dist.destroy_process_group() ends them all.
    """
    pg = dist.group.WORLD if group is None else group
    if dist.get_world_size(pg) != dist.get_world_size():
        return None
    if pg not in _SECOND_CONNECTION:
        # torch has no public getter for a group's timeout; the second one gets the same, and
        # the same backend (the world's may differ: NCCL, with a gloo group beside it).
        timeout = pg._get_backend(torch.device("cpu")).options._timeout
        ranks, backend = dist.get_process_group_ranks(pg), dist.get_backend(pg)
        _SECOND_CONNECTION[pg] = dist.new_group(ranks, timeout=timeout, backend=backend)
    return _SECOND_CONNECTION[pg]


def _fast_ring_all_reduce(flat: Tensor, comm: Comm, segment_bytes: int = SEGMENT_BYTES) -> None:
    """Sum in place: the ring of collectives._ring_all_reduce, pipelined piece by piece.

    What a rank sends at step t + 1 is what it received at step t, so each piece goes on to the
    right as soon as it has arrived (and been added), across the phase boundary too. Gloo moves a
    message's bytes only once both ends have posted it, so each receive is posted one piece ahead:
    the next piece travels while this one is added and passed on. The reduce-scatter's pieces
    arrive in at most two buffers of one piece, taking turns, that live for this call only; the
    all-gather's go straight into place.
    """
    p, r = comm.size, comm.rank
    left, right, steps = (r - 1) % p, (r + 1) % p, 2 * (p - 1)
    per = max(1, segment_bytes // flat.element_size())
    chunks = flat.tensor_split(p)
    pieces = [chunk.split(per) for chunk in chunks]  # an empty chunk is one empty piece
    # Everything this rank receives, in order: at step t, the pieces of chunk r - t - 1.
    arrivals = [(t, piece) for t in range(steps) for piece in pieces[(r - t - 1) % p]]
    added = sum(t < p - 1 for t, _ in arrivals)  # the reduce-scatter's, which need a buffer
    inboxes = [torch.empty_like(pieces[0][0]) for _ in range(min(2, added))]  # the largest
    # Which connection each rank's messages take: at 2 ranks, one each (see second_connection).
    lines = [None] * p if p != 2 else [None, second_connection(comm.group)]

    def receive(i: int):
        piece = arrivals[i][1]
        into = inboxes[i % 2][: piece.numel()] if i < added else piece
        return comm.irecv(into, left, via=lines[left]), into

    def send(piece: Tensor):
        return comm.isend(piece, right, via=lines[r])

    # Receive handles are kept until the end: gloo wakes the waiting thread before its I/O thread
    # has let go of the buffer, and freeing the handle at once spins until it has
    # (gloo/common/memory.h), which cost 0.1-0.2 ms of CPU a call here.
    recvs, i = [receive(0)], 0
    # Step 0: my own chunk r, after the first receive is posted. A send that meets a posted
    # receive is written by the sending thread, holding its connection's lock; when both
    # directions shared one connection that stalled the other's reads, and sending first measured
    # faster. Each on its own connection, posting the receive first is (see the README).
    sends = [send(piece) for piece in pieces[r]]
    for t in range(steps):
        start, reduce = comm.now(), t < p - 1
        for piece in pieces[(r - t - 1) % p]:
            if i + 1 < len(arrivals):
                recvs.append(receive(i + 1))  # its buffer's last piece was added at i - 1
            work, into = recvs[i]
            work.wait()
            if reduce:
                piece += into
            if t + 1 < steps:  # pass it on: it is what step t + 1 sends
                sends.append(send(piece))
            i += 1
        out = (r - t) % p
        comm.log(
            "reduce-scatter" if reduce else "all-gather", t, right, out, chunks[out].numel(), start
        )
    # A piece being sent is never written before its send is done: a chunk's final sum, which
    # overwrites it in the all-gather, cannot exist before this rank's part has left.
    for work in sends:
        work.wait()


def fast_ring_all_reduce(
    tensor: Tensor, group=None, record: list | None = None, segment_bytes: int = SEGMENT_BYTES
) -> None:
    """Sum `tensor` over the group in place, around a pipelined ring (like dist.all_reduce)."""
    run_all_reduce(
        lambda flat, comm: _fast_ring_all_reduce(flat, comm, segment_bytes),
        "fast ring",
        tensor,
        group,
        record,
    )

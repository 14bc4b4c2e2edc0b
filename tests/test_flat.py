"""Flat shards (minidp.flat): the layout covers every element once, and a gradient packed,
reduce-scattered and unpacked is the average of every rank's gradient, on both reduce-scatters
(gloo's all-to-all and the backend's own, the one NCCL runs), with None where no rank had one."""

import pytest
import torch
import torch.distributed as dist

import minidp
from minidp.events import Event
from minidp.flat import FlatLayout, all_gather, bytes_sent, pack, reduce_scatter, unpack

pytestmark = pytest.mark.usefixtures("no_orphans")

SHAPES = [(3, 4), (5,), (2, 2, 2), (1,), (7,)]  # 33 numbers: padded at 2, 4 and 5 ranks


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 5, 40])
def test_layout_puts_every_element_on_exactly_one_rank(world_size):
    numels = [torch.Size(s).numel() for s in SHAPES]
    layout = FlatLayout(numels, world_size)
    assert layout.padded_numel == world_size * layout.shard_numel >= layout.numel == 33
    assert layout.shard_numel == -(-33 // world_size)
    held = []
    for rank in range(world_size):
        for index, start, stop, at in layout.pieces(rank):
            assert 0 <= at and at + stop - start <= layout.shard_numel
            flat = layout.offsets[index] + start
            assert flat - rank * layout.shard_numel == at  # where the shard says it is
            held += range(flat, flat + stop - start)
    assert held == list(range(33))


def _grads(rank: int) -> list[torch.Tensor | None]:
    """Rank `rank`'s gradients: tensor 1 on rank 0 only, tensor 3 on no rank."""
    g = torch.Generator().manual_seed(rank)
    grads = [torch.randn(s, generator=g, dtype=torch.float64) for s in SHAPES]
    if rank != 0:
        grads[1] = None
    grads[3] = None
    return grads


def _round_trip(native):
    rank, K = dist.get_rank(), dist.get_world_size()
    layout = FlatLayout([torch.Size(s).numel() for s in SHAPES], K)
    grads = _grads(rank)
    events = None if native else []  # gloo's own reduce-scatter has no future to stamp
    out = reduce_scatter(pack(layout, grads, torch.float64), None, events, native=native).wait()
    pieces = layout.pieces(rank)
    targets = [torch.zeros(stop - start, dtype=torch.float64) for _, start, stop, _ in pieces]
    unpack(layout, out, pieces, targets, [g is not None for g in grads], K)
    mine = {(i, a, b): t.grad for (i, a, b, _), t in zip(pieces, targets, strict=True)}
    # And back: every rank's shard, gathered, in rank order.
    shard = torch.full((layout.shard_numel,), float(rank), dtype=torch.float64)
    whole = torch.empty(layout.padded_numel, dtype=torch.float64)
    all_gather(whole, shard).wait()
    return mine, whole, events


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("native", [False, True], ids=["all-to-all", "native"])
def test_packed_gradients_come_back_averaged_into_the_shards(world_size, native):
    everyone = [_grads(r) for r in range(world_size)]
    for mine, whole, events in minidp.launch(_round_trip, world_size, native):
        for (i, a, b), grad in mine.items():
            present = [g[i] for g in everyone if g[i] is not None]
            if not present:
                assert grad is None  # no rank had it: no gradient, as in one process
                continue
            mean = sum(g.reshape(-1)[a:b] for g in present) / world_size
            torch.testing.assert_close(grad, mean, rtol=0, atol=1e-15)
        S = len(whole) // world_size
        assert torch.equal(whole, torch.arange(world_size).double().repeat_interleave(S))
        if events is not None:
            assert [e.kind for e in events] == ["reduce-scatter"]


def test_one_event_record_for_every_timeline():
    # DDP's instants and FSDP's spans are one type, under the names each module exports.
    assert minidp.ddp.Event is minidp.flat.Event is minidp.buckets.Event is Event
    instant, span = Event("launch", 3), Event("all-gather", 0, 1.0, 2.5, 400)
    assert instant.end == instant.start == instant.time and instant.index == 3
    assert (span.index, span.unit, span.end - span.start, span.nbytes) == (0, 0, 1.5, 400)
    assert Event("forward").start >= instant.start  # stamped when made


def test_bytes_sent_is_what_a_ring_sends():
    events = [
        Event("all-gather", 0, 0.0, 1.0, 400),
        Event("reduce-scatter", 0, 1.0, 2.0, 400),
        Event("all-reduce", -1, 2.0, 3.0, 100),
        Event("forward", 0, 0.0, 1.0),
    ]
    assert bytes_sent(events, 4) == 0.75 * 400 + 0.75 * 400 + 2 * 0.75 * 100
    assert bytes_sent(events, 1) == 0

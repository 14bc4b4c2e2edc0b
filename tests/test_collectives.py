"""Our all-reduce algorithms against torch.distributed.all_reduce, on real processes."""

import gc

import psutil
import pytest
import torch
import torch.distributed as dist

import minidp
from minidp.collectives import ALGORITHMS, Transfer, ring_all_reduce
from minidp.fast_ring import fast_ring_all_reduce, second_connection

pytestmark = pytest.mark.usefixtures("no_orphans")

# Every algorithm of ours behind dist.all_reduce's contract: the three of notebook 06 and the
# tuned ring.
ALL = {**ALGORITHMS, "fast ring": fast_ring_all_reduce}
RINGS = {"ring": ring_all_reduce, "fast ring": fast_ring_all_reduce}
NUMELS = [0, 1, 2, 3, 5, 7, 64, 1001, 300_007]  # empty, below, at and above p; not divisible by p
DTYPES = [torch.float32, torch.float64, torch.int32, torch.int64, torch.bfloat16]


def _input(rank: int, numel: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * seed + 10 * rank + numel)
    return (torch.randn(numel, generator=g) * 100).to(dtype)


def _compare_with_torch(name: str, numels: list[int] = NUMELS, **options) -> list[str]:
    """Run `name` on every size and dtype; return a description of each mismatch."""
    algorithm, rank, failures = ALL[name], dist.get_rank(), []
    for numel in numels:
        for seed, dtype in enumerate(DTYPES):
            x = _input(rank, numel, dtype, seed)
            expected = x.clone()
            dist.all_reduce(expected)
            got = x.clone()
            algorithm(got, **options)
            if dtype.is_floating_point:
                # Another summation order rounds differently: both results must lie within the
                # rounding bound of p - 1 additions, (p - 1) * eps * sum |x_i|, of the exact sum.
                exact, magnitude = x.double(), x.double().abs()
                dist.all_reduce(exact)
                dist.all_reduce(magnitude)
                bound = (dist.get_world_size() - 1) * torch.finfo(dtype).eps * magnitude
                for result in (got, expected):
                    if ((result.double() - exact).abs() > bound).any():
                        failures.append(f"{numel} {dtype}: beyond rounding of the exact sum")
            elif not torch.equal(got, expected):
                failures.append(f"{numel} {dtype}: {got} != {expected}")
            # The same bits on every rank: each rank checks it against rank 0's result.
            first = got.clone()
            dist.broadcast(first, 0)
            if not torch.equal(first.view(torch.uint8), got.view(torch.uint8)):
                failures.append(f"{numel} {dtype}: ranks disagree")
    return failures


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("name", sorted(ALL))
def test_matches_torch_all_reduce(name, world_size):
    for failures in minidp.launch(_compare_with_torch, world_size, name, timeout=30):
        assert failures == []


@pytest.mark.parametrize("world_size", [2, 3, 4])
@pytest.mark.parametrize("segment_bytes", [4, 24, 400])
def test_fast_ring_in_many_pieces_matches_torch(world_size, segment_bytes):
    # Tiny pieces: chunks travel in one to a few hundred pieces, the pipeline runs across steps
    # and phases, the path that large tensors take, exercised at small sizes.
    numels = [n for n in NUMELS if n <= 1001]
    results = minidp.launch(
        _compare_with_torch,
        world_size,
        "fast ring",
        numels,
        segment_bytes=segment_bytes,
        timeout=60,
    )
    for failures in results:
        assert failures == []


def _shapes_and_layouts(name: str) -> bool:
    """Multi-dimensional and non-contiguous tensors are reduced in place, like dist.all_reduce."""
    rank = dist.get_rank()
    base = torch.arange(24, dtype=torch.float64).reshape(4, 6) * (rank + 1)
    for x in [base.clone(), base.clone().t(), base.clone()[:, ::2], base.clone().reshape(2, 3, 4)]:
        expected = x.clone()
        dist.all_reduce(expected)
        storage = x.data_ptr()
        ALL[name](x)
        assert x.data_ptr() == storage  # in place: the caller's tensor holds the sum
        torch.testing.assert_close(x, expected, rtol=0, atol=0)
    return True


@pytest.mark.parametrize("name", sorted(ALL))
def test_any_shape_in_place(name):
    assert minidp.launch(_shapes_and_layouts, 3, name, timeout=30) == [True] * 3


def _on_subgroup(name: str, members: list[int]) -> tuple[list[float], list[Transfer]]:
    """Every rank calls the algorithm with a group of `members`, as with dist.all_reduce: the
    members reduce among themselves, the others return at once with x untouched."""
    group = dist.new_group(members)
    x, record = torch.arange(5.0) + 10 * dist.get_rank(), []
    ALL[name](x, group=group, record=record)
    expected = torch.arange(5.0) + 10 * dist.get_rank()
    dist.all_reduce(expected, group=group)  # on a rank outside the group: returns, a no-op
    assert torch.equal(x, expected)
    return x.tolist(), record


@pytest.mark.parametrize("name", sorted(ALL))
def test_subgroup_and_the_ranks_outside_it(name):
    results = minidp.launch(_on_subgroup, 4, name, [0, 2, 3], timeout=30)
    member = [5 * 10 + 3 * i for i in range(5)]  # ranks 0, 2 and 3: 3i + 10 * (0 + 2 + 3)
    assert [x for x, _ in results] == [member, [10.0 + i for i in range(5)], member, member]
    assert results[1][1] == []  # rank 1 took no part, sent nothing
    for _, record in results[:1] + results[2:]:
        # Members are numbered within the group (0, 1, 2), and send only to each other.
        assert record and {t.src for t in record} | {t.dst for t in record} <= {0, 1, 2}


def _two_ranks_on_connections(members: list[int], explicit: bool = False):
    """The fast ring on a group of two, six times: its sums, how many threads the process gained
    in the first call (a group's worth if the ring made its second connection) and in the five
    after it, and whether the group has a second connection."""
    group = (
        None if len(members) == dist.get_world_size() and not explicit else dist.new_group(members)
    )
    sums, start = [], psutil.Process().num_threads()
    for call in range(6):
        x = torch.arange(5.0) + 10 * dist.get_rank() + call
        fast_ring_all_reduce(x, group=group)
        sums.append(x.tolist())
        if call == 0:
            after_first = psutil.Process().num_threads()
    after_all = psutil.Process().num_threads()
    has_line = second_connection(group) is not None  # the ring's own by now, if it has one
    return sums, after_first - start, after_all - after_first, has_line


@pytest.mark.parametrize("explicit", [False, True], ids=["world", "world-sized group"])
def test_fast_ring_at_two_ranks_makes_its_second_connection_once(explicit):
    # The first call makes it (a gloo group starts threads of its own); a group per call would
    # be a leak. The sums must not depend on which connection carries what.
    for rank, (sums, first, later, has_line) in enumerate(
        minidp.launch(_two_ranks_on_connections, 2, [0, 1], explicit, timeout=30)
    ):
        assert sums == [[2 * i + 10 + 2 * call for i in range(5)] for call in range(6)], rank
        assert first > 0 and later == 0 and has_line


def test_fast_ring_on_two_ranks_of_a_larger_world_keeps_one_connection():
    # Making a group takes every rank of the world, and rank 1 takes no part here.
    results = minidp.launch(_two_ranks_on_connections, 3, [0, 2], timeout=30)
    member = [[2 * i + 20 + 2 * call for i in range(5)] for call in range(6)]
    outside = [[i + 10 + call for i in range(5)] for call in range(6)]
    assert [sums for sums, *_ in results] == [member, outside, member]
    assert [(first, later, has_line) for _, first, later, has_line in results] == [
        (0, 0, False)
    ] * 3


def _record_ring(name: str, numel: int) -> list[Transfer]:
    record: list[Transfer] = []
    RINGS[name](torch.ones(numel), record=record)
    return record


@pytest.mark.parametrize("name", sorted(RINGS))
def test_ring_records_who_sent_what(name):
    p, numel = 4, 10  # chunks of 3, 3, 2, 2 elements
    records = minidp.launch(_record_ring, p, name, numel)
    for rank, record in enumerate(records):
        assert [t.step for t in record] == list(range(2 * (p - 1)))
        assert all(t.src == rank and t.dst == (rank + 1) % p for t in record)
        assert [t.phase for t in record] == ["reduce-scatter"] * (p - 1) + ["all-gather"] * (p - 1)
        # Reduce-scatter sends chunk r - s at step s; all-gather sends chunk r + 1 - s.
        expected_chunks = [(rank - s) % p for s in range(p - 1)]
        expected_chunks += [(rank + 1 - s) % p for s in range(p - 1)]
        assert [t.chunk for t in record] == expected_chunks
        assert [t.numel for t in record] == [[3, 3, 2, 2][c] for c in expected_chunks]
        assert all(0 <= t.start <= t.end for t in record)
    # Every rank ends the reduce-scatter holding a different chunk: together, all of them.
    assert sorted(records[r][p - 1].chunk for r in range(p)) == list(range(p))


def _memory_around_calls(numel: int) -> tuple[int, int, int]:
    """Live tensors before and after three fast ring calls, and how much resident memory grew.

    Its one buffer here is a 40 MB piece, above glibc's 32 MB ceiling for serving a block from
    the heap: allocated with mmap, unmapped when freed, so a kept buffer would stay resident.
    """
    x = torch.ones(numel)
    ring_all_reduce(x)  # sets up gloo's point-to-point connections, once per process
    gc.collect()
    tensors, rss = sum(isinstance(o, torch.Tensor) for o in gc.get_objects()), _rss()
    for _ in range(3):
        fast_ring_all_reduce(x, segment_bytes=1 << 30)
    gc.collect()
    return tensors, sum(isinstance(o, torch.Tensor) for o in gc.get_objects()), _rss() - rss


def _rss() -> int:
    return psutil.Process().memory_info().rss


def test_fast_ring_keeps_no_buffer_after_the_call():
    piece = 10 << 20  # float32 elements: a 40 MB chunk on each of 2 ranks, in one piece
    for before, after, grown in minidp.launch(_memory_around_calls, 2, 2 * piece, timeout=60):
        assert after == before  # no tensor left behind, in a module or anywhere
        assert grown < 4 * piece // 2  # nor its memory: well under the 40 MB it took

"""Our all-reduce algorithms against torch.distributed.all_reduce, on real processes."""

import pytest
import torch
import torch.distributed as dist

import minidp
from minidp.collectives import ALGORITHMS, Transfer, ring_all_reduce

NUMELS = [1, 2, 3, 5, 7, 64, 1001, 300_007]  # below, at and above p; not divisible by p
DTYPES = [torch.float32, torch.float64, torch.int32, torch.int64, torch.bfloat16]


def _input(rank: int, numel: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * seed + 10 * rank + numel)
    return (torch.randn(numel, generator=g) * 100).to(dtype)


def _compare_with_torch(name: str, numels: list[int] = NUMELS) -> list[str]:
    """Run `name` on every size and dtype; return a description of each mismatch."""
    algorithm, rank, failures = ALGORITHMS[name], dist.get_rank(), []
    for numel in numels:
        for seed, dtype in enumerate(DTYPES):
            x = _input(rank, numel, dtype, seed)
            expected = x.clone()
            dist.all_reduce(expected)
            got = x.clone()
            algorithm(got)
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
@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_matches_torch_all_reduce(name, world_size):
    for failures in minidp.launch(_compare_with_torch, world_size, name, timeout=30):
        assert failures == []


def _shapes_and_layouts(name: str) -> bool:
    """Multi-dimensional and non-contiguous tensors are reduced in place, like dist.all_reduce."""
    rank = dist.get_rank()
    base = torch.arange(24, dtype=torch.float64).reshape(4, 6) * (rank + 1)
    for x in [base.clone(), base.clone().t(), base.clone()[:, ::2], base.clone().reshape(2, 3, 4)]:
        expected = x.clone()
        dist.all_reduce(expected)
        storage = x.data_ptr()
        ALGORITHMS[name](x)
        assert x.data_ptr() == storage  # in place: the caller's tensor holds the sum
        torch.testing.assert_close(x, expected, rtol=0, atol=0)
    return True


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_any_shape_in_place(name):
    assert minidp.launch(_shapes_and_layouts, 3, name, timeout=30) == [True] * 3


def _on_subgroup(name: str) -> list[float]:
    """Ranks 0 and 2 reduce among themselves while rank 1 stays out."""
    group = dist.new_group([0, 2])
    x = torch.full((5,), float(dist.get_rank() + 1))
    if dist.get_rank() != 1:
        ALGORITHMS[name](x, group=group)
    return x.tolist()


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_subgroup(name):
    r0, r1, r2 = minidp.launch(_on_subgroup, 3, name, timeout=30)
    assert r0 == r2 == [4.0] * 5
    assert r1 == [2.0] * 5


def _record_ring(numel: int) -> list[Transfer]:
    record: list[Transfer] = []
    ring_all_reduce(torch.ones(numel), record=record)
    return record


def test_ring_records_who_sent_what():
    p, numel = 4, 10  # chunks of 3, 3, 2, 2 elements
    records = minidp.launch(_record_ring, p, numel)
    for rank, record in enumerate(records):
        assert [t.step for t in record] == list(range(2 * (p - 1)))
        assert all(t.src == rank and t.dst == (rank + 1) % p for t in record)
        # Reduce-scatter sends chunk r - s at step s; all-gather sends chunk r + 1 - s.
        expected_chunks = [(rank - s) % p for s in range(p - 1)]
        expected_chunks += [(rank + 1 - s) % p for s in range(p - 1)]
        assert [t.chunk for t in record] == expected_chunks
        assert [t.numel for t in record] == [[3, 3, 2, 2][c] for c in expected_chunks]
        assert all(0 <= t.start <= t.end for t in record)
    # Every rank ends the reduce-scatter holding a different chunk: together, all of them.
    assert sorted(records[r][p - 1].chunk for r in range(p)) == list(range(p))


def _segmented(name: str, segment_bytes: int) -> list[str]:
    """With tiny segments, chunks travel in many pieces and the phases pipeline into each other:
    the path that large tensors take, exercised at small sizes (a few to a few hundred segments
    a chunk; the largest size would take thousands of messages a step)."""
    from minidp import collectives

    collectives.SEGMENT_BYTES = segment_bytes
    return _compare_with_torch(name, [n for n in NUMELS if n <= 1001])


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_ring_in_segments_matches_torch(world_size):
    for failures in minidp.launch(_segmented, world_size, "ring", 24, timeout=30):
        assert failures == []

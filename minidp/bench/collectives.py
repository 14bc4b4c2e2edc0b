"""Benchmark: our all-reduce algorithms against dist.all_reduce, busbw as nccl-tests measures it.

    python -m minidp.bench allreduce [--world-size 2] [--repeats 50]
    minidp.bench.allreduce(2, sizes, repeats=10)   # from a notebook: {size: {algorithm: seconds}}

Bandwidths follow nccl-tests (PERFORMANCE.md): algbw = bytes / time, and for all-reduce
busbw = algbw * 2(p-1)/p, the rate each link must sustain, comparable across world sizes.
"""

import statistics

import torch
import torch.distributed as dist

from minidp.collectives import ALGORITHMS, timed
from minidp.launch import launch

SIZES = [4 << 10, 64 << 10, 512 << 10, 4 << 20, 32 << 20]


def _allreduce_worker(sizes: list[int], repeats: int, warmup: int) -> dict:
    """Seconds of each all-reduce, per round: {size: {algorithm: [seconds, ...]}}."""
    candidates = {"torch": dist.all_reduce, **ALGORITHMS}
    medians = {}
    for size in sizes:
        x = torch.ones(size // 4)
        runs = {name: [] for name in candidates}
        for _ in range(warmup):
            for fn in candidates.values():
                fn(x)
        # Interleave algorithms so that a burst of noise on the machine hits all of them alike.
        for _ in range(repeats):
            for name, fn in candidates.items():
                runs[name] += timed(lambda fn=fn, x=x: fn(x), 1)
        medians[size] = runs
    return medians


def _human(size: int) -> str:
    return f"{size >> 20} MB" if size >= 1 << 20 else f"{size >> 10} KB"


def allreduce(world_size: int = 2, sizes: list[int] = SIZES, repeats: int = 50) -> dict:
    """Run the all-reduce benchmark and print its table; returns {size: {algorithm: seconds}}."""
    rounds = launch(_allreduce_worker, world_size, sizes, repeats, 3, timeout=300)[0]
    factor = 2 * (world_size - 1) / world_size
    print(f"all-reduce, {world_size} ranks, gloo, float32, median of {repeats} rounds")
    header = f"{'size':>7} {'algorithm':>9} {'time ms':>9} {'algbw GB/s':>11} {'busbw GB/s':>11}"
    print(header + f" {'vs torch':>9}")
    medians = {}
    for size, by_name in rounds.items():
        medians[size] = {name: statistics.median(t) for name, t in by_name.items()}
        for name, times in by_name.items():
            seconds = medians[size][name]
            algbw = size / seconds / 1e9
            # busbw ratio = inverse time ratio, taken within each round (the algorithms ran
            # back to back, so a slow spell of the machine cancels out) and then the median.
            ratio = statistics.median(t / s for t, s in zip(by_name["torch"], times, strict=True))
            print(
                f"{_human(size):>7} {name:>9} {seconds * 1e3:9.3f} {algbw:11.3f} "
                f"{algbw * factor:11.3f} {ratio:8.2f}x"
            )
    return medians

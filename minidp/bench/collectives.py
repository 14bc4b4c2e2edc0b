"""Benchmark of all-reduce: our algorithms from send/recv, each against dist.all_reduce.

    python -m minidp.bench allreduce [--sizes 4MB 32MB] [--repeats 50]

Bandwidths follow nccl-tests (PERFORMANCE.md): algbw = bytes / time, and for all-reduce
busbw = algbw * 2(p-1)/p, the rate each link must sustain, comparable across world sizes.
"""

import argparse
import os
import statistics

import torch
import torch.distributed as dist

from minidp.collectives import ALGORITHMS, timed
from minidp.fast_ring import fast_ring_all_reduce
from minidp.launch import launch

SIZES = [4 << 10, 64 << 10, 512 << 10, 4 << 20, 32 << 20]


def _allreduce_worker(sizes: list[int], repeats: int, warmup: int) -> dict:
    """Seconds per round, {size: {algorithm: (torch's, ours)}}, each of ours paired with torch's."""
    ours = {**ALGORITHMS, "fast ring": fast_ring_all_reduce}
    rounds = {}
    for size in sizes:
        x, rounds[size] = torch.ones(size // 4), {}
        for name, fn in ours.items():
            for _ in range(warmup):
                dist.all_reduce(x)
                fn(x)
            pair = {dist.all_reduce: [], fn: []}
            # Each of ours runs in rounds with torch's and nothing else: another algorithm's
            # buffers in between change how the heap serves this one's (the fast ring at 4 MB
            # measured 0.77x beside another ring's, 0.88x alone with torch's). A burst of noise
            # on the machine hits both of a round alike; which one goes first alternates.
            for i in range(repeats):
                for f in (dist.all_reduce, fn) if i % 2 == 0 else (fn, dist.all_reduce):
                    pair[f] += timed(lambda f=f, x=x: f(x), 1)
            rounds[size][name] = (pair[dist.all_reduce], pair[fn])
    return rounds


def human_size(size: int) -> str:
    return f"{size >> 20} MB" if size >= 1 << 20 else f"{size >> 10} KB"


def parse_size(text: str) -> int:
    """'4KB' or '32MB' as bytes, for the command line."""
    number, unit = text.upper()[:-2], text.upper()[-2:]
    if unit not in ("KB", "MB") or not number.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: give a size such as 64KB or 4MB")
    return int(number) << (10 if unit == "KB" else 20)


def allreduce(world_size: int = 2, sizes: list[int] = SIZES, repeats: int = 50) -> dict:
    """Run the all-reduce benchmark and print its table; returns {size: {algorithm: seconds}}."""
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())  # the others' load, before ours
    rounds = launch(_allreduce_worker, world_size, sizes, repeats, 3, timeout=300)[0]
    factor = 2 * (world_size - 1) / world_size
    print(
        f"all-reduce, {world_size} ranks, gloo, float32; each of ours in {repeats} rounds with "
        "torch's, medians"
    )
    print(f"load average before: {load} (1, 5, 15 min) on {os.cpu_count()} cores")
    header = f"{'size':>7} {'algorithm':>9} {'time ms':>9} {'algbw GB/s':>11} {'busbw GB/s':>11}"
    print(header + f" {'vs torch':>9} {'quartiles':>11}")
    medians = {}
    for size, by_name in rounds.items():
        every_torch = [t for torch_times, _ in by_name.values() for t in torch_times]
        medians[size] = {"torch": statistics.median(every_torch)}
        rows = {"torch": (every_torch, every_torch)}
        for name, (torch_times, times) in by_name.items():
            medians[size][name], rows[name] = statistics.median(times), (torch_times, times)
        for name, (torch_times, times) in rows.items():
            seconds = medians[size][name]
            algbw = size / seconds / 1e9
            # busbw ratio = inverse time ratio, taken within each round (the two ran back to
            # back, so a slow spell of the machine cancels out) and then the median; its
            # quartiles say how much the rounds disagree.
            ratios = [t / s for t, s in zip(torch_times, times, strict=True)]
            low, ratio, high = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
            print(
                f"{human_size(size):>7} {name:>9} {seconds * 1e3:9.3f} {algbw:11.3f} "
                f"{algbw * factor:11.3f} {ratio:8.2f}x {low:5.2f}-{high:4.2f}"
            )
    print(f"load average after: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return medians


# Every variant is built by the call the trainer uses for torch's DDP and ours; ours may add
# arguments of their own.

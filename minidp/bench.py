"""Benchmarks: ours against torch's, side by side in one run. Not tests.

    python -m minidp.bench allreduce     # our all-reduce algorithms vs dist.all_reduce
    python -m minidp.bench ddp           # our DDP variants vs torch's DDP, on a ~10M GPT
    python -m minidp.bench train         # trainer tokens/s at 1 and 2 CPU ranks

Each prints medians over repeats and ratios against torch measured in the same processes, in
the same run, interleaved: on a shared machine an absolute time means little, a ratio a lot more.
Bandwidths follow nccl-tests (PERFORMANCE.md): algbw = bytes / time, and for all-reduce
busbw = algbw * 2(p-1)/p, the rate each link must sustain, comparable across world sizes.
"""

import argparse
import statistics
import time

import torch
import torch.distributed as dist

from minidp.collectives import ALGORITHMS
from minidp.launch import launch

SIZES = [4 << 10, 64 << 10, 512 << 10, 4 << 20, 32 << 20]


def _timed(fn, repeats: int) -> list[float]:
    """Seconds per call of fn() on the slowest rank, for each repeat."""
    times = []
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        fn()
        elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # an all-reduce is done when all are done
        times.append(elapsed.item())
    return times


def _allreduce_worker(sizes: list[int], repeats: int, warmup: int) -> dict:
    """Median seconds per all-reduce of each algorithm at each size (bytes of float32)."""
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
                runs[name] += _timed(lambda fn=fn, x=x: fn(x), 1)
        medians[size] = {name: statistics.median(t) for name, t in runs.items()}
    return medians


def _human(size: int) -> str:
    return f"{size >> 20} MB" if size >= 1 << 20 else f"{size >> 10} KB"


def allreduce(world_size: int = 2, sizes: list[int] = SIZES, repeats: int = 50) -> dict:
    """Run the all-reduce benchmark and print its table; returns {size: {algorithm: seconds}}."""
    medians = launch(_allreduce_worker, world_size, sizes, repeats, 3, timeout=300)[0]
    factor = 2 * (world_size - 1) / world_size
    print(f"all-reduce, {world_size} ranks, gloo, float32, median of {repeats}")
    header = f"{'size':>7} {'algorithm':>9} {'time ms':>9} {'algbw GB/s':>11} {'busbw GB/s':>11}"
    print(header + f" {'vs torch':>9}")
    for size, by_name in medians.items():
        for name, seconds in by_name.items():
            algbw = size / seconds / 1e9
            ratio = by_name["torch"] / seconds  # busbw ratio = inverse time ratio
            print(
                f"{_human(size):>7} {name:>9} {seconds * 1e3:9.3f} {algbw:11.3f} "
                f"{algbw * factor:11.3f} {ratio:8.2f}x"
            )
    return medians


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m minidp.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="which", required=True)
    ar = sub.add_parser("allreduce", help="our all-reduce algorithms vs dist.all_reduce")
    ar.add_argument("--world-size", type=int, default=2, help="worker processes (default 2)")
    ar.add_argument("--repeats", type=int, default=50, help="timed repeats per size (default 50)")
    args = parser.parse_args(argv)
    if args.which == "allreduce":
        allreduce(args.world_size, SIZES, args.repeats)


if __name__ == "__main__":
    main()

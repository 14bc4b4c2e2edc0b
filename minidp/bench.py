"""Benchmarks: ours against torch's, side by side in one run. Not tests.

    python -m minidp.bench allreduce     # our all-reduce algorithms (both rings) vs dist.all_reduce
    python -m minidp.bench ddp           # our DDP variants vs torch's DDP, on a small GPT
    python -m minidp.bench train         # trainer tokens/s at 1 and 2 CPU ranks

Each prints medians over repeats and ratios against torch measured in the same processes, in
the same run, interleaved: on a shared machine an absolute time means little, a ratio a lot more.
Bandwidths follow nccl-tests (PERFORMANCE.md): algbw = bytes / time, and for all-reduce
busbw = algbw * 2(p-1)/p, the rate each link must sustain, comparable across world sizes.
"""

import argparse
import os
import statistics
import tempfile

import torch
import torch.distributed as dist

from minidp.collectives import ALGORITHMS, ring_all_reduce, timed
from minidp.ddp import AfterBackwardDDP, DistributedDataParallel, PerParameterDDP
from minidp.fast_ring import fast_ring_all_reduce
from minidp.launch import launch
from minidp.model import GPT, GPTConfig

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


def _human(size: int) -> str:
    return f"{size >> 20} MB" if size >= 1 << 20 else f"{size >> 10} KB"


def _size(text: str) -> int:
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
                f"{_human(size):>7} {name:>9} {seconds * 1e3:9.3f} {algbw:11.3f} "
                f"{algbw * factor:11.3f} {ratio:8.2f}x {low:5.2f}-{high:4.2f}"
            )
    print(f"load average after: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return medians


DDP_VARIANTS = {
    "torch DDP": lambda m: torch.nn.parallel.DistributedDataParallel(m),
    "bucketed": DistributedDataParallel,
    "per-parameter": PerParameterDDP,
    "after-backward": AfterBackwardDDP,
    "after-backward ring": lambda m: AfterBackwardDDP(m, all_reduce=ring_all_reduce),
}


def _ddp_worker(config: GPTConfig, batch: int, repeats: int) -> dict[str, float]:
    """Median step time of each DDP variant, of compute alone, and of one process alone."""
    g = torch.Generator().manual_seed(dist.get_rank())
    x, y = torch.randint(256, (2, batch, config.block_size), generator=g)

    def make(wrap):
        torch.manual_seed(0)
        model = wrap(GPT(config))
        return model, torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(model, optimizer):
        optimizer.zero_grad(set_to_none=True)
        model(x, y)[1].backward()
        optimizer.step()

    # Each variant gets its own replica: two DDPs on one module would both hook its gradients.
    runs = {name: make(wrap) for name, wrap in DDP_VARIANTS.items()}
    compute, solo = make(DistributedDataParallel), make(lambda m: m)

    def compute_only():
        with compute[0].no_sync():  # the same work on both ranks at once, minus communication
            step(*compute)

    def one_process():  # rank 0 alone, while rank 1 waits in the barrier (asleep, not spinning)
        if dist.get_rank() == 0:
            step(*solo)

    cases = {**{n: (lambda r=r: step(*r)) for n, r in runs.items()}, "compute only": compute_only}
    cases["1 process"] = one_process
    times: dict[str, list[float]] = {name: [] for name in cases}
    for i in range(repeats + 2):  # the first two rounds warm up caches and allocators
        for name, fn in cases.items():
            t = timed(fn, 1)
            if i >= 2:
                times[name] += t
    return {name: statistics.median(t) for name, t in times.items()}


def ddp(n_layer: int = 6, n_embd: int = 256, batch: int = 8, repeats: int = 20) -> dict:
    """Step times of our DDP variants and torch's on 2 ranks; prints the table."""
    config = GPTConfig(block_size=128, n_layer=n_layer, n_head=8, n_embd=n_embd)
    params = GPT(config).num_params(non_embedding=False)
    medians = launch(_ddp_worker, 2, config, batch, repeats, timeout=600)[0]
    torch_time, compute = medians["torch DDP"], medians["compute only"]
    print(
        f"DDP step, GPT {n_layer}x{n_embd} ({params / 1e6:.1f}M parameters), sequence 128, "
        f"{batch} sequences per rank, 2 ranks x 1 thread, AdamW; median of {repeats}"
    )
    print(f"{'variant':>20} {'step ms':>9} {'vs torch':>9} {'exposed comm ms':>16} {'scaling':>8}")
    for name, seconds in medians.items():
        if name in ("compute only", "1 process"):
            continue
        exposed, efficiency = (seconds - compute) * 1e3, medians["1 process"] / seconds
        print(
            f"{name:>20} {seconds * 1e3:9.1f} {seconds / torch_time:8.2f}x "
            f"{exposed:16.1f} {efficiency:8.2f}"
        )
    print(f"{'compute only':>20} {compute * 1e3:9.1f}   (no_sync: both ranks compute, no comm)")
    print(f"{'1 process':>20} {medians['1 process'] * 1e3:9.1f}   (scaling = this / step time)")
    return medians


def train(n_layer: int = 6, n_embd: int = 256, per_rank: int = 8, steps: int = 20) -> dict:
    """Trainer tokens/s at 1 and 2 CPU ranks for both DDPs (weak scaling: batch per rank fixed)."""
    from minidp.train import TrainConfig, run  # the trainer imports this module's neighbours

    runs: dict[tuple[int, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as out:
        for _ in range(2):  # two passes, alternating, so drift on the machine hits all alike
            for nproc, ddp in [(1, "minidp"), (2, "minidp"), (1, "torch"), (2, "torch")]:
                config = TrainConfig(
                    n_layer=n_layer,
                    n_head=8,
                    n_embd=n_embd,
                    steps=steps,
                    nproc=nproc,
                    ddp=ddp,
                    batch_size=per_rank * nproc,
                    eval_every=0,
                    eval_batches=1,
                    sample_tokens=0,
                    progress=False,
                    out_dir=out,
                )
                runs.setdefault((nproc, ddp), []).append(run(config)["tokens_per_s"])
    tps = {key: statistics.median(v) for key, v in runs.items()}
    print(
        f"trainer, GPT {n_layer}x{n_embd}, sequence 128, {per_rank} sequences per rank, "
        f"{steps} steps, CPU ranks of 1 thread; median tokens/s of each run, median of 2 runs"
    )
    print(f"{'DDP':>8} {'1 rank tok/s':>13} {'2 ranks tok/s':>14} {'scaling':>8}")
    for ddp in ("minidp", "torch"):
        one, two = tps[(1, ddp)], tps[(2, ddp)]
        print(f"{ddp:>8} {one:13,.0f} {two:14,.0f} {two / (2 * one):8.2f}")
    return tps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m minidp.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="which", required=True)
    ar = sub.add_parser("allreduce", help="our all-reduce algorithms vs dist.all_reduce")
    ar.add_argument("--world-size", type=int, default=2, help="worker processes (default 2)")
    ar.add_argument(
        "--repeats", type=int, default=50, help="rounds per size and algorithm (default 50)"
    )
    ar.add_argument(
        "--sizes", nargs="+", type=_size, default=SIZES, help="e.g. 4KB 4MB (default 4KB to 32MB)"
    )
    dp = sub.add_parser("ddp", help="our DDP variants vs torch's DDP on a GPT, 2 ranks")
    dp.add_argument("--layers", type=int, default=6, help="transformer blocks (default 6)")
    dp.add_argument("--width", type=int, default=256, help="embedding width (default 256)")
    dp.add_argument("--batch", type=int, default=8, help="sequences per rank (default 8)")
    dp.add_argument("--repeats", type=int, default=20, help="timed steps per variant (default 20)")
    tr = sub.add_parser("train", help="trainer tokens/s at 1 and 2 CPU ranks, both DDPs")
    tr.add_argument("--layers", type=int, default=6, help="transformer blocks (default 6)")
    tr.add_argument("--width", type=int, default=256, help="embedding width (default 256)")
    tr.add_argument("--batch", type=int, default=8, help="sequences per rank (default 8)")
    tr.add_argument("--steps", type=int, default=20, help="steps per run (default 20)")
    args = parser.parse_args(argv)
    if args.which == "allreduce":
        allreduce(args.world_size, args.sizes, args.repeats)
    elif args.which == "ddp":
        ddp(args.layers, args.width, args.batch, args.repeats)
    else:
        train(args.layers, args.width, args.batch, args.steps)


if __name__ == "__main__":
    main()

"""Benchmarks: ours against torch's, side by side in one run. Not tests.

    python -m minidp.bench allreduce     # our all-reduce algorithms vs dist.all_reduce
    python -m minidp.bench ddp           # our DDP variants vs torch's DDP, on a small GPT,
                                         # and the host reads of a step's forward and backward
    python -m minidp.bench fsdp          # our FSDP vs torch's fully_shard, on the same GPT
    python -m minidp.bench train         # trainer tokens/s at 1 and 2 CPU ranks

Each prints medians over repeats and ratios against torch measured in the same processes, in
the same run, interleaved: on a shared machine an absolute time means little, a ratio a lot more.
Bandwidths follow nccl-tests (PERFORMANCE.md): algbw = bytes / time, and for all-reduce
busbw = algbw * 2(p-1)/p, the rate each link must sustain, comparable across world sizes.
"""

import argparse
import contextlib
import statistics
import tempfile

import torch
import torch.distributed as dist

from minidp.collectives import ALGORITHMS, ring_all_reduce, timed
from minidp.ddp import AfterBackwardDDP, DistributedDataParallel, PerParameterDDP
from minidp.fsdp import FullyShardedDataParallel
from minidp.host_reads import HostReads
from minidp.launch import launch
from minidp.model import GPT, Block, GPTConfig

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


# Every variant is built by the call the trainer uses for torch's DDP and ours; ours may add
# arguments of their own.
DDP_CALL = {"bucket_cap_mb": 25.0, "gradient_as_bucket_view": True}
DDP_VARIANTS = {  # class, and arguments of ours only
    "torch DDP": (torch.nn.parallel.DistributedDataParallel, {}),
    "bucketed": (DistributedDataParallel, {}),
    "per-parameter": (PerParameterDDP, {}),
    "after-backward": (AfterBackwardDDP, {}),
    "after-backward ring": (AfterBackwardDDP, {"all_reduce": ring_all_reduce}),
}


def _ddp_worker(config: GPTConfig, batch: int, repeats: int) -> tuple[dict, dict]:
    """Seconds of each round's step for each DDP variant, compute alone and one process alone;
    and the host reads of each variant's forward and backward, in one more step."""
    g = torch.Generator().manual_seed(dist.get_rank())
    x, y = torch.randint(256, (2, batch, config.block_size), generator=g)

    def make(cls=None, ours_only=None):
        torch.manual_seed(0)
        model = GPT(config) if cls is None else cls(GPT(config), **DDP_CALL, **ours_only)
        return model, torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(model, optimizer, reads=None):
        optimizer.zero_grad(set_to_none=True)
        with reads or contextlib.nullcontext():
            model(x, y)[1].backward()
        optimizer.step()

    # Each variant gets its own replica: two DDPs on one module would both hook its gradients.
    runs = {name: make(*variant) for name, variant in DDP_VARIANTS.items()}
    compute, solo = make(DistributedDataParallel, {}), make()

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
    reads = {name: HostReads() for name in runs}
    for name, run in runs.items():
        step(*run, reads=reads[name])
    return times, {name: counted.total for name, counted in reads.items()}


def ddp(n_layer: int = 6, n_embd: int = 256, batch: int = 8, repeats: int = 20) -> dict:
    """Step times of our DDP variants and torch's on 2 ranks; prints the table."""
    config = GPTConfig(block_size=128, n_layer=n_layer, n_head=8, n_embd=n_embd)
    params = GPT(config).num_params(non_embedding=False)
    times, reads = launch(_ddp_worker, 2, config, batch, repeats, timeout=600)[0]
    medians = {name: statistics.median(t) for name, t in times.items()}
    compute = medians["compute only"]
    print(
        f"DDP step, GPT {n_layer}x{n_embd} ({params / 1e6:.1f}M parameters), sequence 128, "
        f"{batch} sequences per rank, 2 ranks x 1 thread, AdamW, {DDP_CALL}; median of "
        f"{repeats} rounds, each variant once per round; vs torch: median of per-round ratios"
    )
    header = f"{'variant':>20} {'step ms':>9} {'vs torch':>9} {'exposed comm ms':>16}"
    print(header + f" {'scaling':>8} {'host reads':>11}")
    for name, seconds in medians.items():
        if name in ("compute only", "1 process"):
            continue
        pairs = zip(times[name], times["torch DDP"], strict=True)
        ratio = statistics.median(ours / theirs for ours, theirs in pairs)
        exposed, efficiency = (seconds - compute) * 1e3, medians["1 process"] / seconds
        print(
            f"{name:>20} {seconds * 1e3:9.1f} {ratio:8.2f}x "
            f"{exposed:16.1f} {efficiency:8.2f} {reads[name]:11d}"
        )
    print(f"{'compute only':>20} {compute * 1e3:9.1f}   (no_sync: both ranks compute, no comm)")
    print(f"{'1 process':>20} {medians['1 process'] * 1e3:9.1f}   (scaling = this / step time)")
    return medians


def _fsdp_worker(config: GPTConfig, batch: int, repeats: int) -> dict:
    """Step times of our FSDP and torch's fully_shard, interleaved, and each one's bytes."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    g = torch.Generator().manual_seed(dist.get_rank())
    x, y = torch.randint(256, (2, batch, config.block_size), generator=g)
    torch.manual_seed(0)  # both: every block a unit, and the rest (embeddings, last norm) one too
    ours = FullyShardedDataParallel(GPT(config), units=lambda m: isinstance(m, (GPT, Block)))
    torch.manual_seed(0)
    theirs, mesh = GPT(config), init_device_mesh("cpu", (dist.get_world_size(),))
    for block in theirs.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(theirs, mesh=mesh)
    runs = {"minidp": ours, "torch": theirs}
    optimizers = {n: torch.optim.AdamW(m.parameters(), lr=1e-4) for n, m in runs.items()}

    def step(name: str) -> None:
        optimizers[name].zero_grad(set_to_none=True)
        runs[name](x, y)[1].backward()
        optimizers[name].step()

    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(repeats + 2):  # the first two rounds warm up caches and allocators
        for name in runs if i % 2 else reversed(runs):  # alternate who goes first
            t = timed(lambda name=name: step(name), 1)
            if i >= 2:
                times[name] += t
    return {"times": times, "bytes": {n: _held(m, optimizers[n]) for n, m in runs.items()}}


def _held(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes this rank holds of parameters, gradients and optimizer state (of torch's
    fully_shard's DTensors, the local shard)."""
    params = list(model.parameters())
    state = [t for s in optimizer.state.values() for t in s.values() if t.dim()]
    grads = [p.grad for p in params if p.grad is not None]
    size = lambda ts: sum(
        (t.to_local() if hasattr(t, "to_local") else t).numel() * t.element_size() for t in ts
    )
    return {"parameters": size(params), "gradients": size(grads), "optimizer": size(state)}


def fsdp(n_layer: int = 6, n_embd: int = 256, batch: int = 8, repeats: int = 20) -> dict:
    """Step time and bytes per rank of our FSDP and torch's fully_shard on 2 ranks."""
    config = GPTConfig(block_size=128, n_layer=n_layer, n_head=8, n_embd=n_embd)
    params = GPT(config).num_params(non_embedding=False)
    result = launch(_fsdp_worker, 2, config, batch, repeats, timeout=600)[0]
    times = result["times"]
    ratios = [a / b for a, b in zip(times["minidp"], times["torch"], strict=True)]
    print(
        f"FSDP step, GPT {n_layer}x{n_embd} ({params / 1e6:.1f}M parameters), every block a "
        f"unit and the rest one more, sequence 128, {batch} sequences per rank, 2 ranks x 1 "
        f"thread, AdamW; median of {repeats} interleaved rounds"
    )
    columns = ["step ms", "vs torch", "params MB", "grads MB", "optim MB"]
    print(f"{'FSDP':>8}" + "".join(f"{c:>10}" for c in columns))
    for name in ("minidp", "torch"):
        b = result["bytes"][name]
        ratio = statistics.median(ratios) if name == "minidp" else 1.0
        megabytes = "".join(f"{b[part] / 1e6:10.2f}" for part in b)
        print(f"{name:>8}{statistics.median(times[name]) * 1e3:10.1f}{ratio:9.2f}x{megabytes}")
    print(f"vs torch: median of the per-round ratios; MB per rank, of {4 * params / 1e6:.2f} MB")
    return result


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
    ar.add_argument("--repeats", type=int, default=50, help="timed repeats per size (default 50)")
    dp = sub.add_parser("ddp", help="our DDP variants vs torch's DDP on a GPT, 2 ranks")
    dp.add_argument("--layers", type=int, default=6, help="transformer blocks (default 6)")
    dp.add_argument("--width", type=int, default=256, help="embedding width (default 256)")
    dp.add_argument("--batch", type=int, default=8, help="sequences per rank (default 8)")
    dp.add_argument("--repeats", type=int, default=20, help="timed steps per variant (default 20)")
    fs = sub.add_parser("fsdp", help="our FSDP vs torch's fully_shard on a GPT, 2 ranks")
    fs.add_argument("--layers", type=int, default=6, help="transformer blocks (default 6)")
    fs.add_argument("--width", type=int, default=256, help="embedding width (default 256)")
    fs.add_argument("--batch", type=int, default=8, help="sequences per rank (default 8)")
    fs.add_argument("--repeats", type=int, default=20, help="timed steps each (default 20)")
    tr = sub.add_parser("train", help="trainer tokens/s at 1 and 2 CPU ranks, both DDPs")
    tr.add_argument("--layers", type=int, default=6, help="transformer blocks (default 6)")
    tr.add_argument("--width", type=int, default=256, help="embedding width (default 256)")
    tr.add_argument("--batch", type=int, default=8, help="sequences per rank (default 8)")
    tr.add_argument("--steps", type=int, default=20, help="steps per run (default 20)")
    args = parser.parse_args(argv)
    if args.which == "allreduce":
        allreduce(args.world_size, SIZES, args.repeats)
    elif args.which == "ddp":
        ddp(args.layers, args.width, args.batch, args.repeats)
    elif args.which == "fsdp":
        fsdp(args.layers, args.width, args.batch, args.repeats)
    else:
        train(args.layers, args.width, args.batch, args.steps)


if __name__ == "__main__":
    main()

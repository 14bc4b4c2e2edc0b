"""Benchmark of data parallelism: our DDP variants against torch's DDP, on a small GPT.

python -m minidp.bench ddp [--layers 6] [--width 256] [--batch 8] [--repeats 20]
"""

import contextlib
import statistics

import torch
import torch.distributed as dist

from minidp.collectives import ring_all_reduce, timed
from minidp.ddp import AfterBackwardDDP, DistributedDataParallel, PerParameterDDP
from minidp.host_reads import HostReads
from minidp.launch import launch
from minidp.model import GPT, GPTConfig

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

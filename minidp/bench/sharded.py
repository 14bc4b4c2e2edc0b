"""Benchmark of sharding: our FSDP against torch's fully_shard, on the same GPT.

python -m minidp.bench fsdp [--layers 6] [--width 256] [--batch 8] [--repeats 20]
"""

import statistics

import torch
import torch.distributed as dist

from minidp.collectives import timed
from minidp.fsdp import FullyShardedDataParallel
from minidp.launch import launch
from minidp.model import GPT, Block, GPTConfig


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

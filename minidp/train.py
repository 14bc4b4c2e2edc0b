"""Train a small GPT with data parallelism: one code path from 2 CPU processes to GPU clusters.

    python -m minidp.train --help                        # every option, with its default
    python -m minidp.train --nproc 2                     # 2 CPU worker processes, gloo
    torchrun --nproc-per-node 8 -m minidp.train ...      # one GPU per process, NCCL, bf16
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d \\
        --rdzv-endpoint HOST:29500 -m minidp.train ...    # several nodes (see the README)

From Python or a notebook: `metrics = minidp.train.run(TrainConfig(steps=50, nproc=2))`.

Every rank builds the same model from the same seed, takes its slice of the step's global batch
(a pure function of seed and step, see minidp.data), and averages gradients through our DDP or
torch's. AdamW with warmup and cosine decay, gradient clipping and accumulation, as in nanoGPT's
train.py; checkpoints (minidp.checkpoint) let an interrupted run continue exactly where it was.
"""

import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from minidp import checkpoint
from minidp.config import ConfigError, TrainConfig, parse_args, validate
from minidp.data import decode, get_batch, load_tokens, split
from minidp.ddp import DistributedDataParallel
from minidp.environment import DistEnv, setup_distributed
from minidp.launch import WorkerError, launch
from minidp.model import GPT, GPTConfig
from minidp.zero import ZeroRedundancyOptimizer


def lr_at(step: int, c: TrainConfig) -> float:
    """Linear warmup to c.lr, then cosine decay to c.min_lr at the last step."""
    if step < c.warmup_steps:
        return c.lr * (step + 1) / c.warmup_steps
    progress = (step - c.warmup_steps) / max(1, c.steps - c.warmup_steps)
    return c.min_lr + 0.5 * (c.lr - c.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


# bf16 dense peak, TFLOP/s, from the vendors' data sheets; MFU as in PaLM (Chowdhery et al. 2022).
# The first name contained in the device's name wins: "H100 PCIe" before "H100" (SXM).
GPU_PEAK_TFLOPS = {
    "H200": 989,
    "H100 PCIe": 756,
    "H100": 989,
    "A100": 312,
    "L40S": 362,
    "A10": 125,
    "L4": 121,
}


def peak_flops(c: TrainConfig, env: DistEnv) -> float:
    """This device's peak FLOP/s, or 0 when unknown (then MFU is not reported)."""
    if env.device.type == "cuda":
        name = torch.cuda.get_device_name(env.device)
        return next((t * 1e12 for gpu, t in GPU_PEAK_TFLOPS.items() if gpu in name), 0.0)
    return c.peak_tflops * 1e12


def build(c: TrainConfig, env: DistEnv):
    """The model (wrapped for data parallelism), the bare model, and the optimizer."""
    torch.manual_seed(c.seed)  # the same initial weights on every rank (DDP broadcasts anyway)
    config = GPTConfig(c.block_size, 256, c.n_layer, c.n_head, c.n_embd, c.dropout)
    raw = GPT(config).to(env.device)
    if c.compile:
        # Each block on its own: compiled whole, backward is one node that hands over every
        # gradient at its very end, and no bucket could start its all-reduce during backward.
        for block in raw.blocks:
            block.compile()
    torch_ddp = torch.nn.parallel.DistributedDataParallel
    wrap = torch_ddp if c.ddp == "torch" else DistributedDataParallel  # one call for both
    ids = [env.local_rank] if env.device.type == "cuda" else None
    model = wrap(raw, device_ids=ids, bucket_cap_mb=c.bucket_cap_mb, gradient_as_bucket_view=True)
    # Weight decay on matrices (weights, embeddings), not on biases and norms (nanoGPT's rule).
    params = [p for p in raw.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": c.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    if c.zero1:
        optimizer = ZeroRedundancyOptimizer(groups, torch.optim.AdamW, lr=c.lr, betas=(0.9, 0.95))
    else:
        optimizer = torch.optim.AdamW(groups, lr=c.lr, betas=(0.9, 0.95))
    return model, raw, optimizer


@torch.no_grad()
def evaluate(model, val: torch.Tensor, c: TrainConfig, env: DistEnv, autocast) -> float:
    """Mean loss over c.eval_batches fixed validation batches, averaged over the ranks."""
    model.eval()
    total = torch.zeros((), device=env.device)
    for i in range(c.eval_batches):  # seed + 1: a stream of its own, the same at every eval
        x, y = get_batch(val, i, c.seed + 1, c.batch_size, c.block_size, env.rank, env.world_size)
        with autocast:
            total += model(x.to(env.device), y.to(env.device))[1].float()
    dist.all_reduce(total)
    model.train()
    return total.item() / (c.eval_batches * env.world_size)


def sample(raw: GPT, prompt: torch.Tensor, c: TrainConfig, env: DistEnv) -> str:
    """A fixed prompt continued by c.sample_tokens sampled bytes (the same generator each time)."""
    g = torch.Generator(device=env.device).manual_seed(c.seed)
    idx = prompt.long().view(1, -1).to(env.device)
    raw.eval()
    out = raw.generate(idx, c.sample_tokens, temperature=0.8, top_k=50, generator=g)
    raw.train()
    return decode(out[0].tolist())


def train_step(step, lr, model, raw, optimizer, tokens, c: TrainConfig, env: DistEnv, autocast):
    """One optimizer step on this rank's share of the step's global batch; its mean loss."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    # Dropout's randomness from (seed, step, rank) alone, so a resumed run draws the same.
    torch.manual_seed(c.seed * 1_000_003 + step * 1_009 + env.rank)
    x, y = get_batch(tokens, step, c.seed, c.batch_size, c.block_size, env.rank, env.world_size)
    micro = len(x) // c.grad_accum  # sequences per micro-step
    loss_sum = torch.zeros((), device=env.device)
    for i in range(c.grad_accum):
        rows = slice(i * micro, (i + 1) * micro)
        last = i == c.grad_accum - 1
        # Only the last micro-step synchronises: the others just accumulate local gradients.
        with nullcontext() if last else model.no_sync():
            with autocast:
                loss = model(x[rows].to(env.device), y[rows].to(env.device))[1]
            (loss / c.grad_accum).backward()  # the mean over micro-steps, not their sum
        loss_sum += loss.detach().float() / c.grad_accum
    if c.grad_clip > 0:  # every rank holds the same averaged gradient: the same clipping
        torch.nn.utils.clip_grad_norm_(raw.parameters(), c.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum


def train(c: TrainConfig) -> dict | None:
    """Train in this process, one rank of the job; rank 0 returns the metrics, others None."""
    owns_group = not dist.is_initialized()  # under `launch` the group is the launcher's to end
    env = setup_distributed(c.timeout_s)
    try:
        return _train(c, env)
    finally:
        if owns_group:
            dist.destroy_process_group()


def _train(c: TrainConfig, env: DistEnv) -> dict | None:
    validate(c, env.world_size)
    if env.device.type == "cpu":
        torch.set_num_threads(c.threads)
    out, main = Path(c.out_dir), env.is_main
    train_tokens, val_tokens = split(load_tokens(c.data or None))
    model, raw, optimizer = build(c, env)
    start = _resume(c, raw, optimizer) if c.resume else 0
    use_bf16 = env.device.type == "cuda" and c.bf16
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else nullcontext()
    prompt = val_tokens[:32]  # the same opening for the samples before and after training
    metrics: dict = {"config": asdict(c), "world_size": env.world_size, "log": [], "val": []}
    metrics["params"] = raw.num_params(non_embedding=False)
    if main and start == 0:
        metrics["sample_before"] = sample(raw, prompt, c, env)
    tokens_per_step, flops, peak = (
        c.batch_size * c.block_size,
        raw.flops_per_token(),
        peak_flops(c, env),
    )
    end = min(c.steps, c.stop_after or c.steps)
    log = _Log(c, start, out) if main else None
    for step in range(start, end):
        t0, lr = time.perf_counter(), lr_at(step, c)
        loss_sum = train_step(step, lr, model, raw, optimizer, train_tokens, c, env, autocast)
        dist.all_reduce(loss_sum)  # the loss of the whole global batch, for the log
        loss, dt = loss_sum.item() / env.world_size, time.perf_counter() - t0
        mfu = flops * tokens_per_step / dt / (peak * env.world_size) if peak else None
        row = {
            "step": step + 1,
            "loss": loss,
            "lr": lr,
            "tokens_per_s": tokens_per_step / dt,
            "mfu": mfu,
            "time_s": dt,
        }
        metrics["log"].append(row)
        if log:
            log.step(row)
        if (c.eval_every and (step + 1) % c.eval_every == 0) or step + 1 == end:
            val = evaluate(model, val_tokens, c, env, autocast)
            metrics["val"].append({"step": step + 1, "val_loss": val})
            if log:
                log.validation(step + 1, loss, val)
        if (c.checkpoint_every and (step + 1) % c.checkpoint_every == 0) or step + 1 == end:
            _checkpoint(out / "ckpt.pt", raw, optimizer, step + 1, c, main)
    if not main:
        return None
    log.close()
    metrics["sample"] = sample(raw, prompt, c, env)
    (out / "sample.txt").write_text(metrics["sample"], encoding="utf-8")
    measured = metrics["log"][3:] or metrics["log"]  # past warm-up and compilation
    if measured:
        middle = sorted(measured, key=lambda r: r["tokens_per_s"])[len(measured) // 2]
        metrics["tokens_per_s"], metrics["mfu"] = middle["tokens_per_s"], middle["mfu"]
    return metrics


def _resume(c: TrainConfig, raw: GPT, optimizer) -> int:
    """Load out_dir/ckpt.pt into the model and optimizer; the number of steps already done."""
    state = checkpoint.load(Path(c.out_dir) / "ckpt.pt", expect=asdict(c))
    raw.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"])  # for completeness: each step reseeds dropout anyway
    return state["step"]


class _Log:
    """Rank 0's record of the run: metrics.jsonl, and a progress bar with loss and tokens/s."""

    def __init__(self, c: TrainConfig, start: int, out: Path):
        out.mkdir(parents=True, exist_ok=True)
        # A resumed run continues the log; a new one starts it afresh.
        self.jsonl = open(out / "metrics.jsonl", "a" if c.resume else "w")  # noqa: SIM115
        self.bar = tqdm(
            total=c.steps,
            initial=start,
            desc="train",
            disable=not c.progress,
            file=sys.stdout,
            ncols=88,
            mininterval=1.0,
        )

    def step(self, row: dict) -> None:
        self.jsonl.write(json.dumps(row) + "\n")
        self.bar.set_postfix(
            loss=f"{row['loss']:.3f}", tok_s=f"{row['tokens_per_s']:,.0f}", refresh=False
        )
        self.bar.update()

    def validation(self, step: int, loss: float, val: float) -> None:
        self.jsonl.write(json.dumps({"step": step, "val_loss": val}) + "\n")
        self.bar.write(f"step {step}: train loss {loss:.4f}, val loss {val:.4f}")

    def close(self) -> None:
        self.bar.close()
        self.jsonl.close()


def _checkpoint(path: Path, raw: GPT, optimizer, step: int, c: TrainConfig, main: bool) -> None:
    """Every rank takes part (a sharded optimizer is gathered first); rank 0 writes."""
    if isinstance(optimizer, ZeroRedundancyOptimizer):
        optimizer.consolidate_state_dict(to=0)
    if main:
        opt_state = optimizer.state_dict()
        rng = torch.get_rng_state()
        checkpoint.save(
            path, model=raw.state_dict(), optimizer=opt_state, step=step, config=asdict(c), rng=rng
        )
    dist.barrier()  # nobody races ahead (or exits) before the checkpoint is on disk


def run(c: TrainConfig) -> dict | None:
    """Train as configured from Python, starting worker processes if needed; rank 0's metrics
    (None on the other ranks of a torchrun job).

    Under torchrun this process is one rank. Otherwise, with nproc CPU workers started here
    (forked, so it works from a notebook), or in this process on a GPU when nproc is 1.
    """
    if "RANK" in os.environ:
        return train(c)
    validate(c, c.nproc)  # before any worker starts: a bad option costs nothing
    if c.resume:
        checkpoint.load(Path(c.out_dir) / "ckpt.pt", expect=asdict(c))
    if c.nproc == 1 and torch.cuda.is_available():
        return train(c)
    return launch(train, c.nproc, c, timeout=c.timeout_s, threads=c.threads)[0]


def main(argv: list[str] | None = None) -> None:

    c = parse_args(argv, description=__doc__)
    try:
        metrics = run(c)
    except (ConfigError, checkpoint.CheckpointError) as e:
        sys.exit(f"python -m minidp.train: error: {e}")
    except WorkerError as e:
        sys.exit(f"python -m minidp.train: {e}")
    if metrics is not None:
        mfu = f", MFU {metrics['mfu']:.1%}" if metrics.get("mfu") else ""
        print(
            f"done: {len(metrics['log'])} steps, median {metrics.get('tokens_per_s', 0):,.0f} "
            f"tokens/s{mfu}; checkpoint, metrics.jsonl and sample.txt in {c.out_dir}"
        )


if __name__ == "__main__":
    main()

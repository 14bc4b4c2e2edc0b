"""Train a small GPT with data parallelism: one code path from 2 CPU processes to GPU clusters.

    python -m minidp.train --help                        # every option, with its default
    python -m minidp.train --nproc 2                     # 2 CPU worker processes, gloo
    python -m minidp.train --nproc 2 --shard fsdp        # parameters sharded too (ZeRO-3)
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 torchrun --nproc-per-node 8 --max-restarts 3 \\
        -m minidp.train --resume auto ...                # one GPU per process, restartable
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d \\
        --rdzv-endpoint HOST:29500 -m minidp.train ...    # several nodes (see the README)

From Python or a notebook: `metrics = minidp.train.run(TrainConfig(steps=50, nproc=2))`.

Every rank builds the same model from the same seed, builds its own rows of the step's global
batch (a pure function of seed and step, see minidp.data), and holds the model as --shard says
(minidp.sharding: all of it under DDP, its optimizer state sharded, or everything sharded by
FSDP; minidp's classes or torch's). AdamW with warmup and cosine decay, gradient clipping and
accumulation, as in nanoGPT's train.py. Global rank 0 writes every output: checkpoints
(minidp.checkpoint, every --checkpoint-every steps, whole whatever the sharding) and the log
(minidp.runlog); a restarted job (`--resume auto`) continues exactly where its last checkpoint
was, and SIGTERM or Ctrl-C (minidp.stopping) ends the run after its current step with a
checkpoint.
"""

import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist

from minidp import checkpoint
from minidp.config import ConfigError, TrainConfig, compute_dtype, parse_args, validate
from minidp.data import load_tokens, split
from minidp.environment import DistEnv, LaunchError, check_launch, read_env, setup_distributed
from minidp.evaluation import evaluate, sample
from minidp.launch import WorkerError, launch
from minidp.loader import DeviceBatches
from minidp.model import GPT, GPTConfig
from minidp.peak import device_peak_flops, matmul_dtype
from minidp.runlog import RunLog
from minidp.sharding import Sharded, decay_groups, shard
from minidp.stopping import Stopped, StopRequest, forward_to_workers


def lr_at(step: int, c: TrainConfig) -> float:
    """Linear warmup to c.lr, then cosine decay to c.min_lr at the last step."""
    if step < c.warmup_steps:
        return c.lr * (step + 1) / c.warmup_steps
    progress = (step - c.warmup_steps) / max(1, c.steps - c.warmup_steps)
    return c.min_lr + 0.5 * (c.lr - c.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def gpt_config(c: TrainConfig) -> GPTConfig:
    """The GPT of this run: bytes as tokens (256 of them)."""
    return GPTConfig(c.block_size, 256, c.n_layer, c.n_head, c.n_embd, c.dropout)


def expected_shapes(c: TrainConfig) -> dict:
    """The tensor shapes a checkpoint of this run must have (the model on the meta device: no
    memory, no time), for checkpoint.load to refuse one that would not fit."""
    with torch.device("meta"):
        raw = GPT(gpt_config(c))
    order = [p for g in decay_groups(raw, 0.0) for p in g["params"]]  # the optimizer's order
    shapes = {name: tuple(t.shape) for name, t in raw.state_dict().items()}
    return {"model": shapes, "optimizer": [tuple(p.shape) for p in order]}


def build(c: TrainConfig, env: DistEnv, optimizer: tuple[type, dict] | None = None) -> Sharded:
    """The model spread over the ranks as --shard and --impl say, and its optimizer (AdamW, or
    `optimizer`: a class and its arguments), as minidp.sharding makes them."""
    torch.manual_seed(c.seed)  # the same initial weights on every rank (DDP broadcasts anyway)
    raw = GPT(gpt_config(c)).to(env.device)
    if c.compile:
        # Each block on its own: compiled whole, backward is one node that hands over every
        # gradient at its very end, and no bucket could start its all-reduce during backward.
        # Under fsdp a block is a unit, whose hooks swap its parameters: compile its parts.
        for block in raw.blocks:
            for part in block.children() if c.shard == "fsdp" else [block]:
                part.compile()
        if c.impl == "torch" and c.shard != "fsdp" and c.bucket_cap_mb < 1:
            # Under torch.compile, torch's DDP has dynamo split the graph at its bucket
            # boundaries (DDPOptimizer), which assumes a first bucket of 1 MB no larger than the
            # others and fails for smaller buckets (torch 2.13). Unsplit, the gradients of each
            # compiled graph are all-reduced once its backward has finished.
            torch._dynamo.config.optimize_ddp = False
    return shard(raw, c, env, optimizer)


def train_step(step, lr, sharded: Sharded, batch, c: TrainConfig, env: DistEnv):
    """One optimizer step on this rank's share of the step's global batch; its mean loss."""
    model, optimizer = sharded.model, sharded.optimizer
    for group in optimizer.param_groups:
        group["lr"] = lr
    # Dropout's randomness from (seed, step, rank) alone, so a resumed run draws the same.
    torch.manual_seed(c.seed * 1_000_003 + step * 1_009 + env.rank)
    x, y = batch  # this rank's rows of the step's global batch, on its device: (B/K, T) each
    micro = len(x) // c.grad_accum  # sequences per micro-step
    loss_sum = torch.zeros((), device=env.device)
    for i in range(c.grad_accum):
        rows = slice(i * micro, (i + 1) * micro)
        last = i == c.grad_accum - 1
        # Only the last micro-step synchronises: the others just accumulate local gradients.
        with nullcontext() if last else sharded.no_sync():
            with sharded.autocast:
                loss = model(x[rows], y[rows])[1]
            (loss / c.grad_accum).backward()  # the mean over micro-steps, not their sum
        loss_sum += loss.detach().float() / c.grad_accum
    if c.grad_clip > 0:  # by the norm of the whole averaged gradient, however it is sharded
        sharded.clip_grad_norm_(c.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum


def train(c: TrainConfig) -> dict | None:
    """Train in this process, one rank of the job; rank 0 returns the metrics, others None.
    Raises Stopped on every rank when a signal ended the run (after its checkpoint)."""
    env = read_env()
    # Before joining the group: a bad option or checkpoint fails at once, not in a collective.
    validate(c, env.world_size, writes=env.is_main)
    state = None
    if env.is_main:  # only global rank 0 reads the checkpoint (and writes the outputs)
        state = checkpoint.for_resume(c.out_dir, c.resume, asdict(c), expected_shapes(c))
    owns_group = not dist.is_initialized()  # under `launch` the group is the launcher's to end
    env = setup_distributed(c.timeout_s)
    try:
        return _train(c, env, state)
    finally:
        if owns_group:
            dist.destroy_process_group()


def _train(c: TrainConfig, env: DistEnv, state: dict | None) -> dict | None:
    if env.device.type == "cpu":
        torch.set_num_threads(c.threads)
    else:  # float32 matmuls on tensor cores as TF32 (10-bit mantissa), as bf16 runs do anyway
        torch.set_float32_matmul_precision("high")
    train_tokens, val_tokens = split(load_tokens(c.data or None))
    sharded = build(c, env)
    start = checkpoint.restore(state, sharded)
    dtype = matmul_dtype(env.device.type, compute_dtype(c, env.device.type))
    prompt = val_tokens[:32]  # the same opening for the samples before and after training
    with torch.device("meta"):  # the whole model's size: under fsdp each rank holds shards
        whole = GPT(gpt_config(c))
    params = whole.num_params(non_embedding=False)
    metrics = {"config": asdict(c), "world_size": env.world_size, "params": params}
    # Samples on every rank: a sharded model's forward is a collective.
    if start == 0:
        metrics["sample_before"] = sample(sharded.raw, prompt, c, env)
    peak = device_peak_flops(env.device, dtype, c.peak_tflops)
    log = RunLog(c, env, start, whole.flops_per_token(), peak)
    batches = DeviceBatches(train_tokens, c.seed, c.batch_size, c.block_size, env)
    try:
        _steps(start, sharded, batches, val_tokens, c, env, log)
    finally:
        log.close()
    text = sample(sharded.raw, prompt, c, env)
    if not env.is_main:
        return None
    metrics.update(log.summary(), sample=text)
    (Path(c.out_dir) / "sample.txt").write_text(text, encoding="utf-8")
    return metrics


def _steps(start, sharded: Sharded, batches, val_tokens, c: TrainConfig, env: DistEnv, log):
    """The training loop, from step `start` to the end (or --stop-after, or a signal)."""
    end = min(c.steps, c.stop_after or c.steps)
    with StopRequest() as stop:
        for step in range(start, end):
            t0, lr = time.perf_counter(), lr_at(step, c)
            batch = batches.get(step)
            loss_sum = train_step(step, lr, sharded, batch, c, env)
            if step + 1 < end:  # on a GPU: built and copied while this step computes
                batches.prefetch(step + 1)
            # The global batch's loss, for the log, and whether any rank was asked to stop (a
            # signal may reach ranks a step apart): one all-reduce, one read back to the host.
            shared = torch.stack([loss_sum, torch.full_like(loss_sum, stop.signum)])
            dist.all_reduce(shared)
            loss_total, votes = shared.tolist()
            loss, stopping = loss_total / env.world_size, votes > 0
            log.step(step + 1, loss, lr, time.perf_counter() - t0)
            done = step + 1 == end
            if ((c.eval_every and (step + 1) % c.eval_every == 0) or done) and not stopping:
                val = evaluate(sharded.model, val_tokens, c, env, sharded.autocast)
                log.validation(step + 1, val)
            if (c.checkpoint_every and (step + 1) % c.checkpoint_every == 0) or done or stopping:
                log.sync()  # the log on disk up to this step, before the checkpoint says so
                path, config = Path(c.out_dir) / "ckpt.pt", asdict(c)
                checkpoint.save_from_all(path, sharded, step + 1, config, env.is_main)
            if stopping:
                raise stop.stopped(step + 1, c.steps, c.out_dir, env.rank)


def run(c: TrainConfig) -> dict | None:
    """Train as configured from Python, starting worker processes if needed; rank 0's metrics
    (None on the other ranks of a torchrun job).

    Under torchrun this process is one rank. Otherwise, with nproc CPU workers started here
    (forked, so it works from a notebook), or in this process on a GPU when nproc is 1.
    """
    check_launch()
    if "RANK" in os.environ:
        return train(c)
    validate(c, c.nproc)  # before any worker starts: a bad option costs nothing
    checkpoint.for_resume(c.out_dir, c.resume, asdict(c), expected_shapes(c))
    if c.nproc == 1 and torch.cuda.is_available():
        return train(c)
    with forward_to_workers():
        result = launch(_launched, c.nproc, c, timeout=c.timeout_s, threads=c.threads)[0]
    if isinstance(result, Stopped):
        raise result
    return result


def _launched(c: TrainConfig) -> dict | Stopped | None:
    # `launch` reports a worker's exception as a traceback; a clean stop is an answer instead.
    try:
        return train(c)
    except Stopped as e:
        return e


def main(argv: list[str] | None = None) -> None:
    c = parse_args(argv, description=__doc__)
    try:
        metrics = run(c)
    except (ConfigError, checkpoint.CheckpointError, LaunchError) as e:
        sys.exit(f"python -m minidp.train: error: {e}")
    except Stopped as e:
        if e.rank == 0:
            print(f"python -m minidp.train: {e}", file=sys.stderr)
        sys.exit(128 + e.signum)  # as the shell reports a process the signal ended
    except WorkerError as e:
        sys.exit(f"python -m minidp.train: {e}")
    if metrics is not None:
        speed = f"median {metrics.get('tokens_per_s', 0):,.0f} tokens/s"
        if metrics.get("mfu"):
            speed += f", MFU {metrics['mfu']:.1%}"
        print(
            f"done: {len(metrics['log'])} steps, {speed}; checkpoint, metrics.jsonl and "
            f"sample.txt in {c.out_dir}"
        )


if __name__ == "__main__":
    main()

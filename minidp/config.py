"""TrainConfig: every option of the trainer, with its default and help, in one dataclass; the
checks that a configuration can run, made before any worker starts; and the command line, one
`--option-name` per field (nanoGPT's GPTConfig and nanochat's argparse, in one place).

    c = TrainConfig(steps=50, nproc=2)                 # from Python
    c = parse_args(["--steps", "50", "--nproc", "2"])  # the same, from a command line
    validate(c, world_size=2)                          # ConfigError, one line, if it cannot run
"""

import argparse
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from minidp.data import load_tokens, split


def _opt(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    # model
    n_layer: int = _opt(4, "transformer blocks")
    n_head: int = _opt(4, "attention heads per block")
    n_embd: int = _opt(128, "embedding width")
    block_size: int = _opt(128, "context length in tokens (bytes)")
    dropout: float = _opt(0.0, "dropout probability")
    # data and schedule
    data: str = _opt("", "a text file to train on (default: Python's own reference manual)")
    steps: int = _opt(200, "optimizer steps in the whole schedule")
    stop_after: int = _opt(0, "end this run after this step, as a preempted job would (0: never)")
    batch_size: int = _opt(16, "sequences per optimizer step, over all ranks and micro-steps")
    grad_accum: int = _opt(1, "micro-steps per optimizer step (gradient accumulation)")
    lr: float = _opt(3e-3, "peak learning rate")
    min_lr: float = _opt(3e-4, "learning rate at the end of the cosine decay")
    warmup_steps: int = _opt(20, "steps of linear warmup up to lr")
    weight_decay: float = _opt(0.1, "AdamW weight decay, on matrices only")
    grad_clip: float = _opt(1.0, "clip the global gradient norm to this (0: off)")
    seed: int = _opt(1337, "fixes the initialisation, the data order and dropout")
    # parallelism and hardware
    nproc: int = _opt(1, "CPU worker processes to start (not under torchrun)")
    ddp: str = _opt("minidp", "whose DistributedDataParallel: minidp or torch")
    bucket_cap_mb: float = _opt(25.0, "DDP bucket size in MB")
    zero1: bool = _opt(False, "shard the optimizer state across ranks (ZeRO stage 1)")
    bf16: bool = _opt(True, "bfloat16 autocast on GPUs (CPUs always use float32)")
    compile: bool = _opt(False, "torch.compile the model")
    threads: int = _opt(1, "torch threads per CPU worker")
    peak_tflops: float = _opt(0.0, "peak TFLOP/s per device for MFU on CPUs (GPUs are known)")
    timeout_s: float = _opt(300.0, "seconds a collective may wait before the run fails")
    # output
    out_dir: str = _opt("runs/minidp", "folder for ckpt.pt, metrics.jsonl and sample.txt")
    resume: bool = _opt(False, "continue from out_dir/ckpt.pt")
    checkpoint_every: int = _opt(0, "also checkpoint every this many steps (0: only at the end)")
    eval_every: int = _opt(50, "validation loss every this many steps (0: only at the end)")
    eval_batches: int = _opt(4, "batches of batch_size sequences per validation")
    sample_tokens: int = _opt(200, "bytes of text to generate at the start and the end")
    progress: bool = _opt(True, "a progress bar on rank 0")


class ConfigError(ValueError):
    """A configuration that cannot run, found before any worker starts."""


def validate(c: TrainConfig, world_size: int) -> None:
    """Raise ConfigError (one line) for a configuration that cannot work."""
    per_step = world_size * c.grad_accum
    if c.ddp not in ("minidp", "torch"):
        raise ConfigError(f"--ddp must be minidp or torch, not {c.ddp!r}")
    if min(c.steps, c.batch_size, c.grad_accum, c.nproc, c.n_layer, c.n_head) < 1:
        raise ConfigError("steps, batch_size, grad_accum, nproc, n_layer and n_head must be >= 1")
    cores = os.cpu_count() or 1
    if c.nproc > cores:
        raise ConfigError(f"--nproc {c.nproc} CPU workers on {cores} cores would only slow down")
    if c.batch_size % per_step:
        raise ConfigError(
            f"--batch-size {c.batch_size} does not divide among {world_size} ranks x "
            f"{c.grad_accum} micro-steps; use a multiple of {per_step}"
        )
    if c.n_embd % c.n_head:
        raise ConfigError(f"--n-embd {c.n_embd} is not a multiple of --n-head {c.n_head}")
    if c.data and not Path(c.data).is_file():
        raise ConfigError(f"--data {c.data}: no such file")
    train, val = split(load_tokens(c.data or None))
    if min(len(train), len(val)) <= c.block_size:  # else validation fails after all training
        raise ConfigError(
            f"{len(train) + len(val):,} bytes of text hold too few blocks of --block-size "
            f"{c.block_size} (10% is held out for validation: {len(val):,} bytes)"
        )
    if c.resume and not (Path(c.out_dir) / "ckpt.pt").is_file():
        raise ConfigError(f"--resume: no checkpoint at {Path(c.out_dir) / 'ckpt.pt'}")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parse_args(argv: list[str] | None = None, description: str = "") -> TrainConfig:
    """TrainConfig from command-line options: one --option-name per field, same defaults."""
    parser = _Parser(
        prog="python -m minidp.train",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for f in fields(TrainConfig):
        flag, help = "--" + f.name.replace("_", "-"), f.metadata["help"]
        if f.default != "":  # an empty default means "the built-in one", which the help names
            help += " (default: %(default)s)"
        if f.type is bool:
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=f.default, help=help
            )
        else:
            metavar = {"data": "FILE", "out_dir": "DIR"}.get(
                f.name, {int: "N", float: "X"}.get(f.type)
            )
            kwargs = {"choices": ["minidp", "torch"]} if f.name == "ddp" else {"metavar": metavar}
            parser.add_argument(flag, type=f.type, default=f.default, help=help, **kwargs)
    return TrainConfig(**vars(parser.parse_args(argv)))

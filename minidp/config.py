"""TrainConfig: every option of the trainer, with its default and help, in one dataclass; the
checks that a configuration can run, made before any worker starts; and the command line, one
`--option-name` per field (nanoGPT's GPTConfig and nanochat's argparse, in one place).

    c = TrainConfig(steps=50, nproc=2)                 # from Python
    c = parse_args(["--steps", "50", "--nproc", "2"])  # the same, from a command line
    validate(c, world_size=2)                          # ConfigError, one line, if it cannot run

Each numeric option declares its range beside its default, and validate() checks them all.
"""

import argparse
import math
import operator
import os
import sys
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from torch.distributed import fsdp

from minidp.data import load_tokens, split

SHARD_MODES = ("none", "zero1", "fsdp")
# Options that were renamed: given on a command line, each is refused with its new form.
RENAMED = {
    "--zero1": "--shard zero1",
    "--no-zero1": "--shard none",
    "--ddp": "--impl (minidp or torch: whose DDP, ZeRO and FSDP)",
    "--bf16": "--compute-dtype bf16 (the default on GPUs, as --compute-dtype auto)",
    "--no-bf16": "--compute-dtype fp32",
}


def _opt(default, help: str, *, at_least=None, above=None, below=None, choices=None):
    """A field with its help and its range: >= at_least, > above, < below, or one of choices."""
    bounds = {"at_least": at_least, "above": above, "below": below, "choices": choices}
    return field(default=default, metadata={"help": help, **bounds})


@dataclass
class TrainConfig:
    # model
    n_layer: int = _opt(4, "transformer blocks", at_least=1)
    n_head: int = _opt(4, "attention heads per block", at_least=1)
    n_embd: int = _opt(128, "embedding width", at_least=1)
    block_size: int = _opt(128, "context length in tokens (bytes)", at_least=1)
    dropout: float = _opt(0.0, "dropout probability", at_least=0, below=1)
    # data and schedule
    data: str = _opt("", "a text file to train on (default: Python's own reference manual)")
    steps: int = _opt(200, "optimizer steps in the whole schedule", at_least=1)
    stop_after: int = _opt(
        0, "end this run after this step, as a preempted job would (0: never)", at_least=0
    )
    batch_size: int = _opt(
        16, "sequences per optimizer step, over all ranks and micro-steps", at_least=1
    )
    grad_accum: int = _opt(1, "micro-steps per optimizer step (gradient accumulation)", at_least=1)
    lr: float = _opt(3e-3, "peak learning rate", above=0)
    min_lr: float = _opt(3e-4, "learning rate at the end of the cosine decay", at_least=0)
    warmup_steps: int = _opt(20, "steps of linear warmup up to lr", at_least=0)
    weight_decay: float = _opt(0.1, "AdamW weight decay, on matrices only", at_least=0)
    grad_clip: float = _opt(1.0, "clip the global gradient norm to this (0: off)", at_least=0)
    seed: int = _opt(
        1337, "fixes the initialisation, the data order and dropout", at_least=0, below=2**32
    )
    # parallelism and hardware
    nproc: int = _opt(1, "CPU worker processes to start (not under torchrun)", at_least=1)
    shard: str = _opt(
        "none",
        "what each rank holds: none (all of the model: DDP), zero1 (the optimizer state "
        "sharded: ZeRO-1), fsdp (parameters, gradients and optimizer state sharded, every "
        "transformer block a unit and the embeddings one more: ZeRO-3)",
        choices=SHARD_MODES,
    )
    impl: str = _opt(
        "minidp",
        "whose DistributedDataParallel, ZeroRedundancyOptimizer or FSDP: minidp's, or torch's "
        "(FSDP: torch's fully_shard)",
        choices=("minidp", "torch"),
    )
    compute_dtype: str = _opt(
        "auto",
        "what forward and backward compute in; the weights and the optimizer stay float32 "
        "(auto: bf16 on GPUs, fp32 on CPUs; shard none and zero1 autocast, fsdp casts each "
        "unit's gathered weights)",
        choices=("auto", "fp32", "bf16", "fp16"),
    )
    bucket_cap_mb: float = _opt(25.0, "DDP bucket size in MB (shard none and zero1)", at_least=0)
    compile: bool = _opt(False, "torch.compile the model")
    threads: int = _opt(1, "torch threads per CPU worker", at_least=1)
    peak_tflops: float = _opt(
        0.0, "peak TFLOP/s per device for MFU (0: GPUs from a table, CPUs none)", at_least=0
    )
    timeout_s: float = _opt(300.0, "seconds a collective may wait before the run fails", above=0)
    # output
    out_dir: str = _opt("runs/minidp", "folder for ckpt.pt, metrics.jsonl and sample.txt")
    resume: str = _opt(
        "no",
        "continue from out_dir/ckpt.pt: no; yes (which must exist; --resume alone); auto (if "
        "there is one, as a restartable job wants)",
        choices=("no", "yes", "auto"),
    )
    checkpoint_every: int = _opt(
        100, "checkpoint every this many steps, and at the end (0: only at the end)", at_least=0
    )
    eval_every: int = _opt(
        50, "validation loss every this many steps (0: only at the end)", at_least=0
    )
    eval_batches: int = _opt(4, "batches of batch_size sequences per validation", at_least=1)
    sample_tokens: int = _opt(200, "bytes of text to generate at the start and the end", at_least=0)
    progress: bool = _opt(True, "a progress bar on rank 0")


def compute_dtype(c: TrainConfig, device_type: str) -> str:
    """--compute-dtype, with auto resolved: bf16 on GPUs, fp32 elsewhere."""
    if c.compute_dtype == "auto":
        return "bf16" if device_type == "cuda" else "fp32"
    return c.compute_dtype


class ConfigError(ValueError):
    """A configuration that cannot run, found before any worker starts."""


def _out_of_range(c: TrainConfig) -> str | None:
    """The first option outside its range, as a message; None if all are in range."""
    compare = {">=": operator.ge, ">": operator.gt, "<": operator.lt}
    for f in fields(TrainConfig):
        value, m, flag = getattr(c, f.name), f.metadata, "--" + f.name.replace("_", "-")
        if m.get("choices") and value not in m["choices"]:
            return f"{flag} must be one of {', '.join(m['choices'])}, not {value!r}"
        if f.type not in (int, float):
            continue
        named = ((">=", "at_least"), (">", "above"), ("<", "below"))
        bounds = [(op, m[key]) for op, key in named if m.get(key) is not None]
        if not math.isfinite(value) or not all(compare[op](value, b) for op, b in bounds):
            return f"{flag} must be {' and '.join(f'{op} {b}' for op, b in bounds)}, not {value}"
    return None


def validate(c: TrainConfig, world_size: int, writes: bool = True) -> None:
    """Raise ConfigError (one line) for a configuration that cannot work; with `writes` (the
    process that writes the outputs), also for an out_dir it cannot write to."""
    problem = _out_of_range(c)
    if problem:
        raise ConfigError(problem)
    if c.compute_dtype == "fp16":
        raise ConfigError(
            "--compute-dtype fp16 needs loss scaling, which minidp.train does not do (fp16 ends "
            "at 65504 and flushes gradients below 6e-8 to zero): use bf16, as wide as float32"
        )
    if c.shard == "fsdp" and c.impl == "torch" and not hasattr(fsdp, "fully_shard"):
        raise ConfigError(f"--shard fsdp --impl torch needs torch >= 2.6, not {torch.__version__}")
    per_step = world_size * c.grad_accum
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
    _check_data(c)
    if writes:
        _check_out_dir(Path(c.out_dir))


def _check_data(c: TrainConfig) -> None:
    if c.data and not Path(c.data).is_file():
        raise ConfigError(f"--data {c.data}: no such file")
    try:
        train, val = split(load_tokens(c.data or None))
    except (OSError, ValueError) as e:  # empty, unreadable
        raise ConfigError(f"--data {c.data}: {e}") from None
    if min(len(train), len(val)) <= c.block_size:  # else validation fails after all training
        raise ConfigError(
            f"{len(train) + len(val):,} bytes of text hold too few blocks of --block-size "
            f"{c.block_size} (10% is held out for validation: {len(val):,} bytes)"
        )


def _check_out_dir(out: Path) -> None:
    """out_dir exists (made if need be) and takes a file: found now, not after training."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise ConfigError(f"--out-dir {out}: cannot write there ({e.strerror or e})") from None


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
    for arg in sys.argv[1:] if argv is None else argv:
        old = arg.split("=")[0]
        if old in RENAMED:  # an old command: say what to write now
            parser.error(f"{old} is now {RENAMED[old]}")
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
            choices = f.metadata.get("choices")
            kwargs = {"choices": choices} if choices else {"metavar": metavar}
            if f.name == "resume":  # --resume alone: yes
                kwargs.update(nargs="?", const="yes")
            parser.add_argument(flag, type=f.type, default=f.default, help=help, **kwargs)
    return TrainConfig(**vars(parser.parse_args(argv)))

"""The run's record: rows in memory on every rank; on global rank 0, metrics.jsonl and a bar.

    log = RunLog(config, env, start=0, flops_per_token=..., peak=...)  # start 0: a new file
    log.step(1, loss=5.5, lr=3e-3, seconds=0.1)    # every rank keeps log.rows; rank 0 writes
    log.validation(1, 5.4); log.sync()             # sync() with every checkpoint
    log.close()

metrics.jsonl holds one JSON object per line: one per training step ("step", "loss", "lr",
"tokens_per_s", "mfu", ...) and one per validation ("step", "val_loss"), in step order. Each line
reaches the operating system as soon as it is written (line buffering), so a run killed at any
moment keeps every row it logged; `sync()` makes them durable (fsync) along with each checkpoint.

A resumed run continues from its checkpoint's step, not from the log's last row: the log may hold
rows of steps after the checkpoint, done by a run that died before its next one. Those steps are
done again, so their old rows are cut off first, and every step appears exactly once.
"""

import json
import os
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from minidp.config import TrainConfig
from minidp.environment import DistEnv
from minidp.peak import mfu


def truncate_after(path: Path, step: int) -> None:
    """Cut the log at its first row past `step` (or at a torn last line): rows are in step order."""
    if not path.is_file():
        return
    keep = 0  # bytes of whole rows with step <= `step`
    with open(path, "rb") as f:
        for line in f:
            try:
                if not line.endswith(b"\n") or json.loads(line)["step"] > step:
                    break
            except (ValueError, KeyError, TypeError):  # a line torn by a kill mid-write
                break
            keep += len(line)
    os.truncate(path, keep)


class RunLog:
    """Every rank's rows in memory (`rows`, `val`); on global rank 0 also metrics.jsonl, one
    flushed line per row, and a progress bar with loss and tokens/s.

    Each training row holds the step, the global batch's mean loss, the learning rate, tokens/s
    of the whole job, MFU (None when the device's peak is unknown), the step's time, and on GPUs
    the peak memory allocated so far.
    """

    def __init__(
        self, c: TrainConfig, env: DistEnv, start: int, flops_per_token: float, peak: float
    ):
        self.c, self.env, self.flops, self.peak = c, env, flops_per_token, peak
        self.rows: list[dict] = []
        self.val: list[dict] = []
        self.file = None
        if env.is_main:
            path = Path(c.out_dir) / "metrics.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            if start:
                truncate_after(path, start)
            # buffering=1: line-buffered text, each row handed to the OS at its newline.
            self.file = open(path, "a" if start else "w", buffering=1)  # noqa: SIM115
        self.bar = tqdm(
            total=c.steps,
            initial=start,
            desc="train",
            disable=not (c.progress and env.is_main),
            file=sys.stdout,
            ncols=88,
            mininterval=1.0,
        )

    def step(self, step: int, loss: float, lr: float, seconds: float) -> None:
        """Record one training step."""
        tokens_per_s = self.c.batch_size * self.c.block_size / seconds
        row = {"step": step, "loss": loss, "lr": lr, "tokens_per_s": tokens_per_s}
        ranks = self.env.world_size
        row["mfu"] = mfu(self.flops, tokens_per_s, self.peak, ranks) if self.peak else None
        row["time_s"] = seconds
        if self.env.device.type == "cuda":  # the allocator's count: no wait for the GPU
            row["peak_memory_gb"] = torch.cuda.max_memory_allocated(self.env.device) / 1e9
        self.rows.append(row)
        self._write(row)
        self.bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)
        self.bar.update()

    def validation(self, step: int, val: float) -> None:
        """Record one validation loss."""
        self.val.append({"step": step, "val_loss": val})
        self._write(self.val[-1])
        if self.env.is_main:
            loss = self.rows[-1]["loss"] if self.rows else float("nan")
            self.bar.write(f"step {step}: train loss {loss:.4f}, val loss {val:.4f}")

    def _write(self, row: dict) -> None:
        if self.file:
            self.file.write(json.dumps(row) + "\n")

    def summary(self) -> dict:
        """The rows, and the median step's speed (past warm-up and compilation) and memory."""
        out: dict = {"log": self.rows, "val": self.val}
        measured = self.rows[3:] or self.rows
        if measured:
            middle = sorted(measured, key=lambda r: r["tokens_per_s"])[len(measured) // 2]
            out["tokens_per_s"], out["mfu"] = middle["tokens_per_s"], middle["mfu"]
            out["peak_memory_gb"] = measured[-1].get("peak_memory_gb")
        return out

    def sync(self) -> None:
        """On disk, not only in the OS's cache: called with every checkpoint."""
        if self.file:
            self.file.flush()
            os.fsync(self.file.fileno())

    def close(self) -> None:
        self.bar.close()
        if self.file:
            self.file.close()

"""Checkpoints for the trainer: written atomically, read back without unpickling code.

    save(path, model=..., optimizer=..., step=..., config=..., rng=...)   # rank 0 only
    state = load(path, expect=config)                                     # every rank

A checkpoint holds only tensors, numbers, strings, lists and dicts, so `torch.load` reads it
with `weights_only=True`: a file from elsewhere cannot run code on your machine. It is written
to a temporary file in the same directory and renamed over the old one, an atomic operation on
POSIX file systems: a run killed mid-write leaves the previous checkpoint whole.
"""

import os
from pathlib import Path

import torch

FORMAT = 1  # bump when the layout changes
# Options a checkpoint must agree on to be resumed: the model's shape, and what decides the data
# and the schedule's start. Others (world size, DDP flavour, ZeRO, steps) may change on resume.
MUST_MATCH = ["n_layer", "n_head", "n_embd", "block_size", "seed", "batch_size", "data"]


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable, or from a different run."""


def save(
    path: str | Path, *, model: dict, optimizer: dict, step: int, config: dict, rng: torch.Tensor
) -> None:
    """Write the checkpoint atomically: to `path`.tmp first, then renamed over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    state = {
        "format": FORMAT,
        "model": model,
        "optimizer": optimizer,
        "step": step,  # steps completed; the data of step s is a function of (seed, s)
        "config": config,
        "rng": rng,
    }
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())  # on disk before the rename makes it the checkpoint
    os.replace(tmp, path)


def load(path: str | Path, expect: dict | None = None) -> dict:
    """Read a checkpoint; with `expect` (a config), refuse one written for a different run."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, random bytes, pickled code: all unreadable here
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint ({reason})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a minidp checkpoint of format {FORMAT}")
    if expect is not None:
        for key in MUST_MATCH:
            theirs, ours = state["config"].get(key), expect.get(key)
            if theirs != ours:
                raise CheckpointError(
                    f"{path} was written for a different run: {key}={theirs!r}, now {ours!r}"
                )
    return state

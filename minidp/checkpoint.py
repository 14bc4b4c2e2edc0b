"""Checkpoints for the trainer: written atomically, read back without unpickling code, checked.

    save(path, model=..., optimizer=..., step=..., config=..., rng=...)   # global rank 0 only
    state = load(path, expect=config, shapes=shapes)                      # refused if not ours
    state = for_resume(out_dir, "auto", config, shapes)                   # None: start afresh
    step = restore(state, sharded)                       # on every rank: rank 0's state, sent
    save_from_all(path, sharded, step, config, main)                      # every rank calls it

`sharded` is the model and optimizer as the ranks hold them (minidp.sharding.Sharded): its
full_state() gives their state whole, in one process's format, whatever the sharding, and its
load_full_state() takes it back, so a checkpoint resumes at any world size and in any mode.

A checkpoint holds only tensors, numbers, strings, lists and dicts, so `torch.load` reads it
with `weights_only=True`: a file from elsewhere cannot run code on your machine. It is written
to a temporary file in the same directory and renamed over the old one, an atomic operation on
POSIX file systems: a run killed mid-write leaves the previous checkpoint whole. Each writer's
temporary file has its own name (host and process id), so two runs sharing a folder do not
write into one file, and the leftovers of killed writers are removed by the next save.

Loading checks everything the trainer relies on, so that a damaged or edited file is refused
with one line here rather than failing with a traceback inside the workers.
"""

import os
import socket
import time
from pathlib import Path

import torch
import torch.distributed as dist

FORMAT = 1  # bump when the layout changes
KEYS = {"format": int, "model": dict, "optimizer": dict, "step": int, "config": dict}
# Options a checkpoint must agree on to be resumed: the model's shape, and what decides the data
# and the schedule's start. Others (world size, shard mode, implementation, steps) may change.
MUST_MATCH = ["n_layer", "n_head", "n_embd", "block_size", "seed", "batch_size", "data"]
STALE_S = 6 * 3600  # another host's temporary file this old belongs to no live writer


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable, damaged, or from a different run."""


def _temporary(path: Path) -> Path:
    return path.with_name(f"{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")


def remove_stale(path: Path) -> None:
    """Delete temporary files of `path` left by writers that died: on this host, those whose
    process is gone; from other hosts (a shared file system), those older than STALE_S."""
    host = socket.gethostname()
    for tmp in path.parent.glob(path.name + ".*.tmp"):
        writer_host, _, pid = tmp.name[len(path.name) + 1 : -len(".tmp")].rpartition(".")
        try:
            if writer_host == host and pid.isdigit():
                try:
                    os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
                    continue
                except ProcessLookupError:
                    pass
                except PermissionError:  # alive, another user's
                    continue
            elif time.time() - tmp.stat().st_mtime < STALE_S:
                continue
            tmp.unlink()
        except FileNotFoundError:  # its writer renamed it, or another run cleaned it
            pass


def save(
    path: str | Path, *, model: dict, optimizer: dict, step: int, config: dict, rng: torch.Tensor
) -> None:
    """Write the checkpoint atomically: to a temporary file of this writer, renamed over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    tmp = _temporary(path)
    state = {
        "format": FORMAT,
        "model": model,
        "optimizer": optimizer,
        "step": step,  # steps completed; the data of step s is a function of (seed, s)
        "config": config,
        "rng": rng,
    }
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename makes it the checkpoint
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # after a failed write (a full disk): no leftover


def load(path: str | Path, expect: dict | None = None, shapes: dict | None = None) -> dict:
    """Read a checkpoint; with `expect` (a config), refuse one written for a different run; with
    `shapes` ({"model": {name: shape}, "optimizer": [shape of each parameter, in order]}),
    one whose tensors would not fit the model and optimizer."""
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
    problem = _structure_problem(state)
    if problem is None and expect is not None:
        problem = _config_problem(state["config"], expect)
    if problem is None and shapes is not None:
        problem = _shape_problem(state, shapes)
    if problem:
        raise CheckpointError(f"{path} {problem}")
    return state


def for_resume(out_dir: str | Path, resume: str, config: dict, shapes: dict) -> dict | None:
    """The checkpoint a run continues from: with resume "yes", out_dir's (which must exist);
    "auto", out_dir's if there is one; "no", none."""
    path = Path(out_dir) / "ckpt.pt"
    if resume == "no" or (resume == "auto" and not path.exists()):
        return None
    return load(path, expect=config, shapes=shapes)


def save_from_all(path: Path, sharded, step: int, config: dict, main: bool) -> None:
    """save() as a collective: every rank calls it, the state is gathered whole (a sharded
    model's, a sharded optimizer's), global rank 0 (`main`) writes, and no rank goes on before
    the file is whole."""
    model, optimizer = sharded.full_state()
    if main:
        state = dict(model=model, optimizer=optimizer, step=step)
        save(path, **state, config=config, rng=torch.get_rng_state())
    dist.barrier()  # nobody races ahead (or exits) before the checkpoint is on disk


def restore(state: dict | None, sharded) -> int:
    """Load on every rank the state that global rank 0 read (None: a fresh start); its step.

    Rank 0 sends it to the others, so only rank 0 needs the file: without a shared file system
    a job resumes as long as global rank 0 runs where its outputs are.
    """
    box = [state]
    dist.broadcast_object_list(box, src=0)
    if box[0] is None:
        return 0
    sharded.load_full_state(box[0]["model"], box[0]["optimizer"])
    torch.set_rng_state(box[0]["rng"])  # for completeness: each step reseeds dropout anyway
    return box[0]["step"]


def _structure_problem(state: dict) -> str | None:
    missing = [key for key in KEYS if key not in state]
    if missing:
        return f"is damaged: no {', '.join(missing)}"
    wrong = [
        f"{k} is a {type(state[k]).__name__}"
        for k, t in KEYS.items()
        if not isinstance(state[k], t)
    ]
    if wrong:
        return f"is damaged: {', '.join(wrong)}"
    if state["step"] < 0:
        return f"is damaged: step {state['step']}"
    if not torch.is_tensor(state.get("rng")) or state["rng"].dtype != torch.uint8:
        return "is damaged: rng is not a random generator's state"
    if not all(torch.is_tensor(t) for t in state["model"].values()):
        return "is damaged: the model's state holds something other than tensors"
    opt = state["optimizer"]
    if not isinstance(opt.get("state"), dict) or not isinstance(opt.get("param_groups"), list):
        return "is damaged: the optimizer's state has no state or param_groups"
    return None


def _config_problem(theirs: dict, ours: dict) -> str | None:
    for key in MUST_MATCH:
        if theirs.get(key) != ours.get(key):
            return (
                f"was written for a different run: {key}={theirs.get(key)!r}, now {ours.get(key)!r}"
            )
    return None


def _shape_problem(state: dict, shapes: dict) -> str | None:
    model, expected = state["model"], shapes["model"]
    if model.keys() != expected.keys():
        names = sorted(model.keys() ^ expected.keys())
        return f"does not fit the model: parameters {', '.join(names[:3])} differ"
    for name, shape in expected.items():
        if tuple(model[name].shape) != tuple(shape):
            return f"does not fit the model: {name} is {tuple(model[name].shape)}, not {shape}"
    opt, params = state["optimizer"], shapes["optimizer"]
    counted = sum(len(g.get("params", [])) for g in opt["param_groups"] if isinstance(g, dict))
    if counted != len(params):
        return f"does not fit the optimizer: {counted} parameters, not {len(params)}"
    for index, entry in opt["state"].items():
        if (
            not isinstance(index, int)
            or not 0 <= index < len(params)
            or not isinstance(entry, dict)
        ):
            return f"does not fit the optimizer: a state for parameter {index!r}"
        for key, value in entry.items():  # AdamW's exp_avg and exp_avg_sq; its scalar step
            if torch.is_tensor(value) and value.dim() and tuple(value.shape) != params[index]:
                return f"does not fit the optimizer: {key} of parameter {index} is the wrong shape"
    return None

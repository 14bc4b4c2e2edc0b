"""Transcripts: what the learner's function answered during one check, recorded where the
learner's code runs and replayed where a grade is decided.

    # in the submission's kernel: `check` does this when the grader set MINIDP_TRANSCRIPTS
    recorder = Recorder(my_fn); CHECKERS["01.mse"](recorder); save(recorder, folder, "01.mse")
    # in the grader, which never runs the learner's code
    CHECKERS["01.mse"](Replay(load(folder, "01.mse")))   # the same checker, fed those answers

A checker reaches the learner's code by calling `fn(...)` or by handing fn to a trial
(`core.run_trial`, which `core.on_workers` uses). Each such call is one entry: a fingerprint of
its inputs, and what it returned or raised. The replay hands the checker the recorded answers in
order, after checking that the checker asked the same questions (same inputs), and the checker
judges them with the grader's own references. Answers cross as JSON: None, booleans, numbers,
strings, lists, tuples, dicts and tensors (dtype, shape, base64 bytes); anything else arrives as
an `Opaque` value that equals nothing. Nothing is unpickled, so a transcript, forged or not, is
data: the most it can claim is answers, and answers that are right are what a solution gives.
"""

import base64
import builtins
import hashlib
import json
import math
import os
import stat
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

FOLDER_ENV = "MINIDP_TRANSCRIPTS"  # where `check` writes transcripts; set by the grader only
MAX_BYTES = 32 << 20  # a transcript larger than this is not read (the checks' answers: < 1 MB)
MAX_MESSAGE = 2000  # characters kept of a learner's exception message
DTYPES = {
    str(t).removeprefix("torch."): t
    for t in (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
    + (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    + (torch.complex64, torch.complex128)
}


class Opaque:
    """An answer that was not plain data: it equals nothing, so it is never judged correct."""

    def __init__(self, what: str):
        self.what = what

    def __repr__(self) -> str:
        return f"<{self.what}, not plain data>"


class LearnerError(Exception):
    """What the learner's code raised, replayed in the grader (its type was not a built-in)."""


# ---- values to JSON and back


def encode(value):
    """`value` as JSON: plain data as is, a tuple, dict or tensor as {kind: body}."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.generic):  # numpy's scalars, from a learner's numpy arithmetic
        return encode(value.item())
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, tuple):
        return {"tuple": [encode(v) for v in value]}
    if isinstance(value, dict):
        return {"dict": [[encode(k), encode(v)] for k, v in value.items()]}
    try:
        t = torch.as_tensor(value) if isinstance(value, np.ndarray) else value
        name = str(t.dtype).removeprefix("torch.") if isinstance(t, torch.Tensor) else None
        if name in DTYPES:
            t = t.detach().cpu().resolve_conj().resolve_neg().contiguous()
            raw = t.reshape(-1).view(torch.uint8).numpy().tobytes()  # (numel * itemsize,)
            return {"tensor": [name, list(t.shape), base64.b64encode(raw).decode("ascii")]}
    except (RuntimeError, TypeError, ValueError):  # sparse, quantized, on the meta device
        pass
    return {"opaque": type(value).__qualname__}


def decode(obj):
    """The value `encode` made `obj` from; ValueError (or TypeError) if it is not such JSON."""
    if isinstance(obj, list):
        return [decode(v) for v in obj]
    if not isinstance(obj, dict):
        return obj  # None, a boolean, a number or a string
    ((kind, body),) = obj.items()
    if kind == "tuple":
        return tuple(decode(v) for v in body)
    if kind == "dict":
        return {decode(k): decode(v) for k, v in body}
    if kind == "tensor":
        return _tensor(*body)
    if kind == "opaque":
        return Opaque(str(body)[:100])
    raise ValueError(f"unknown kind {kind!r}")


def _tensor(dtype: str, shape: list, data: str) -> torch.Tensor:
    dtype, shape = DTYPES[dtype], [int(n) for n in shape]
    raw = base64.b64decode(data, validate=True)
    if min(shape, default=0) < 0 or len(raw) != math.prod(shape) * dtype.itemsize:
        raise ValueError(f"{len(raw)} bytes for a {dtype} tensor of shape {shape}")
    if not raw:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype).reshape(shape)


def fingerprint(values: tuple) -> str:
    """A digest of a call's inputs (the learner's function itself counts as one token)."""
    digest = hashlib.sha256()

    def feed(x) -> None:
        if isinstance(x, Recorder | Replay):
            digest.update(b"<learner>")
        elif isinstance(x, torch.nn.Module):
            digest.update(type(x).__qualname__.encode())
            feed(x.state_dict())
        elif isinstance(x, list | tuple | dict):
            digest.update(type(x).__name__.encode())
            for item in x.items() if isinstance(x, dict) else x:
                feed(item)
        elif isinstance(x, torch.Tensor | np.ndarray | np.generic):
            digest.update(json.dumps(encode(x)).encode())
        elif x is None or isinstance(x, bool | int | float | str | torch.dtype):
            digest.update(repr(x).encode())
        else:  # a trial, or a closure the checker made: by name (a repr may hold an address)
            name = f"{getattr(x, '__module__', '')}.{getattr(x, '__qualname__', '')}"
            digest.update(f"{type(x).__qualname__}:{name}".encode())

    feed(values)
    return digest.hexdigest()[:16]


# ---- the learner's side and the grader's side


class Recorder:
    """The learner's function, run for real, with each call's inputs and answer written down."""

    def __init__(self, fn: Callable):
        self.fn, self.calls = fn, []

    def __call__(self, *args, **kwargs):
        return self.run(self, *args, **kwargs)

    def run(self, trial: Callable, *args, **kwargs):
        """trial(*args, **kwargs), with the learner's function in place of this recorder."""
        entry = {"inputs": fingerprint((trial, args, kwargs))}
        self.calls.append(entry)
        trial = self.fn if trial is self else trial
        args = tuple(self.fn if a is self else a for a in args)
        try:
            value = trial(*args, **kwargs)
        except BaseException as e:
            entry["raised"] = [type(e).__name__, _message(e)]
            raise
        try:  # now: what a later call or a hook left registered does to it is not this answer
            entry["returned"] = encode(value)
        except RecursionError:  # a list that holds itself
            entry["returned"] = {"opaque": type(value).__qualname__}
        return value


class Replay:
    """The learner's function in the grader: each call gives back what the same call gave in the
    submission, in order. `mismatch` is set if the checker asked something else."""

    def __init__(self, calls: list[dict]):
        self.calls, self.mismatch = iter(calls), False

    def __call__(self, *args, **kwargs):
        return self.run(self, *args, **kwargs)

    def run(self, trial: Callable, *args, **kwargs):
        inputs = fingerprint((trial, args, kwargs))
        entry = next(self.calls, None)
        if entry is None:
            raise LearnerError("the submission's run of this check ended before this call")
        if entry["inputs"] != inputs:
            self.mismatch = True
            raise LearnerError("the submission was asked something else here")
        if "raised" in entry:
            raise _exception(*entry["raised"])
        return entry["returned"]


def _message(e: BaseException) -> str:
    try:
        return str(e)[:MAX_MESSAGE]
    except Exception:  # a learner's exception whose __str__ fails
        return "?"


def _exception(name: str, message: str) -> Exception:
    """The learner's exception again: a built-in one as itself (NotImplementedError says "not
    attempted"), any other as a LearnerError; never a SystemExit or KeyboardInterrupt."""
    kind = getattr(builtins, name, None)
    if isinstance(kind, type) and issubclass(kind, Exception):
        try:
            return kind(message)
        except TypeError:  # a built-in that takes other arguments (UnicodeDecodeError)
            pass
    return LearnerError(f"{name}: {message}")


# ---- files


def save(recorder: Recorder, folder: str | os.PathLike, exercise: str) -> None:
    """Write the transcript of `exercise` into `folder`, whole or not at all."""
    path = Path(folder) / f"{exercise}.json"
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps({"exercise": exercise, "calls": recorder.calls}))
    os.replace(partial, path)


def load(folder: str | os.PathLike, exercise: str) -> list[dict] | None:
    """The calls recorded for `exercise` in `folder`, their answers decoded; None if there is no
    transcript; ValueError if it is not one (a link, a pipe, too large, malformed)."""
    try:  # not a link, and no wait on a pipe: the submission made this folder's contents
        fd = os.open(Path(folder) / f"{exercise}.json", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ValueError(f"cannot open it: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a file")
        data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise ValueError(f"larger than {MAX_BYTES >> 20} MB")
    try:
        transcript = json.loads(data)
        if transcript["exercise"] != exercise:
            raise ValueError(f"it is the transcript of {transcript['exercise']!r}")
        return [_entry(call) for call in transcript["calls"]]
    except (KeyError, TypeError, ValueError, RecursionError, AttributeError) as e:
        raise ValueError(f"malformed: {type(e).__name__}: {e}"[:300]) from None


def _entry(call: dict) -> dict:
    inputs = str(call["inputs"])
    if "raised" in call:
        name, message = call["raised"]
        return {"inputs": inputs, "raised": [str(name)[:100], str(message)[:MAX_MESSAGE]]}
    return {"inputs": inputs, "returned": decode(call["returned"])}

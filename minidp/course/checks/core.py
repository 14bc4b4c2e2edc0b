"""The checkers' common ground: results, the registry, comparing answers, and running the
learner's function on real worker processes.

A checker is gradable, so that `python -m minidp.course.assignments grade` decides its marks
outside the submission (see minidp/course/checks/transcript.py), when:
- it reaches the learner's code only by calling `fn(...)` (`compare` does), by `on_workers(...)`
  or by `run_trial(trial, ...)`, with fn itself among their arguments (not inside a list), trial
  and worker being functions of a checks module; never by `launch` directly. The grader gets
  back what each call returned, not the objects it gave: a check that looks at something the
  learner's code changes later (an argument modified in place, a hook left registered) looks
  inside a trial, which returns what it saw (nb08's ready order);
- every call's answer is plain data: None, booleans, numbers, strings, tensors, and lists,
  tuples and dicts of them (anything else equals nothing in the grader);
- it asks the same questions on every run: seeded generators, no clock, no unseeded randomness,
  so that the grader's replay meets the same inputs (it checks a fingerprint of each call's);
- it judges only with its own code: the learner's answers and exceptions are data.
"""

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from minidp.course.checks import transcript
from minidp.course.i18n import N_, _
from minidp.launch import WorkerError, launch

# The statuses are data (grading reads them): they stay English; only what is shown is translated.
CORRECT, INCORRECT, NOT_ATTEMPTED = N_("correct"), N_("incorrect"), N_("not attempted")
STUB_HINT = N_("replace the `raise NotImplementedError`")


@dataclass(frozen=True)
class CheckResult:
    exercise: str
    status: str  # CORRECT, INCORRECT or NOT_ATTEMPTED
    hint: str = ""

    @property
    def correct(self) -> bool:
        return self.status == CORRECT

    def __str__(self) -> str:
        mark = {CORRECT: "✅", INCORRECT: "❌", NOT_ATTEMPTED: "⏳"}[self.status]
        verdict = f"{mark} {self.exercise}: {_(self.status)}"
        return verdict + (_(". {hint}").format(hint=self.hint) if self.hint else "")

    def _repr_html_(self) -> str:
        colour = {CORRECT: "#1a7f37", INCORRECT: "#cf222e", NOT_ATTEMPTED: "#9a6700"}[self.status]
        return f'<div style="color:{colour};font-weight:600">{self}</div>'


# A wrong answer we can predict: how to compute it, and what to tell the learner who gave it.
Mistake = tuple[Callable, str]

CHECKERS: dict[str, Callable[[Callable], CheckResult]] = {}
RESULTS: list[CheckResult] = []


def checker(exercise: str):
    """Register the decorated function as the checker of `exercise`."""

    def register(fn: Callable[[Callable], CheckResult]) -> Callable[[Callable], CheckResult]:
        CHECKERS[exercise] = fn
        return fn

    return register


def check(exercise: str, fn: Callable) -> CheckResult:
    """Check the learner's `fn` for `exercise`, record the result, and return it (it displays).

    When grading (the grader sets MINIDP_TRANSCRIPTS), what fn answered is also written down,
    for the grader to judge again in its own process.
    """
    if exercise not in CHECKERS:
        raise KeyError(f"no checker called {exercise!r}; known: {', '.join(sorted(CHECKERS))}")
    folder = os.environ.get(transcript.FOLDER_ENV)
    learner = transcript.Recorder(fn) if folder else fn
    result = CHECKERS[exercise](learner)
    if folder:
        transcript.save(learner, folder, exercise)
    RESULTS.append(result)
    return result


def run_trial(trial: Callable, *args):
    """trial(*args), where the learner's function (one of args) runs: here, and when grading, in
    the submission's kernel, whose answer the grader replays. trial returns plain data."""
    for learner in args:
        if isinstance(learner, transcript.Recorder | transcript.Replay):
            return learner.run(trial, *args)
    return trial(*args)


def report() -> dict[str, str]:
    """The latest status of each exercise checked in this session: {exercise: status}."""
    return {r.exercise: r.status for r in RESULTS}


def same(a, b, rtol: float = 1e-4, atol: float = 1e-6) -> bool:
    """Whether two results agree: tensors, numbers, or (nested) lists and tuples of them."""
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same(x, y, rtol, atol) for x, y in zip(a, b, strict=True))
    try:
        a, b = torch.as_tensor(a), torch.as_tensor(b)
    except (TypeError, ValueError, RuntimeError):
        return False
    if a.shape != b.shape:
        return False
    return torch.allclose(a.double(), b.double(), rtol=rtol, atol=atol, equal_nan=True)


def compare(
    exercise: str,
    fn: Callable,
    reference: Callable,
    cases: Sequence[tuple],
    mistakes: Sequence[Mistake] = (),
    generic_hint: str = N_("compare your result with the formula above on a small example"),
) -> CheckResult:
    """Call fn and reference on each case (a tuple of arguments) and judge fn.

    Inputs are cloned for each call, so a function that modifies its arguments cannot corrupt
    the next comparison. When fn's answer matches a known mistake, that mistake's hint is given.
    """
    for args in cases:
        try:
            got = fn(*_cloned(args))
        except NotImplementedError:
            return CheckResult(exercise, NOT_ATTEMPTED, _(STUB_HINT))
        except Exception as e:  # the learner's bug: report it, never crash the notebook
            hint = _("it raised {error}: {message}").format(error=type(e).__name__, message=e)
            return CheckResult(exercise, INCORRECT, hint)
        if same(got, reference(*_cloned(args))):
            continue
        for wrong, hint in mistakes:
            if same(got, wrong(*_cloned(args))):
                return CheckResult(exercise, INCORRECT, hint)
        return CheckResult(exercise, INCORRECT, _(generic_hint))
    return CheckResult(exercise, CORRECT)


def _cloned(args: tuple) -> tuple:
    return tuple(_clone(a) for a in args)


def _clone(a):
    # Lists too: a learner scaling a list of gradients in place must not corrupt the reference's.
    if isinstance(a, torch.Tensor):
        return a.clone()
    if isinstance(a, list | tuple):
        return type(a)(_clone(x) for x in a)
    return a


# ---- checking on real processes


SKIPPED = "not attempted"  # what a worker returns when the learner's function is still a stub
# Seconds a worker may wait for a message (and for the others to start) before the check gives
# up: short enough that a deadlock is a verdict, not a hung cell; long enough that starting 4
# processes on a busy 1-core Binder does not time out.
TIMEOUT_S = 8.0
HANG_HINT = N_(
    "with {p} ranks a rank waited {t:g} s for a message that never came. A blocking send waits for "
    "its matching recv: if every rank sends first, none ever receives (post the receive first "
    "with dist.irecv, or use dist.isend); and every send needs a recv with the matching rank"
)


def learner_call(fn: Callable, *args):
    """Call the learner's fn inside a worker; a stub's NotImplementedError becomes a marker."""
    try:
        return fn(*args)
    except NotImplementedError:
        return SKIPPED


def on_workers(exercise: str, world_size: int, worker: Callable, *args) -> list | CheckResult:
    """Run worker(*args) on world_size processes: their results, or what a failure means.

    A short timeout turns a learner's deadlock into a verdict in seconds, never a hung cell; a
    learner's exception is printed as that rank's own traceback before the verdict.
    """
    match run_trial(_launched, world_size, worker, *args):
        case ("ok", list() as results):
            if any(isinstance(result, str) and result == SKIPPED for result in results):
                return CheckResult(exercise, NOT_ATTEMPTED, _(STUB_HINT))
            return results
        case ("failed", int(), str() as message) if _stub(message):
            return CheckResult(exercise, NOT_ATTEMPTED, _(STUB_HINT))
        case ("failed", int(), str() as message) if _hung(message):
            hint = _(HANG_HINT).format(p=world_size, t=TIMEOUT_S)
            return CheckResult(exercise, INCORRECT, hint)
        case ("failed", int() as rank, str() as message):
            last = (message.strip().splitlines() or ["(no message)"])[-1]
            hint = _("with {p} ranks, rank {rank}: {error}").format(
                p=world_size, rank=rank, error=last
            )
            return CheckResult(exercise, INCORRECT, hint)
    raise transcript.LearnerError("the workers' outcome is not one launch gives")


def _launched(world_size: int, worker: Callable, *args) -> tuple:
    """("ok", results) or ("failed", rank, message): a launch's outcome as plain data."""
    try:
        return "ok", launch(worker, world_size, *args, timeout=TIMEOUT_S)
    except WorkerError as e:
        if not _stub(str(e)) and not _hung(str(e)):
            print(e)  # the worker's traceback: the line of the learner's code that failed
        return "failed", e.rank, str(e)


def _stub(message: str) -> bool:
    return "NotImplementedError" in message


def _hung(message: str) -> bool:  # a deadlocked rank times out; its peer may see the close first
    return "timed out" in message.lower() or "Connection closed by peer" in message


def rank_tensor(rank: int, n: int, seed: int = 0) -> Tensor:
    """Rank `rank`'s input for a check: n small integers, as floats, so every sum is exact."""
    g = torch.Generator().manual_seed(1000 * seed + 10 * n + rank)
    return torch.randint(-9, 10, (n,), generator=g).float()


def judge(exercise: str, got: list, expected: list, mistakes: Sequence[tuple]) -> CheckResult:
    """Correct if got equals expected; else the hint of the first mistake whose result it equals."""
    if same(got, expected):
        return CheckResult(exercise, CORRECT)
    for wrong, hint in mistakes:
        if wrong is not None and same(got, wrong):
            return CheckResult(exercise, INCORRECT, hint)
    return CheckResult(exercise, INCORRECT, _("compare with the picture above on 3 ranks"))

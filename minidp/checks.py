"""Exercise checkers: run a learner's `my_*` function against minidp's reference and say whether
it is correct, incorrect (with a hint naming the likely mistake), or not attempted yet.

In a notebook:

    def my_mse(theta, X, y):
        raise NotImplementedError   # the learner replaces this
    minidp.checks.check("01.mse", my_mse)          # -> "not attempted"

Every call is also recorded in `RESULTS`, which `python -m minidp.assignments grade` reads from
the notebook's kernel to write the grade report. A checker is a function `fn -> CheckResult`,
registered under an exercise id "NN.name" (NN: the notebook); most are built with `compare`,
which tries the learner's function on several inputs and recognises typical wrong answers by
computing them too.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

CORRECT, INCORRECT, NOT_ATTEMPTED = "correct", "incorrect", "not attempted"


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
        return f"{mark} {self.exercise}: {self.status}" + (f". {self.hint}" if self.hint else "")

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
    """Check the learner's `fn` for `exercise`, record the result, and return it (it displays)."""
    if exercise not in CHECKERS:
        raise KeyError(f"no checker called {exercise!r}; known: {', '.join(sorted(CHECKERS))}")
    result = CHECKERS[exercise](fn)
    RESULTS.append(result)
    return result


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
    generic_hint: str = "compare your result with the formula above on a small example",
) -> CheckResult:
    """Call fn and reference on each case (a tuple of arguments) and judge fn.

    Inputs are cloned for each call, so a function that modifies its arguments cannot corrupt
    the next comparison. When fn's answer matches a known mistake, that mistake's hint is given.
    """
    for args in cases:
        try:
            got = fn(*_cloned(args))
        except NotImplementedError:
            return CheckResult(exercise, NOT_ATTEMPTED, "replace the `raise NotImplementedError`")
        except Exception as e:  # the learner's bug: report it, never crash the notebook
            return CheckResult(exercise, INCORRECT, f"it raised {type(e).__name__}: {e}")
        if same(got, reference(*_cloned(args))):
            continue
        for wrong, hint in mistakes:
            if same(got, wrong(*_cloned(args))):
                return CheckResult(exercise, INCORRECT, hint)
        return CheckResult(exercise, INCORRECT, generic_hint)
    return CheckResult(exercise, CORRECT)


def _cloned(args: tuple) -> tuple:
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)

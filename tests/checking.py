"""Helpers for the tests of minidp.course.checks: a learner's stub, and a checker's verdict."""

from minidp.course import checks
from minidp.course.checks import INCORRECT


def stub(*args):
    """An exercise as a student version hands it out."""
    raise NotImplementedError


def verdict(exercise: str, fn) -> tuple[str, str]:
    result = checks.check(exercise, fn)
    return result.status, result.hint


def assert_hint(exercise: str, fn, words: str) -> None:
    """The checker calls fn's answer incorrect, with a hint containing `words`."""
    status, hint = verdict(exercise, fn)
    assert status == INCORRECT, f"{exercise}: {fn.__name__} was judged {status}"
    assert words in hint, f"expected a hint about {words!r}, got {hint!r}"

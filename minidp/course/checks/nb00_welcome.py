"""Checkers of notebook 00, welcome: is this machine ready for the course? And a first
exercise, to meet the checks."""

import multiprocessing
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

import torch
import torch.distributed as dist

from minidp.course.checks.core import (
    CheckResult,
    checker,
    compare,
)
from minidp.course.i18n import _


@dataclass(frozen=True)
class Requirement:
    """One thing the course needs (or can use, when not required), and whether it is here."""

    what: str
    ok: bool
    detail: str  # what was found, or what to do about it
    required: bool = True


@dataclass(frozen=True)
class Environment:
    """The answer of check_environment(): prints one line per requirement, ✅, ❌ or ➖."""

    requirements: list[Requirement]

    @property
    def ok(self) -> bool:
        """Whether every required item is there (optional ones, like a GPU, do not count)."""
        return all(r.ok for r in self.requirements if r.required)

    def __str__(self) -> str:
        return "\n".join(
            f"{'✅' if r.ok else '❌' if r.required else '➖'} {r.what}: {r.detail}"
            for r in self.requirements
        )

    def _repr_html_(self) -> str:
        return f"<pre>{self}</pre>"


def _package(name: str, minimum: tuple[int, int], purpose: str) -> Requirement:
    """An installed package at `minimum` version or newer; its version, or how to get it."""
    what = f"{name} ≥ {minimum[0]}.{minimum[1]}"
    try:
        found = version(name)
    except PackageNotFoundError:
        missing = _("missing ({purpose}): pip install {name}").format(purpose=purpose, name=name)
        return Requirement(what, False, missing)
    ok = tuple(int(p) for p in found.split(".")[:2] if p.isdigit()) >= minimum
    old = _("{found} is too old: pip install -U {name}").format(found=found, name=name)
    return Requirement(what, ok, found if ok else old)


def _memory_gb() -> float | None:
    try:  # total physical memory (Linux, macOS); a container's own limit may be lower
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        return None


def check_environment() -> Environment:
    """What the course needs on this machine, each item found or missing, saying what to do."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory = _memory_gb()
    # device_count asks NVML, not CUDA itself, so the workers minidp.launch forks later can still
    # start cleanly; torch.cuda.is_available() would initialise CUDA in this process.
    gpus = torch.cuda.device_count()
    gloo = dist.is_available() and dist.is_gloo_available()
    fork = "fork" in multiprocessing.get_all_start_methods()
    cores_detail = _("{cores}; with 2 or more, workers run at once").format(cores=cores)
    gpu_detail = (
        _("{gpus} CUDA device(s), for the trainer; the notebooks' workers use the CPU")
        if gpus
        else _("none, and none is needed: all runs on CPU")
    ).format(gpus=gpus)
    return Environment(
        [
            Requirement("Python ≥ 3.10", sys.version_info >= (3, 10), platform.python_version()),
            _package("torch", (2, 4), _("the course runs on it")),
            Requirement("gloo", gloo, _("torch.distributed's CPU backend, which the workers use")),
            Requirement("fork", fork, _("minidp.launch forks its workers; on Windows use WSL 2")),
            Requirement(_("CPU cores"), bool(cores), cores_detail),
            Requirement(
                _("memory ≥ 1.5 GB"),
                memory is None or memory >= 1.5,
                _("unknown") if memory is None else f"{memory:.1f} GB",
            ),
            _package("matplotlib", (3, 7), _("it draws the figures")),
            _package("ipywidgets", (8, 0), _("it draws the sliders")),
            Requirement("GPU", gpus > 0, gpu_detail, required=False),
        ]
    )


@checker("00.mean")
def _check_mean(fn: Callable) -> CheckResult:
    cases = [(torch.tensor([1.0, 2.0, 6.0]),), (torch.arange(10.0) ** 2,)]
    mistakes = [
        (lambda x: x.sum(), _("that is the sum: divide it by the number of entries")),
        (lambda x: x.sum() / (len(x) - 1), _("divide by the number of entries m, not m - 1")),
    ]
    return compare("00.mean", fn, lambda x: x.mean(), cases, mistakes)

"""binder/ says what Binder's builder needs, and the README's badge opens the course there.

Fast, no network: part of `make test`. The build itself is test_binder.py (`make test-binder`).

The repository's address lives in one place, pyproject.toml's [project.urls] Course; the badge is
derived from it, and a test fails with the line to paste when the README's badge disagrees.
"""

import os
import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[2]
BINDER = ROOT / "binder"
FIRST_NOTEBOOK = "notebooks/00_welcome.ipynb"


def requirement_lines() -> list[str]:
    lines = (BINDER / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def binder_badge(repository_url: str) -> str:
    """The README's badge: JupyterLab on Binder, opened on the first notebook."""
    match = re.fullmatch(r"https://github\.com/([\w.-]+)/([\w.-]+?)(?:\.git)?/?", repository_url)
    assert match, f"Binder's gh/ provider needs a GitHub address, not {repository_url}"
    owner, name = match.groups()
    launch = f"https://mybinder.org/v2/gh/{owner}/{name}/HEAD?urlpath=lab/tree/{FIRST_NOTEBOOK}"
    return f"[![Launch on Binder](https://mybinder.org/badge_logo.svg)]({launch})"


def test_requirements_pin_a_cpu_torch_and_install_minidp():
    lines = requirement_lines()
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in lines
    torch = [line for line in lines if re.match(r"torch\b", line)]
    assert len(torch) == 1 and re.fullmatch(r"torch==[\d.]+\+cpu", torch[0]), torch
    assert "-e ." in lines  # minidp from the repository root, where repo2docker runs pip


def test_runtime_is_a_python_minidp_supports():
    runtime = (BINDER / "runtime.txt").read_text().strip()
    match = re.fullmatch(r"python-3\.(\d+)", runtime)
    assert match, f"repo2docker reads python-X.Y, not {runtime!r}"
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert int(match[1]) >= int(re.fullmatch(r">=3\.(\d+)", requires)[1])


def test_start_sets_one_thread_per_worker_then_runs_the_command():
    start = BINDER / "start"
    assert os.access(start, os.X_OK), "repo2docker runs binder/start only if it is executable"
    text = start.read_text()
    assert text.startswith("#!/bin/bash\n")
    assert "export OMP_NUM_THREADS=1" in text and "export MKL_NUM_THREADS=1" in text
    assert text.rstrip().endswith('exec "$@"')  # hands over to the server: its signals, its pid


def test_readme_badge_opens_the_first_notebook_of_this_repository():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    badge = binder_badge(project["urls"]["Course"])
    assert (ROOT / FIRST_NOTEBOOK).exists()
    readme = (ROOT / "README.md").read_text()
    assert badge in readme, f"README.md should carry the Binder badge:\n{badge}"

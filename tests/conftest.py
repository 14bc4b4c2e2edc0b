"""Fixtures shared by the tests, and the markers of the tests too long for `make test`."""

import time

import psutil
import pytest

# Marked tests run only when asked for by name (`pytest -m binder`), as steps of their own.
LONG = {
    "binder": ("make test-binder", "builds an environment from binder/ and runs every notebook"),
    "browser": ("make test-browser", "runs every notebook in JupyterLab in headless Chromium"),
    "grading": ("make test-grading", "grades every notebook's solution and student version"),
}


def pytest_configure(config: pytest.Config) -> None:
    for marker, (_, what) in LONG.items():
        config.addinivalue_line("markers", f"{marker}: {what}")


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    chosen = config.getoption("markexpr", "")
    for item in items:
        for marker, (command, _) in LONG.items():
            if item.get_closest_marker(marker) and marker not in chosen:
                reason = f"minutes long: run it with -m {marker} ({command})"
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def no_orphans():
    """After the test, this process has no child processes left (workers, kernels, servers).

    Modules that start processes use it for every test: `pytestmark = usefixtures("no_orphans")`.
    """
    yield
    deadline = time.monotonic() + 5
    while psutil.Process().children(recursive=True) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert psutil.Process().children(recursive=True) == []

"""Fixtures shared by the tests."""

import time

import psutil
import pytest


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

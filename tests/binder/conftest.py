"""The `binder` marker, and the table of notebook times and memory it prints at the end.

The marked tests build a fresh environment (about a minute) and run every notebook in it, so they
are a step of their own: `pytest -m binder tests/binder` (`make test-binder`).
"""

import pytest

ROWS = pytest.StashKey[list]()


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    """Run only when asked for by name (-m binder), so that a plain `pytest tests` stays quick."""
    if "binder" in config.getoption("markexpr", ""):
        return
    skip = pytest.mark.skip(reason="minutes long: run it with -m binder (make test-binder)")
    for item in items:
        if item.get_closest_marker("binder"):
            item.add_marker(skip)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "binder: builds a fresh environment from binder/ and runs every notebook in it"
    )


@pytest.fixture(scope="session")
def binder_rows(request: pytest.FixtureRequest) -> list:
    """(notebook, seconds, peak MB, processes) of each notebook run, for the closing table."""
    return request.config.stash.setdefault(ROWS, [])


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    rows = config.stash.get(ROWS, [])
    if not rows:
        return
    terminalreporter.section("notebooks in the Binder environment")
    for line in table(rows):
        terminalreporter.write_line(line)


def table(rows: list) -> list[str]:
    """A Markdown table, ready for the README."""
    lines = ["| notebook | seconds | peak MB | processes |", "|---|---:|---:|---:|"]
    for name, seconds, peak_mb, processes in sorted(rows):
        lines.append(f"| {name} | {seconds:.1f} | {peak_mb:.0f} | {processes} |")
    return lines

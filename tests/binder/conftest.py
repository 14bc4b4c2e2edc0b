"""The Binder test's table of notebook times and memory, printed at the end of the run.

The marked tests build a fresh environment (about a minute) and run every notebook in it, so they
are a step of their own: `pytest -m binder tests/binder` (`make test-binder`).
"""

import pytest

REPORT = pytest.StashKey[dict]()


@pytest.fixture(scope="session")
def binder_report(request: pytest.FixtureRequest) -> dict:
    """For the closing summary: "build_s", the seconds the environment took to build, and
    "rows", (notebook, seconds, peak MB, processes) of each notebook run."""
    return request.config.stash.setdefault(REPORT, {"build_s": None, "rows": []})


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    report = config.stash.get(REPORT, None)
    if report is None:
        return
    terminalreporter.section("notebooks in the Binder environment")
    if report["build_s"] is not None:
        terminalreporter.write_line(f"environment built from binder/ in {report['build_s']:.0f} s")
    if report["rows"]:
        for line in table(report["rows"]):
            terminalreporter.write_line(line)


def table(rows: list) -> list[str]:
    """A Markdown table, ready for the README."""
    lines = ["| notebook | seconds | peak MB | processes |", "|---|---:|---:|---:|"]
    for name, seconds, peak_mb, processes in sorted(rows):
        lines.append(f"| {name} | {seconds:.1f} | {peak_mb:.0f} | {processes} |")
    return lines

"""The notebooks as committed: no outputs, a stable id on every cell, every exercise checked, and
a hidden-tests block asserting that the notebook's own solutions are judged correct.

nbval (`make test`) runs each notebook top to bottom, and so its hidden-tests block; these tests
make sure that block exists and names every exercise registered for the notebook."""

import json
import re

import pytest
from solutions import NOTEBOOKS, code_cells, notebook_solutions

from minidp.course import checks

PATHS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
HIDDEN = re.compile(r"### BEGIN HIDDEN TESTS\n(.*?)### END HIDDEN TESTS", re.S)


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_committed_without_outputs_and_with_stable_ids(path):
    cells = json.loads(path.read_text())["cells"]
    assert all(c.get("outputs", []) == [] for c in cells)
    assert all(c.get("execution_count") is None for c in cells if c["cell_type"] == "code")
    ids = [c.get("id") for c in cells]
    assert None not in ids and len(set(ids)) == len(ids)


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_every_exercise_is_checked_and_asserted_in_the_hidden_tests(path):
    number = path.name[:2]
    registered = {e for e in checks.CHECKERS if e.startswith(number + ".")}
    if not registered:
        pytest.skip(f"notebook {number} has no exercises")
    assert set(notebook_solutions(number)) == registered
    hidden = [m.group(1) for source in code_cells(path) for m in HIDDEN.finditer(source)]
    assert hidden, f"{path.name} has no hidden-tests block"
    for exercise in registered:
        assert any(f'"{exercise}"' in block for block in hidden), exercise

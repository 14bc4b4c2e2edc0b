"""The exercises as the notebooks define them: the tests of the checkers take each solution from
its notebook, so that a solution changed there is what the tests judge, not a copy kept here."""

import ast
import functools
import json
import re
from collections.abc import Callable
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
CHECK_CALL = re.compile(r'checks\.check\("(\d\d\.\w+)", (my_\w+)\)')


def code_cells(path: Path) -> list[str]:
    return [
        "".join(c["source"])
        for c in json.loads(path.read_text())["cells"]
        if c["cell_type"] == "code"
    ]


def _parse(source: str) -> ast.Module:
    """A cell's code; IPython's magics and shell lines (`%time`, `!ls`) are left out."""
    lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
    return ast.parse("\n".join(lines))


def notebook(number: str) -> Path:
    (path,) = NOTEBOOKS.glob(f"{number}_*.ipynb")
    return path


@functools.cache
def notebook_solutions(number: str) -> dict[str, Callable]:
    """{exercise id: the notebook's own `my_*` solution}, for notebook `number` ("01").

    Only what a solution can depend on is run: the notebook's top-level imports, and the
    functions of its solution cells (those with `# BEGIN SOLUTION`). Nothing else of the
    notebook runs, so this takes milliseconds, not the notebook's seconds.
    """
    cells = code_cells(notebook(number))
    namespace: dict = {"__name__": f"notebook_{number}"}
    trees = [_parse(source) for source in cells]
    imports = [n for tree in trees for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    exec(compile(ast.Module(imports, type_ignores=[]), "<imports>", "exec"), namespace)
    for source, tree in zip(cells, trees, strict=True):
        if "BEGIN SOLUTION" in source:
            defs = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
            exec(
                compile(ast.Module(defs, type_ignores=[]), str(notebook(number)), "exec"), namespace
            )
    found = {}
    for source in cells:
        for exercise, name in CHECK_CALL.findall(source):
            found[exercise] = namespace[name]
    return found

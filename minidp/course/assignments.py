"""Classroom assignments: student versions of the notebooks, and a grade report of submissions.

    python -m minidp.course.assignments student notebooks/ student/   # without solutions
    python -m minidp.course.assignments grade submissions/ --out grades   # grades.csv, grades.json

A student version replaces the code between `# BEGIN SOLUTION` and `# END SOLUTION` by
`raise NotImplementedError` at the same indentation (the signature and docstring above stay),
removes `### BEGIN HIDDEN TESTS` ... `### END HIDDEN TESTS` and cells tagged `remove_cell` or
`hidden`, and clears all outputs: nbgrader's markers (otter-grader reads the same solution ones).

Grading (minidp/course/grading.py) runs each submission in a fresh kernel, in a temporary folder,
under a time limit, then judges the answers its learner's functions gave to the checks, with the
checkers run in the grader, where none of the submission's code runs: a notebook that hangs, kills
its kernel or leaves workers running is graded on what it had checked, and nothing it patches or
writes can change a mark. A submission is notebook NN by its "NN_" file-name prefix, or else by
the exercises it checks; the student is the file's stem (`bob.ipynb`), or the folder's name when
the file keeps the course's name (`alice/01_loss.ipynb`).
"""

import argparse
import copy
import re
import sys
import time
from pathlib import Path
from typing import NoReturn

import nbformat

from minidp.course.grading import grade, write_report

# ---- student versions

# A whole line each, any number of '#' (nbgrader writes `### BEGIN SOLUTION` too).
MARKER = re.compile(r"^(\s*)#+\s*(BEGIN|END) (SOLUTION|HIDDEN TESTS)\b")
HIDDEN_TAGS = {"remove_cell", "remove-cell", "hidden"}
CODE_STUB = "raise NotImplementedError  # your code here"
MARKDOWN_STUB = "YOUR ANSWER HERE"


def strip_solutions(source: str, stub: str = CODE_STUB) -> str:
    """`source` with each solution block replaced by `stub`, indented like its BEGIN marker,
    and each hidden-tests block removed, markers included."""
    kept, inside = [], None  # inside: "SOLUTION" or "HIDDEN TESTS" within a block
    for number, line in enumerate(source.split("\n"), start=1):
        marker = MARKER.match(line)
        if marker is None:
            if inside is None:
                kept.append(line)
            continue
        indent, edge, what = marker.groups()
        if (edge == "BEGIN") != (inside is None) or (edge == "END" and what != inside):
            raise ValueError(f"line {number}: {line.strip()!r} is out of place")
        inside = what if edge == "BEGIN" else None
        if edge == "BEGIN" and what == "SOLUTION":
            kept.append(indent + stub)
    if inside:
        raise ValueError(f"BEGIN {inside} is never closed")
    return "\n".join(kept)


def student_notebook(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of `nb` for students: solutions stubbed, hidden cells and tests gone, no outputs."""
    nb = copy.deepcopy(nb)
    cells = []
    for index, cell in enumerate(nb.cells):
        if HIDDEN_TAGS & set(cell.metadata.get("tags", [])):
            continue
        stub = CODE_STUB if cell.cell_type == "code" else MARKDOWN_STUB
        try:
            source = strip_solutions(cell.source, stub)
        except ValueError as e:
            raise ValueError(f"cell {index}: {e}") from None
        if cell.source.strip() and not source.strip():
            continue  # a cell that held only hidden tests
        cell.source = source
        cell.metadata.pop("execution", None)  # timings of the instructor's run
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        cells.append(cell)
    nb.cells = cells
    nb.metadata.pop("widgets", None)  # saved widget state is an output too
    return nb


def write_student_versions(source: Path, out: Path) -> list[Path]:
    """Write the student version of `source` (a notebook, or a folder of them) into `out`."""
    is_notebook = source.suffix == ".ipynb" and source.is_file()
    paths = [source] if is_notebook else sorted(source.glob("*.ipynb"))
    if not paths:
        raise ValueError(f"{source}: no such notebook, and no folder of notebooks")
    if out.resolve() == paths[0].parent.resolve():
        raise ValueError(f"{out} holds the notebooks with solutions: it would overwrite them")
    out.mkdir(parents=True, exist_ok=True)
    for path in paths:
        try:
            nb = student_notebook(nbformat.read(path, as_version=4))
        except ValueError as e:  # a marker out of place: say where, and publish nothing wrong
            raise ValueError(f"{path}: {e}") from None
        nbformat.write(nb, out / path.name)
    return [out / path.name for path in paths]


# ---- command line


def _fail(message: str) -> NoReturn:
    sys.exit(f"minidp.course.assignments: error: {message}")


def _submissions(paths: list[Path]) -> list[Path]:
    """The notebooks named, and every notebook in the folders named (a folder per student)."""
    found = []
    for path in paths:
        if path.is_dir():
            inside = sorted(p for p in path.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
            if not inside:
                _fail(f"{path}: no notebooks in this folder")
            found += inside
        elif path.is_file() and path.suffix == ".ipynb":
            found.append(path)
        else:
            _fail(f"{path}: no such notebook or folder")
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m minidp.course.assignments",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    student = commands.add_parser("student", help="write student versions of the notebooks")
    student.add_argument("source", type=Path, help="a folder of notebooks, or one notebook")
    student.add_argument("out", type=Path, help="the folder to write them into (made if needed)")
    grader = commands.add_parser("grade", help="run submissions and write a grade report")
    grader.add_argument("submissions", nargs="+", type=Path, help="notebooks, or folders of them")
    grader.add_argument("--out", type=Path, default=Path("grades"), help="report name (.csv/.json)")
    grader.add_argument("--timeout", type=float, default=300.0, help="seconds per notebook")
    args = parser.parse_args(argv)

    if args.command == "student":
        try:
            written = write_student_versions(args.source, args.out)
        except ValueError as e:
            _fail(str(e))
        print(f"wrote {len(written)} student notebooks to {args.out}")
        return
    graded = []
    for path in _submissions(args.submissions):
        start = time.monotonic()
        graded.append(g := grade(path, args.timeout))
        score, took = f"{g['score']}/{g['max_score']}", time.monotonic() - start
        print(f"{g['student']:>16} {g['notebook']} {score:>5}  {g['outcome']} ({took:.0f} s)")
    out = args.out.with_suffix("") if args.out.suffix in (".csv", ".json") else args.out
    csv_path, json_path = write_report(graded, out)
    print(f"wrote {csv_path} and {json_path}")


if __name__ == "__main__":
    main()

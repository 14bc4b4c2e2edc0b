"""Grading: run each submitted notebook in a fresh kernel and report what its checks said.

A submission runs in a temporary folder, under a time limit, and `minidp.course.checks.RESULTS`
is read after every cell: a notebook that hangs, kills its kernel or leaves workers running is
graded on what it had checked. Notebook NN expects the exercises "NN.*" of
`minidp.course.checks.CHECKERS`; one never checked is "not attempted". A submission is notebook
NN by its "NN_" file-name prefix, or else by the exercises it checks; the student is the file's
stem (`bob.ipynb`), or the folder's name when the file keeps the course's name
(`alice/01_loss.ipynb`).

The command line is `python -m minidp.course.assignments grade` (see minidp/course/assignments.py).
"""

import contextlib
import csv
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import nbformat
import psutil
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError

from minidp.course.checks import CHECKERS, CORRECT, NOT_ATTEMPTED


def identify(path: Path, nb: nbformat.NotebookNode | None) -> tuple[str, str, list[str]]:
    """(student, notebook number, exercise ids this notebook checks, in the order it does)."""
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code") if nb else ""
    checked = list(dict.fromkeys(re.findall(r"""check\(\s*["'](\d\d\.\w+)["']""", code)))
    prefix = re.match(r"(\d\d)_", path.name)
    student = path.resolve().parent.name if prefix else path.stem
    if prefix and any(ex.startswith(prefix[1] + ".") for ex in CHECKERS):
        return student, prefix[1], checked
    numbers = [ex[:2] for ex in checked]  # the notebook whose exercises it checks most
    return student, max(numbers, key=numbers.count, default="??"), checked


def grade(path: Path, limit_s: float = 300.0) -> dict:
    """Run the submission at `path` in a fresh kernel and grade what its checks reported.

    Returns {student, notebook, submission, outcome, errors, exercises, score, max_score}, where
    exercises maps each exercise id to {status, hint, score}.
    """
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as e:  # a broken file is one student's zero, not the end of the grading
        nb, unread = None, f"unreadable notebook: {e}"
    student, number, checked = identify(path, nb)
    reported, outcome, errors = _run(nb, path, limit_s) if nb else ({}, unread, [])
    expected = [ex for ex in sorted(CHECKERS) if ex.startswith(number + ".")]
    never = "its check never ran" + ("" if outcome == "ran to the end" else f" ({outcome})")
    exercises = {}
    for ex in dict.fromkeys(checked + expected + list(reported)):  # in the notebook's order
        if ex in expected or ex in reported:  # not a check that is only mentioned in the code
            status, hint = reported.get(ex, (NOT_ATTEMPTED, never))
            exercises[ex] = {"status": status, "hint": hint, "score": int(status == CORRECT)}
    score = sum(e["score"] for e in exercises.values())
    return dict(
        student=student,
        notebook=number,
        submission=str(path),
        outcome=outcome,
        errors=errors,
        exercises=exercises,
        score=score,
        max_score=len(exercises),
    )


# Run in the kernel after every cell. The results go to a file, not to print(): a cell's printed
# output travels apart from its reply, and a busy machine can deliver it after the reply.
PROBE = """try:
    __import__("pathlib").Path({path!r}).write_text(__import__("json").dumps(
        {{r.exercise: [r.status, r.hint]
          for r in __import__("minidp.course.checks").course.checks.RESULTS}}))
except Exception:  # a notebook that broke minidp.course.checks: what earlier probes read stands
    pass"""


def _run(nb: nbformat.NotebookNode, path: Path, limit_s: float) -> tuple[dict, str, list[str]]:
    """Execute nb in a fresh kernel in a temporary folder: (results, outcome, errors)."""
    with tempfile.TemporaryDirectory(prefix="minidp-grade-") as tmp:
        cwd = Path(tmp) / "work"  # the notebook's working directory; the probe's file is outside
        cwd.mkdir()
        shutil.copy(path, cwd)  # the notebook may read or overwrite itself: only this copy
        # The instructor's IPython profile (history, startup files) stays out of the grading.
        env = {**os.environ, "IPYTHONDIR": str(Path(tmp) / "ipython")}
        # The submission's kernelspec names the student's kernel: grade in this Python's own.
        # Errors are the student's to make: later cells still run and their checks still count.
        client = NotebookClient(
            nb, kernel_name="python3", allow_errors=True, extra_arguments=["--log-level=ERROR"]
        )
        # Outputs are not kept, so no stand-in for a browser's Output widget: nbclient's answers
        # the kernel on the shell channel and can stall a cell for its timeout (nbclient#312).
        client.comm_open_handlers = {"jupyter.widget": lambda msg: None}
        with client.setup_kernel(cwd=str(cwd), env=env):
            kernel_pid = client.km.provisioner.pid
            try:
                return _run_cells(client, nb, Path(tmp) / "results.json", limit_s)
            finally:  # before nbclient's shutdown, which would wait for a busy kernel
                end_process_tree(kernel_pid)


def _run_cells(
    client: NotebookClient, nb: nbformat.NotebookNode, results_file: Path, limit_s: float
) -> tuple[dict, str, list[str]]:
    results, outcome, errors, index = {}, "ran to the end", [], 0
    probe = nbformat.v4.new_code_cell(PROBE.format(path=str(results_file)))

    def record_error(cell, cell_index, execute_reply):  # from the reply, which always arrives
        content = execute_reply["content"]
        errors.append(f"cell {cell_index}: {content['ename']}: {content['evalue']}".split("\n")[0])

    client.on_cell_error = record_error
    deadline = time.monotonic() + limit_s
    try:
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            if time.monotonic() >= deadline:
                raise CellTimeoutError("time limit")
            client.timeout = max(1, int(deadline - time.monotonic()))  # whole seconds only
            client.execute_cell(cell, index)
            client.timeout = 30
            client.execute_cell(probe, index, store_history=False)
            if results_file.exists():
                results = {ex: tuple(v) for ex, v in json.loads(results_file.read_text()).items()}
    except CellTimeoutError:
        outcome = f"stopped at the time limit of {limit_s:g} s, in cell {index}"
    except DeadKernelError:
        outcome = f"the kernel died in cell {index}"
    return results, outcome, errors


def end_process_tree(pid: int) -> None:
    """Kill process `pid`, its descendants, and every process of its session (jupyter starts a
    kernel as a session leader): workers it forked live on after it, re-parented to init."""
    procs = []
    for p in psutil.process_iter():
        with contextlib.suppress(OSError):  # gone already, or not ours to ask about
            if os.getsid(p.pid) == pid:
                procs.append(p)
    with contextlib.suppress(psutil.NoSuchProcess):  # and those that started their own session
        procs += psutil.Process(pid).children(recursive=True)
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(procs, timeout=10)


def write_report(graded: list[dict], out: Path) -> tuple[Path, Path]:
    """out.csv, one row per student, notebook and exercise; out.json, one record per notebook."""
    out.parent.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out.with_name(out.name + ".csv"), out.with_name(out.name + ".json")
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["student", "notebook", "exercise", "status", "score", "hint"])
        for g in graded:
            for ex, e in g["exercises"].items():
                row = [g["student"], g["notebook"], ex, e["status"], e["score"], e["hint"]]
                writer.writerow(row)
    json_path.write_text(json.dumps(graded, indent=2, ensure_ascii=False) + "\n")
    return csv_path, json_path

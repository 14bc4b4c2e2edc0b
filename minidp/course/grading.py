"""Grading: run each submitted notebook in a fresh kernel, then judge its exercises in this
process, where none of the submission's code runs.

    graded = grade(Path("submissions/alice/01_loss.ipynb"))   # {student, exercises, score, ...}

The kernel runs the notebook's cells in a temporary folder, under a time limit; each
`checks.check` call there writes down what the learner's function answered (a transcript, see
minidp/course/checks/transcript.py). The grader then runs the same checkers itself, on those
answers replayed: the marks are decided here, from data, so nothing the submission patches in its
kernel (RESULTS, CHECKERS, the checkers' own code) or writes to disk counts, only its answers.
Notebook NN expects the exercises "NN.*" of CHECKERS; one never checked is "not attempted".

While a submission runs the grader is a child subreaper (Linux), so even processes that left
the kernel's tree (double forks, setsid) re-parent here, and afterwards every process the
submission started is ended. At most OUTPUT_CAP characters of its output are kept.

The command line is `python -m minidp.course.assignments grade` (see minidp/course/assignments.py).
"""

import csv
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import nbformat
import zmq
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError

from minidp.course.checks import CHECKERS, CORRECT, INCORRECT, NOT_ATTEMPTED, CheckResult
from minidp.course.checks.transcript import FOLDER_ENV, Replay, load
from minidp.course.reaper import reaping

OUTPUT_CAP = 1_000_000  # characters of a submission's output kept; the rest is dropped
MESSAGE_CAP = 16 << 20  # bytes of one kernel message; a larger one is dropped by zmq
MISMATCH = (
    "the checker's inputs in the submission differ from the grader's: a notebook that changes "
    "torch's defaults (torch.set_default_dtype) or minidp itself"
)


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
    """Run the submission at `path` in a fresh kernel and grade the answers its checks recorded.

    Returns {student, notebook, submission, outcome, errors, exercises, score, max_score}, where
    exercises maps each exercise id to {status, hint, score}. Not for two threads at once: each
    grade ends every process started while it runs.
    """
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as e:  # a broken file is one student's zero, not the end of the grading
        nb, unread = None, f"unreadable notebook: {e}"
    student, number, checked = identify(path, nb)
    with tempfile.TemporaryDirectory(prefix="minidp-grade-") as tmp:
        folder = Path(tmp) / "transcripts"  # outside the notebook's working directory
        folder.mkdir()
        outcome, errors = _run(nb, path, Path(tmp), limit_s) if nb else (unread, [])
        recorded = [ex for ex in CHECKERS if os.path.lexists(folder / f"{ex}.json")]
        expected = [ex for ex in sorted(CHECKERS) if ex.startswith(number + ".")]
        never = "its check never ran" + ("" if outcome == "ran to the end" else f" ({outcome})")
        exercises = {}
        for ex in dict.fromkeys(checked + expected + recorded):  # in the notebook's order
            if ex in expected or ex in recorded:  # not a check that is only mentioned in the code
                status, hint = _judge(ex, folder, never)
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


def _judge(exercise: str, folder: Path, never: str) -> tuple[str, str]:
    """(status, hint) of the exercise's checker run here on the submission's recorded answers."""
    try:
        calls = load(folder, exercise)
    except ValueError as e:
        return INCORRECT, f"its transcript is unreadable ({e})"
    if calls is None:
        return NOT_ATTEMPTED, never
    replay = Replay(calls)
    try:
        result = CHECKERS[exercise](replay)
    except Exception as e:  # answers that break the checker: forged, or from another minidp
        return INCORRECT, f"its answers could not be checked: {type(e).__name__}: {e}"[:500]
    if replay.mismatch:
        return INCORRECT, MISMATCH
    if not isinstance(result, CheckResult):
        return INCORRECT, "its checker gave no verdict"
    return result.status, result.hint[:1000]


class _Kernel(AsyncKernelManager):
    """A kernel whose client drops any message over MESSAGE_CAP bytes (a 100 MB print) in zmq,
    before it is read into memory: the client's sockets are made with that limit."""

    def client(self, **kwargs):
        client = super().client(**kwargs)
        client.context.setsockopt(zmq.MAXMSGSIZE, MESSAGE_CAP)  # its own context, made here
        return client


class _Client(NotebookClient):
    """nbclient's client, keeping at most OUTPUT_CAP characters of a submission's output."""

    kept = 0

    def output(self, outs, msg, display_id, cell_index):
        self.kept += _characters(msg["content"])
        if self.kept > OUTPUT_CAP:
            return None  # dropped: a grade reads none of it, and memory is the grader's
        return super().output(outs, msg, display_id, cell_index)


def _characters(content) -> int:
    if isinstance(content, dict):
        return sum(_characters(v) for v in content.values())
    if isinstance(content, list):
        return sum(_characters(v) for v in content)
    return len(content) if isinstance(content, str) else 0


def _run(nb: nbformat.NotebookNode, path: Path, tmp: Path, limit_s: float) -> tuple[str, list]:
    """Execute nb in a fresh kernel in tmp/work: (outcome, errors)."""
    cwd = tmp / "work"  # the notebook's working directory; the transcripts are outside it
    cwd.mkdir()
    shutil.copy(path, cwd)  # the notebook may read or overwrite itself: only this copy
    # The instructor's IPython profile (history, startup files) stays out of the grading.
    env = {**os.environ, "IPYTHONDIR": str(tmp / "ipython")}
    env[FOLDER_ENV] = str(tmp / "transcripts")
    # The submission's kernelspec names the student's kernel: grade in this Python's own.
    # Errors are the student's to make: later cells still run and their checks still count.
    client = _Client(
        nb,
        kernel_name="python3",
        kernel_manager_class=_Kernel,
        allow_errors=True,
        extra_arguments=["--log-level=ERROR"],
    )
    client.coalesce_streams, client.record_timing = False, False  # no copies of long outputs
    # Outputs are not kept, so no stand-in for a browser's Output widget: nbclient's answers
    # the kernel on the shell channel and can stall a cell for its timeout (nbclient#312).
    client.comm_open_handlers = {"jupyter.widget": lambda msg: None}
    with reaping() as end_new_processes, client.setup_kernel(cwd=str(cwd), env=env):
        try:
            return _run_cells(client, nb, limit_s)
        finally:  # before nbclient's shutdown, which would wait for a busy kernel
            end_new_processes(client.km.provisioner.pid)


def _run_cells(client: NotebookClient, nb: nbformat.NotebookNode, limit_s: float) -> tuple:
    outcome, errors, index = "ran to the end", [], 0

    def record_error(cell, cell_index, execute_reply):  # from the reply, which always arrives
        content = execute_reply["content"]
        error = f"cell {cell_index}: {content['ename']}: {content['evalue']}"
        errors.append(error[:300].split("\n")[0])

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
    except CellTimeoutError:
        outcome = f"stopped at the time limit of {limit_s:g} s, in cell {index}"
    except DeadKernelError:
        outcome = f"the kernel died in cell {index}"
    return outcome, errors


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

"""Classroom assignments: student versions stub every solution and still run top to bottom with
every exercise "not attempted"; grading gives the solutions full marks, the student versions zero,
a typical wrong answer its checker's hint, and grades notebooks that hang, crash their kernel or
leave workers running, within the time limit, without touching the instructor's files.

Real notebooks where they are quick (01 grades in about 10 s), small synthetic ones elsewhere.
"""

import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import nbformat
import numpy as np
import psutil
import pytest
import torch
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from minidp import linear
from minidp.course import assignments, grading
from minidp.course.assignments import CODE_STUB, strip_solutions, student_notebook
from minidp.course.checks import CHECKERS, CORRECT, INCORRECT, NOT_ATTEMPTED, same, transcript

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
ZH = sorted((ROOT / "notebooks" / "zh").glob("[0-9][0-9]_*.ipynb"))
# The Chinese notebooks run the English code; these stand for them in the graded runs (one of
# plain functions, one on worker processes, the last), as far as they are translated.
ZH_GRADED = [path for path in ZH if path.name[:2] in ("01", "06", "12")]
LOSS = ROOT / "notebooks" / "01_loss.ipynb"


# ---- the stub transformation


def test_a_solution_that_is_the_whole_body_keeps_signature_and_docstring():
    source = '''def my_f(x):
    """Twice x."""
    # BEGIN SOLUTION
    y = 2 * x
    return y
    # END SOLUTION'''
    assert strip_solutions(source) == f'def my_f(x):\n    """Twice x."""\n    {CODE_STUB}'
    namespace = {}
    exec(strip_solutions(source), namespace)
    with pytest.raises(NotImplementedError):
        namespace["my_f"](1)


def test_stubs_keep_the_indentation_of_each_block_and_the_code_between_blocks():
    source = """class Model:
    def step(self, x):
        for _ in range(3):
            # BEGIN SOLUTION
            x = x + 1
            # END SOLUTION
        return x

    def loss(self, x):
        ### BEGIN SOLUTION
        return x**2
        ### END SOLUTION"""
    expected = f"""class Model:
    def step(self, x):
        for _ in range(3):
            {CODE_STUB}
        return x

    def loss(self, x):
        {CODE_STUB}"""
    assert strip_solutions(source) == expected
    ast.parse(expected)


def test_a_block_at_module_level_becomes_a_stub_at_column_zero():
    source = "import torch\n# BEGIN SOLUTION\nanswer = torch.ones(3)\n# END SOLUTION\nanswer"
    assert strip_solutions(source) == f"import torch\n{CODE_STUB}\nanswer"


def test_hidden_tests_go_and_visible_ones_stay():
    source = """assert my_f(1) == 2
### BEGIN HIDDEN TESTS
assert my_f(-3) == -6
### END HIDDEN TESTS
print("ok")"""
    assert strip_solutions(source) == 'assert my_f(1) == 2\nprint("ok")'


@pytest.mark.parametrize(
    "source, words",
    [
        ("x = 1\n    # BEGIN SOLUTION\ny = 2", "never closed"),
        ("x = 1\n# END SOLUTION", "line 2"),
        ("# BEGIN SOLUTION\n# BEGIN SOLUTION\n# END SOLUTION", "line 2"),
        ("### BEGIN HIDDEN TESTS\nx\n# END SOLUTION", "line 3"),
    ],
)
def test_markers_out_of_place_are_errors_that_say_where(source, words):
    with pytest.raises(ValueError, match=words):
        strip_solutions(source)


def test_student_notebook_clears_outputs_and_removes_hidden_cells_but_not_the_original():
    solved = new_code_cell(
        "def my_f(x):\n    # BEGIN SOLUTION\n    return 2 * x\n    # END SOLUTION"
    )
    solved.outputs = [nbformat.v4.new_output("stream", text="secret\n")]
    solved.execution_count = 7
    tagged = new_code_cell("ANSWER = 42", metadata={"tags": ["remove_cell"]})
    only_hidden = new_code_cell("### BEGIN HIDDEN TESTS\nassert my_f(2) == 4\n### END HIDDEN TESTS")
    prose = new_markdown_cell("Why?\n### BEGIN SOLUTION\nBecause.\n### END SOLUTION")
    nb = new_notebook(cells=[solved, tagged, only_hidden, prose, new_code_cell("")])
    nb.metadata["widgets"] = {"state": "saved"}
    original = nbformat.writes(nb)

    student = student_notebook(nb)
    assert [c.source for c in student.cells] == [
        f"def my_f(x):\n    {CODE_STUB}",
        f"Why?\n{assignments.MARKDOWN_STUB}",
        "",
    ]
    assert student.cells[0].outputs == [] and student.cells[0].execution_count is None
    assert "widgets" not in student.metadata
    assert nbformat.writes(nb) == original


# ---- the command line


def test_help_explains_both_commands(capsys):
    with pytest.raises(SystemExit) as exit:
        assignments.main(["--help"])
    assert exit.value.code == 0
    out = capsys.readouterr().out
    assert "student" in out and "grade" in out
    with pytest.raises(SystemExit):
        assignments.main(["grade", "--help"])
    assert "--timeout" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["student", "no/such/folder", "out"],
        ["grade", "no/such/notebook.ipynb"],
        ["grade", str(LOSS), "no/such/notebook.ipynb"],
        ["grade", "no/such"],  # made an empty folder below
    ],
)
def test_bad_paths_are_one_line_errors(argv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if argv == ["grade", "no/such"]:
        (tmp_path / "no" / "such").mkdir(parents=True)
    with pytest.raises(SystemExit) as exit:
        assignments.main(argv)
    message = str(exit.value.code)
    assert "no/such" in message and "\n" not in message


def test_student_versions_never_overwrite_the_source(tmp_path):
    nbformat.write(new_notebook(cells=[new_code_cell("x = 1")]), tmp_path / "01_x.ipynb")
    with pytest.raises(SystemExit) as exit:
        assignments.main(["student", str(tmp_path), str(tmp_path)])
    assert "overwrite" in str(exit.value.code)


@pytest.mark.parametrize("edition", [NOTEBOOKS, ZH], ids=["en", "zh"])
def test_student_versions_of_the_course_hold_no_solution(tmp_path, edition):
    assignments.main(["student", str(edition[0].parent), str(tmp_path)])
    assert sorted(p.name for p in tmp_path.glob("*.ipynb")) == [p.name for p in edition]
    for path in edition:
        solved, student = (nbformat.read(p, as_version=4) for p in (path, tmp_path / path.name))
        text = "\n".join(c.source for c in student.cells)
        assert "SOLUTION" not in text and "HIDDEN TESTS" not in text, path.name
        blocks = sum(c.source.count("BEGIN SOLUTION") for c in solved.cells)
        assert text.count(CODE_STUB) == blocks, path.name


# ---- the course, graded


def expected(notebook: Path) -> set[str]:
    return {ex for ex in CHECKERS if ex.startswith(notebook.name[:2] + ".")}


def verdicts(graded: dict, status: str, notebook: Path) -> str | None:
    """What is wrong with a grade that should give every exercise `status` and see no error."""
    got = {ex: e["status"] for ex, e in graded["exercises"].items()}
    if graded["outcome"] == "ran to the end" and not graded["errors"]:
        if got == dict.fromkeys(expected(notebook), status):
            return None
    return f"{graded['outcome']}, errors {graded['errors']}, {got}"


@pytest.mark.grading
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("edition", [NOTEBOOKS, ZH_GRADED], ids=["en", "zh"])
def test_the_course_grades_its_solutions_full_and_its_student_versions_zero(tmp_path, edition):
    # The solutions as committed, and the student versions: every cell runs without an error, and
    # the grader, judging the recorded answers in its own process, agrees with the notebooks.
    if not edition:
        pytest.skip("none of the Chinese notebooks graded here is translated yet")
    out = tmp_path / "student"
    students = [s for path in edition for s in assignments.write_student_versions(path, out)]
    runs = [(path, CORRECT) for path in edition] + [(path, NOT_ATTEMPTED) for path in students]
    # Two graders at a time (each kernel starts worker processes on 2 cores), each with every
    # other notebook; one that fails next to another gets a run of its own, so that a timing-
    # sensitive cell is not blamed on contention.
    halves = [runs[0::2], runs[1::2]]
    graders = [
        subprocess.Popen(
            [sys.executable, "-m", "minidp.course.assignments", "grade", "--timeout", "900"]
            + [str(path) for path, _ in half]
            + ["--out", str(tmp_path / f"half{i}")],
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        for i, half in enumerate(halves)
    ]
    assert [grader.wait(timeout=3000) for grader in graders] == [0, 0]
    graded = {}
    for i in range(2):
        for record in json.loads((tmp_path / f"half{i}.json").read_text()):
            graded[record["submission"]] = record
    failures = []
    for path, status in runs:
        if verdicts(graded[str(path)], status, path) is not None:
            problem = verdicts(grading.grade(path, limit_s=900), status, path)
            if problem is not None:
                failures.append(f"{path.parent.name}/{path.name}: {problem}")
    assert not failures, "\n\n".join(failures)


# ---- grading


def answered(source: Path, function: str, body: str, to: Path) -> Path:
    """A copy of `source` in which the solution of `function` is `body`, a learner's answer."""
    nb = nbformat.read(source, as_version=4)
    (cell,) = [c for c in nb.cells if f"def {function}(" in c.source]
    head, rest = cell.source.split("# BEGIN SOLUTION")
    cell.source = head.rstrip(" ") + body + rest.split("# END SOLUTION")[1]
    to.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, to)
    return to


def tree_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes() if path.is_file() else b"dir")
    return digest.hexdigest()


def test_grading_solutions_student_versions_and_typical_mistakes(tmp_path, monkeypatch):
    course = tmp_path / "course"  # the instructor's folder: submissions, and the grader's cwd
    subs = course / "submissions"
    (subs / "alice").mkdir(parents=True)
    shutil.copy(LOSS, subs / "alice")  # the solutions as committed
    assignments.write_student_versions(LOSS, subs / "bob")  # the student version, untouched
    # A learner forgets 1/m; another sums over positions; both files named by the student, one
    # without the notebook's number, so it is matched by the exercises it checks.
    forgot_m = "    return ((X @ theta - y) ** 2).sum() / 2"
    answered(LOSS, "my_mse", forgot_m, subs / "carol.ipynb")
    summed = "    return -logits.log_softmax(-1)[torch.arange(len(targets)), targets].sum()"
    answered(LOSS, "my_cross_entropy", summed, subs / "dave-loss.ipynb")
    before = tree_hash(course)
    monkeypatch.chdir(course)

    assignments.main(["grade", str(subs), "--out", str(tmp_path / "report" / "grades")])

    assert tree_hash(course) == before
    records = json.loads((tmp_path / "report" / "grades.json").read_text())
    by_student = {r["student"]: r for r in records}
    assert sorted(by_student) == ["alice", "bob", "carol", "dave-loss"]
    for r in records:
        assert r["notebook"] == "01" and r["outcome"] == "ran to the end"
        assert list(r["exercises"]) == ["01.mse", "01.cross_entropy"]
    status = {
        s: {ex: e["status"] for ex, e in r["exercises"].items()} for s, r in by_student.items()
    }
    assert status["alice"] == {"01.mse": CORRECT, "01.cross_entropy": CORRECT}
    assert status["bob"] == {"01.mse": NOT_ATTEMPTED, "01.cross_entropy": NOT_ATTEMPTED}
    assert status["carol"] == {"01.mse": INCORRECT, "01.cross_entropy": CORRECT}
    assert status["dave-loss"] == {"01.mse": CORRECT, "01.cross_entropy": INCORRECT}
    assert by_student["carol"]["exercises"]["01.mse"]["hint"] == "J is a mean: divide by m as well"
    assert (
        "average over the m predictions"
        in by_student["dave-loss"]["exercises"]["01.cross_entropy"]["hint"]
    )
    scores = {s: (r["score"], r["max_score"]) for s, r in by_student.items()}
    assert scores == {"alice": (2, 2), "bob": (0, 2), "carol": (1, 2), "dave-loss": (1, 2)}

    rows = (tmp_path / "report" / "grades.csv").read_text().splitlines()
    assert rows[0] == "student,notebook,exercise,status,score,hint"
    assert "carol,01,01.mse,incorrect,0,J is a mean: divide by m as well" in rows
    assert len(rows) == 1 + 4 * 2


# Small synthetic notebooks: the first cell answers 01.mse correctly, the last 01.cross_entropy.
MSE = """from minidp.course import checks
def my_mse(theta, X, y):
    return ((X @ theta - y) ** 2).sum() / (2 * len(y))
checks.check("01.mse", my_mse)"""
CROSS_ENTROPY = """import torch
def my_cross_entropy(z, t):
    return -(z - torch.logsumexp(z, -1, keepdim=True))[torch.arange(len(t)), t].mean()
checks.check("01.cross_entropy", my_cross_entropy)"""


def synthetic(folder: Path, name: str, *cells: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    nb = new_notebook(cells=[new_code_cell(c) for c in (MSE, *cells, CROSS_ENTROPY)])
    nb.metadata["kernelspec"] = {"name": "someone-elses-kernel", "display_name": "?"}
    nbformat.write(nb, folder / name)
    return folder / name


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_errors_in_cells_do_not_lose_later_checks_nor_touch_the_instructors_files(
    tmp_path, monkeypatch
):
    course = tmp_path / "course"
    path = synthetic(
        course,
        "01_loss.ipynb",
        "undefined_name",
        "import ipywidgets as W\nout = W.Output()\nwith out:\n    print('in a widget')\nout",
        "open('01_loss.ipynb', 'w').write('{}')  # overwrites its own copy, not the submission",
        "import pathlib; pathlib.Path('out').mkdir(); pathlib.Path('out/x').write_text('x')",
    )
    before = tree_hash(course)
    monkeypatch.chdir(course)
    graded = grading.grade(path, limit_s=60)
    assert tree_hash(course) == before
    assert graded["outcome"] == "ran to the end" and graded["score"] == 2
    assert graded["errors"] == ["cell 1: NameError: name 'undefined_name' is not defined"]


@pytest.mark.parametrize(
    "trouble, outcome",
    [
        ("import time; time.sleep(10**6)", "time limit of 12 s, in cell 1"),
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "the kernel died in cell 1"),
    ],
)
def test_a_notebook_that_hangs_or_crashes_is_graded_on_what_it_checked(tmp_path, trouble, outcome):
    path = synthetic(tmp_path, "01_loss.ipynb", trouble)
    start = time.monotonic()
    graded = grading.grade(path, limit_s=12)
    assert time.monotonic() - start < 12 + 30  # kernel start-up and tear-down included
    assert outcome in graded["outcome"]
    assert graded["exercises"]["01.mse"]["status"] == CORRECT
    never = graded["exercises"]["01.cross_entropy"]
    assert never["status"] == NOT_ATTEMPTED and outcome in never["hint"]
    assert psutil.Process().children(recursive=True) == []


def test_workers_that_never_end_are_ended_after_grading(tmp_path):
    pids = tmp_path / "pids"
    workers = f"""import multiprocessing, subprocess, time
forked = multiprocessing.Process(target=time.sleep, args=(10**6,))  # not a daemon: joined at exit
forked.start()
own_session = subprocess.Popen(["sleep", "1000000"], start_new_session=True)
# the shell exits at once: its sleep lives on, re-parented to init, in the kernel's session
orphan = subprocess.run("sleep 1000000 >/dev/null 2>&1 & echo $!", shell=True, capture_output=True)
# and this one in a session of its own: neither the kernel's descendant nor in its session
setsid = "setsid sleep 1000000 >/dev/null 2>&1 & echo $!"
escaped = subprocess.run(setsid, shell=True, capture_output=True)
started = [forked.pid, own_session.pid, orphan.stdout.decode(), escaped.stdout.decode()]
open({str(pids)!r}, "w").write(" ".join(map(str, started)))"""
    path = synthetic(tmp_path, "01_loss.ipynb", workers)
    start = time.monotonic()
    graded = grading.grade(path, limit_s=60)
    assert time.monotonic() - start < 60
    assert graded["outcome"] == "ran to the end" and graded["score"] == 2
    started = [int(pid) for pid in pids.read_text().split()]
    assert len(started) == 4 and not any(alive(pid) for pid in started)
    assert psutil.Process().children(recursive=True) == []


# Each forges full marks for the student version of 01, where nothing is solved. The grader judges
# the answers the learner's functions gave, in its own process: none of these counts.
STUBS = """import json, os, torch
import minidp.course.checks.core as core
from minidp.course import checks
def my_mse(theta, X, y):
    raise NotImplementedError
def my_cross_entropy(z, t):
    raise NotImplementedError
correct = lambda ex: checks.CheckResult(ex, checks.CORRECT)
exercises = ["01.mse", "01.cross_entropy"]"""
FORGERIES = {
    "appends to RESULTS": "checks.RESULTS += [correct(ex) for ex in exercises]",
    "replaces the checkers": """for ex in exercises:
    checks.CHECKERS[ex] = lambda fn, ex=ex: correct(ex)
    checks.check(ex, lambda *args: 0.0)""",
    "writes the results file, then breaks the probe": """
forged = {ex: [checks.CORRECT, ""] for ex in exercises}
open("../results.json", "w").write(json.dumps(forged))
checks.RESULTS = None""",
    "patches the checker when called": """def my_mse(theta, X, y):
    core.same = lambda *args, **kwargs: True  # every answer now agrees with the reference
    checks.CHECKERS["01.cross_entropy"] = lambda fn: correct("01.cross_entropy")
    return torch.zeros(())
for ex, fn in zip(exercises, [my_mse, my_cross_entropy]):
    assert checks.check(ex, fn).correct  # fooled here, in the submission's kernel""",
    "leaves a pipe and a link for transcripts": """folder = os.environ["MINIDP_TRANSCRIPTS"]
os.mkfifo(os.path.join(folder, "01.mse.json"))  # reading it would wait forever
os.symlink("/dev/zero", os.path.join(folder, "01.cross_entropy.json"))  # and this never ends""",
}


@pytest.mark.parametrize("forgery", list(FORGERIES))
def test_a_forged_grade_is_zero(tmp_path, forgery):
    folder = tmp_path / "eve"
    folder.mkdir()
    nb = new_notebook(cells=[new_code_cell(STUBS), new_code_cell(FORGERIES[forgery])])
    nbformat.write(nb, folder / "01_loss.ipynb")
    graded = grading.grade(folder / "01_loss.ipynb", limit_s=60)
    assert graded["outcome"] == "ran to the end" and graded["errors"] == []
    assert graded["score"] == 0 and graded["max_score"] == 2, graded["exercises"]


def peak_bytes(path: Path) -> tuple[dict, int]:
    """The grade of `path`, and the most memory the grader's Python objects took meanwhile."""
    tracemalloc.start()
    try:
        return grading.grade(path, limit_s=60), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_output_is_capped_and_a_huge_print_is_not_held(tmp_path):
    # 30 MB in small messages (a long training log), or 40 MB in one: neither is held in the
    # grader's memory. zmq drops the large one, and that kernel's output from then on.
    many = 'for _ in range(300):\n    print("y" * 100_000, flush=True)'
    paths = [
        synthetic(tmp_path / name, "01_loss.ipynb", cell)
        for name, cell in [
            ("quiet", "print('hello')"),
            ("many", many),
            ("huge", 'print("x" * 40_000_000)'),
        ]
    ]
    peak_bytes(paths[0])  # what a first grade imports is not counted
    (_, calm), *noisy = [peak_bytes(path) for path in paths]
    for graded, peak in noisy:
        assert graded["outcome"] == "ran to the end" and graded["score"] == 2
        assert peak - calm < 5e6, f"the grader held {(peak - calm) / 1e6:.0f} MB more"


# ---- transcripts: what crosses from a submission to the grader


def crossed(value):
    """value as the grader receives it: encoded, sent as JSON text, decoded."""
    return transcript.decode(json.loads(json.dumps(transcript.encode(value))))


def test_answers_cross_as_plain_data_and_arrive_equal():
    tensors = [
        torch.randn(3, 4, dtype=torch.float64).T,  # not contiguous
        torch.tensor(2.5, requires_grad=True),
        torch.arange(6, dtype=torch.int16).reshape(2, 3),
        torch.tensor([True, False]),
        torch.randn(2, dtype=torch.bfloat16),
        torch.randn(2, dtype=torch.complex64),
        torch.empty(0, 3),
    ]
    for t in tensors:
        got = crossed(t)
        assert got.dtype == t.dtype and got.shape == t.shape and torch.equal(got, t.detach())
    value = [None, True, 3, 2.5, "s", (1, [2.0]), {"a": (), 4: [torch.ones(1)]}]
    assert repr(crossed(value)) == repr(value)  # lists stay lists, tuples tuples
    assert crossed(np.float32(0.5)) == 0.5 and torch.equal(
        crossed(np.eye(2)), torch.eye(2).double()
    )
    assert isinstance(crossed(object()), transcript.Opaque) and not same(crossed(object()), 0)


@pytest.mark.parametrize(
    "forged",
    [
        {"tensor": ["float32", [2], "AAAA"]},  # 3 bytes for 2 floats
        {"tensor": ["object", [1], ""]},
        {"tensor": ["float32", [-1], ""]},
        {"pickle": "gASV"},
        {"tuple": [], "dict": []},
    ],
)
def test_anything_else_is_refused(forged):
    with pytest.raises((ValueError, TypeError, KeyError)):
        transcript.decode(forged)


def recorded(tmp_path: Path, exercise: str, fn) -> tuple:
    recorder = transcript.Recorder(fn)
    result = CHECKERS[exercise](recorder)
    transcript.save(recorder, tmp_path, exercise)
    return result, transcript.load(tmp_path, exercise)


def test_a_replay_gives_the_checkers_verdict_and_notices_other_questions(tmp_path):
    def stub(*args):
        raise NotImplementedError

    for fn, status in [
        (linear.mse_loss, CORRECT),
        (stub, NOT_ATTEMPTED),
        (lambda *a: 0, INCORRECT),
    ]:
        here, calls = recorded(tmp_path, "01.mse", fn)
        replay = transcript.Replay(calls)
        assert here.status == CHECKERS["01.mse"](replay).status == status
        assert not replay.mismatch
    torch.set_default_dtype(torch.float64)  # the checker's inputs are made in float64 there
    try:
        here, calls = recorded(tmp_path, "01.mse", linear.mse_loss)
    finally:
        torch.set_default_dtype(torch.float32)
    replay = transcript.Replay(calls)
    assert here.correct and not CHECKERS["01.mse"](replay).correct and replay.mismatch

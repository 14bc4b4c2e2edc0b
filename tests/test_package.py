"""The package as users get it: a wheel that holds every module, an engine that loads no course
code, and modules small enough to read in one sitting."""

import ast
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "minidp").rglob("*.py"))
# The course's messages in other languages, read at run time (minidp.course.i18n).
CATALOGS = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "minidp").rglob("*.po"))
# What the engine must never load: the course's own modules and the libraries only it needs.
COURSE_ONLY = ("minidp.course", "matplotlib", "ipywidgets", "nbformat", "nbclient", "polib")


def _module(path: str) -> str:
    return path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the checkout (offline: no build isolation)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "minidp", src / "minidp", ignore=shutil.ignore_patterns("__pycache__"))
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*build, "-w", str(tmp / "dist"), str(src)], check=True, timeout=300)
    (found,) = (tmp / "dist").glob("minidp-*.whl")
    return found


def test_the_wheel_holds_every_module(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        packed = sorted(n for n in z.namelist() if n.startswith("minidp/") and n.endswith(".py"))
    assert packed == SOURCES


def test_the_wheel_holds_the_message_catalogs(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        packed = sorted(n for n in z.namelist() if n.endswith(".po"))
    assert "minidp/course/locale/zh/LC_MESSAGES/minidp.po" in CATALOGS
    assert packed == CATALOGS


def test_every_module_imports_from_an_installed_wheel(wheel: Path, tmp_path: Path) -> None:
    """Installed into a folder of its own and imported from outside the checkout. `python -S`
    skips site-packages' .pth files, so the development install (`pip install -e .`) cannot
    stand in for a module the wheel lacks; torch and the rest come from site-packages itself."""
    site = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q"]
    subprocess.run([*install, "--target", str(site), str(wheel)], check=True, timeout=300)
    modules = [_module(p) for p in SOURCES]
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    m = importlib.import_module(name)\n"
        f"    assert m.__file__.startswith({str(site)!r}), (name, m.__file__)\n"
        # The installed package speaks Chinese: its catalog came with it.
        "from minidp.course import i18n\n"
        "i18n.set_language('zh')\n"
        "assert i18n._('correct') == '正确', i18n.catalog_path('zh')\n"
        "print(len(sys.modules))\n"
    )
    path = f"{site}:{sysconfig.get_paths()['purelib']}:{sysconfig.get_paths()['platlib']}"
    env = {"PYTHONPATH": path, "MPLBACKEND": "Agg", "PATH": "/usr/bin:/bin"}
    run = subprocess.run(
        [sys.executable, "-S", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    help_ = [sys.executable, "-S", "-m", "minidp.train", "--help"]
    run = subprocess.run(help_, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0 and "--nproc" in run.stdout, run.stderr


def test_the_engine_loads_no_course_code() -> None:
    """`import minidp`, `python -m minidp.train` and every other engine module, all in one
    process: none of them loads the course or the libraries only the course needs."""
    engine = [_module(p) for p in SOURCES if not p.startswith("minidp/course/")]
    script = f"import importlib, sys\nfor m in {engine!r}: importlib.import_module(m)\n"
    script += "print('\\n'.join(sys.modules))"
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert "minidp.train" in run.stdout.split()
    loaded = [m for m in run.stdout.split() if m.startswith(COURSE_ONLY)]
    assert loaded == []


def test_engine_modules_never_import_the_course() -> None:
    """Not even lazily, inside a function: the arrow points one way."""
    for path in SOURCES:
        if path.startswith("minidp/course/"):
            continue
        tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            bad = [n for n in names if n.startswith(COURSE_ONLY)]
            assert not bad, f"{path}:{node.lineno} imports {bad}"


def test_no_module_is_over_300_lines() -> None:
    """STYLE: a module is read in one sitting (~250 lines; 300 at most)."""
    sizes = {p: len((ROOT / p).read_text(encoding="utf-8").splitlines()) for p in SOURCES}
    assert {p: n for p, n in sizes.items() if n > 300} == {}


def test_no_crammed_lines() -> None:
    """Lines are not won by hiding code from the formatter."""
    crammed = [p for p in SOURCES if "fmt: skip" in (ROOT / p).read_text(encoding="utf-8")]
    assert crammed == []

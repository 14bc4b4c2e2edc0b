"""Every notebook, run in a fresh environment built from binder/'s files alone, within Binder's
limits: at most 60 s and 1.5 GB (the kernel and all its worker processes together) each.

    make test-binder        # = .venv/bin/python -m pytest -m binder tests/binder

What Binder's builder (repo2docker) does, and what this test does in its place:
1. a Python of runtime.txt's version with Jupyter's kernel in it: here `python3.X -m venv` and
   `pip install ipykernel` (repo2docker's own environment also holds JupyterLab, which the browser
   test in tests/browser covers);
2. `pip install -r binder/requirements.txt`, run from the repository root: the CPU build of torch
   and minidp itself. Nothing else from the project is installed: not the dev extra, not
   scripts/install_torch.py;
3. every command through binder/start, which sets one thread per worker.
Nothing is cached between runs: the environment is built in a temporary folder, with pip's
cache off (as repo2docker runs pip), and removed after.

Memory is the peak over the run of the summed PSS (proportional set size) of the kernel and all
its descendants, sampled every 50 ms. The workers that `minidp.launch` forks share the kernel's
pages copy-on-write (torch's libraries, the Python heap before the fork), so summing RSS counts
those pages once per process, and summing USS counts them not at all. PSS splits each shared page
among the processes that map it, so the sum over the tree counts it once: the physical memory
the tree occupies, which is what Binder's container limit charges. MB here is 10^6 bytes. The
Jupyter server, about 100 MB more on Binder, is not in the figure.
"""

import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

psutil = pytest.importorskip("psutil")
nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402
from jupyter_client.manager import KernelManager  # noqa: E402

pytestmark = pytest.mark.binder

ROOT = Path(__file__).resolve().parents[2]
BINDER = ROOT / "binder"
# The Chinese edition runs the same code as the English: its first notebook stands for it here
# (it switches the package's messages to Chinese, which needs the locale files in the wheel).
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")) + sorted(
    (ROOT / "notebooks" / "zh").glob("00_*.ipynb")
)
LIMIT_S = 60.0
LIMIT_MB = 1500.0
CELL_TIMEOUT_S = 180  # a hung cell fails the run instead of waiting forever
SAMPLE_S = 0.05


def run(cmd: list, **kwargs) -> subprocess.CompletedProcess:
    """Run cmd, failing the test with its output if it fails."""
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} failed:\n{result.stdout[-3000:]}{result.stderr}")
    return result


def answers(url: str, timeout_s: float = 3.0) -> bool:
    try:
        urllib.request.urlopen(url, timeout=timeout_s).close()
        return True
    except OSError:
        return False


def pip_env() -> dict:
    """pip's own configuration, and no retries for an extra index that cannot answer here.

    On Binder PyTorch's CPU index answers. Where it does not (a machine whose network reaches PyPI
    only), pip still finds torch==X+cpu wherever it is configured to look (a local wheel, or it
    fails, as it should); but it retries the dead index five times with backoff for every package
    it resolves, about 8 s each, over three minutes in all. PIP_RETRIES=0 changes how long pip
    waits, not what it installs.
    """
    env = dict(os.environ)
    indexes = re.findall(
        r"--(?:extra-)?index-url\s+(\S+)", (BINDER / "requirements.txt").read_text()
    )
    if not all(answers(url.rstrip("/") + "/torch/") for url in indexes):
        env["PIP_RETRIES"] = "0"
    return env


@pytest.fixture(scope="module")
def binder_python(tmp_path_factory, binder_report) -> Path:
    """The Python of a fresh environment built from binder/ as repo2docker would; removed after."""
    version = re.fullmatch(r"python-(\d+\.\d+)", (BINDER / "runtime.txt").read_text().strip())
    assert version, "runtime.txt should read python-X.Y"
    base = shutil.which(f"python{version[1]}")
    if base is None:
        if os.environ.get("CI"):
            pytest.fail(f"python{version[1]} (binder/runtime.txt) is not installed")
        pytest.skip(f"python{version[1]} (binder/runtime.txt) is not installed here")
    venv = tmp_path_factory.mktemp("binder") / "venv"
    started = time.perf_counter()
    run([base, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    pip = [python, "-m", "pip", "install", "--no-cache-dir"]  # as repo2docker runs it
    run([*pip, "--quiet", "ipykernel"])
    run([*pip, "-r", "binder/requirements.txt"], cwd=ROOT, env=pip_env())
    binder_report["build_s"] = time.perf_counter() - started
    yield python
    shutil.rmtree(venv, ignore_errors=True)


def test_environment_is_the_cpu_build_with_one_thread(binder_python):
    probe = (
        "import json, os, torch, minidp; print(json.dumps({'torch': torch.__version__,"
        " 'threads': torch.get_num_threads(), 'minidp': minidp.__file__}))"
    )
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    found = json.loads(run([BINDER / "start", binder_python, "-c", probe], env=env).stdout)
    pinned = re.search(r"^torch==(\S+)", (BINDER / "requirements.txt").read_text(), re.M)[1]
    assert found["torch"] == pinned and pinned.endswith("+cpu")
    assert found["threads"] == 1  # binder/start's OMP_NUM_THREADS reached torch
    assert Path(found["minidp"]).is_relative_to(ROOT)  # the editable install of this repository


class TreeSampler(threading.Thread):
    """Samples the summed PSS of a process and all its descendants until stopped."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.peak_bytes = self.peak_rss_bytes = 0
        self.most_processes = 0
        self.seen: dict[int, psutil.Process] = {}
        self.halt = threading.Event()

    def sample(self) -> None:
        try:
            tree = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        total = rss = 0
        for process in tree:
            try:
                memory = process.memory_full_info()  # reads /proc/PID/smaps_rollup: ~2 ms
                total, rss = total + memory.pss, rss + memory.rss
                self.seen.setdefault(process.pid, process)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass  # a worker that ended between listing and reading
        self.peak_bytes = max(self.peak_bytes, total)
        self.peak_rss_bytes = max(self.peak_rss_bytes, rss)  # for comparison only
        self.most_processes = max(self.most_processes, len(tree))

    def run(self) -> None:
        while not self.halt.wait(SAMPLE_S):
            self.sample()

    def stop(self) -> None:
        self.halt.set()
        self.join()


def running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kernel_manager(python: Path, folder: Path) -> KernelManager:
    """A manager for a kernel of the binder environment, started through binder/start."""
    spec = folder / "binder"
    spec.mkdir(parents=True, exist_ok=True)
    argv = [str(BINDER / "start"), str(python), "-m", "ipykernel_launcher", "-f"]
    kernel = {"argv": [*argv, "{connection_file}"], "display_name": "binder", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel))
    specs = KernelSpecManager(kernel_dirs=[str(folder)])
    return KernelManager(kernel_name="binder", kernel_spec_manager=specs)


@pytest.mark.parametrize(
    "path",
    NOTEBOOKS,
    ids=[p.relative_to(ROOT / "notebooks").with_suffix("").as_posix() for p in NOTEBOOKS],
)
def test_notebook_within_binder_limits(path, binder_python, binder_report, tmp_path, monkeypatch):
    # The kernel's environment as on Binder: its own bin/ first on PATH (for any command a
    # notebook runs), and none of the Makefile's thread and backend settings, nor our venv.
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MPLBACKEND", "VIRTUAL_ENV"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PATH", f"{binder_python.parent}{os.pathsep}{os.environ['PATH']}")
    nb = nbformat.read(path, as_version=4)
    km = kernel_manager(binder_python, tmp_path / "kernels")
    metadata = {"metadata": {"path": str(path.parent)}}  # the kernel runs in notebooks/
    client = nbclient.NotebookClient(nb, km=km, timeout=CELL_TIMEOUT_S, resources=metadata)
    started = time.perf_counter()
    error, cell_seconds = None, []  # (seconds, cell index) of each cell
    with client.setup_kernel():  # starts the kernel
        sampler = TreeSampler(km.provisioner.pid)
        sampler.start()
        try:
            for index, cell in enumerate(nb.cells):
                cell_started = time.perf_counter()
                client.execute_cell(cell, index)
                cell_seconds.append((time.perf_counter() - cell_started, index))
        except Exception as e:  # CellExecutionError, or a timeout: report, then still clean up
            error = e
        finally:
            seconds = time.perf_counter() - started
            sampler.stop()
            km.shutdown_kernel()  # ours to end: nbclient only ends kernels it made itself
    leftovers = [p for p in sampler.seen.values() if running(p)]
    gone, alive = psutil.wait_procs(leftovers, timeout=10)
    for process in alive:
        process.kill()
    peak_mb = sampler.peak_bytes / 1e6
    binder_report["rows"].append(
        (
            path.relative_to(ROOT / "notebooks").with_suffix("").as_posix(),
            seconds,
            peak_mb,
            sampler.most_processes,
        )
    )
    rss_mb = sampler.peak_rss_bytes / 1e6
    print(f"{path.name}: {seconds:.1f} s, peak {peak_mb:.0f} MB (RSS summed: {rss_mb:.0f} MB)")
    assert error is None, f"{path.name} failed in the Binder environment:\n{error}"
    assert not alive, f"{path.name} left processes behind: {[p.pid for p in alive]}"
    slowest = ", ".join(f"cell {i}: {t:.1f} s" for t, i in sorted(cell_seconds)[::-1][:3])
    assert seconds <= LIMIT_S, f"{path.name} took {seconds:.1f} s (limit {LIMIT_S:.0f}; {slowest})"
    assert peak_mb <= LIMIT_MB, f"{path.name} peaked at {peak_mb:.0f} MB (limit {LIMIT_MB:.0f})"

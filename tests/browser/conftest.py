"""JupyterLab on loopback and a headless Chromium for test_jupyterlab.py.

The server serves a copy of notebooks/ in a temporary folder, so that saving (the test saves
each notebook to read its outputs back) never writes outputs into the committed notebooks. Its
settings, runtime files and workspaces live there too: nothing of the user's ~/.jupyter is read
or written. Both fixtures check, when they end, that no process they started is left behind.
"""

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

psutil = pytest.importorskip("psutil")

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "out" / "screenshots"
CHROMIUM = "/usr/bin/chromium"  # Debian's; Playwright's own browser download is not used
CHROMIUM_FLAGS = [  # a closed network: no background requests to Google's services
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
# Every cell in the page (JupyterLab 4 otherwise renders only the cells near the viewport), and
# no news or update checks, whose pop-ups would cover the notebook in screenshots.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
}
ROWS = pytest.StashKey[list]()


def unavailable(reason: str):
    """Fail under CI, which must have the browser (.ci/run installs it); skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI installs it: see .ci/run)")
    pytest.skip(reason)


def descendants(pid: int) -> list:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def end_all(processes: list, timeout_s: float = 15.0) -> list[str]:
    """Wait for processes to exit; kill those that don't and return their descriptions."""
    _, alive = psutil.wait_procs(processes, timeout=timeout_s)
    left = []
    for process in alive:
        try:
            left.append(f"{process.pid} {' '.join(process.cmdline())[:120]}")
            process.kill()
        except psutil.NoSuchProcess:
            pass
    return left


class Lab:
    """A JupyterLab server on 127.0.0.1, a free port and a random token, serving `folder`."""

    def __init__(self, folder: Path):
        self.folder, self.token = folder, secrets.token_hex(16)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        settings = folder / ".settings"
        for plugin, values in LAB_SETTINGS.items():
            path = settings / f"{plugin}.jupyterlab-settings"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values))
        env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # as a learner has it
        env["OMP_NUM_THREADS"] = "1"  # as `make lab` and binder/start set it
        for name, sub in [("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_DATA_DIR", "data")]:
            env[name] = str(folder / ".jupyter" / sub)
        env["JUPYTER_RUNTIME_DIR"] = str(folder / ".jupyter" / "runtime")
        env["IPYTHONDIR"] = str(folder / ".ipython")
        command = [
            *(sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root"),
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={folder}",
            f"--LabApp.user_settings_dir={settings}",
            f"--LabApp.workspaces_dir={folder / '.workspaces'}",
            "--LabApp.extension_manager=readonly",  # no PyPI queries for extensions
        ]
        self.screenshots = SCREENSHOTS
        self.log = SCREENSHOTS / "jupyterlab.log"
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.wait_until_up()

    def api(self, path: str, method: str = "GET"):
        headers = {"Authorization": f"token {self.token}"}
        request = urllib.request.Request(self.url + path, method=method, headers=headers)
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def wait_until_up(self, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"JupyterLab exited:\n{self.log.read_text()[-3000:]}")
            try:
                self.api("/api/status")
                return
            except OSError:
                time.sleep(0.3)
        pytest.fail(f"JupyterLab did not answer in {timeout_s:.0f} s:\n{self.log.read_text()}")

    def kernels_idle(self) -> bool:
        return all(k["execution_state"] == "idle" for k in self.api("/api/kernels"))

    def end_sessions(self) -> list[str]:
        """Shut down every notebook's kernel; the processes that outlived it, if any."""
        running = descendants(self.process.pid)  # kernels, and the workers they forked
        for session in self.api("/api/sessions"):
            self.api(f"/api/sessions/{session['id']}", method="DELETE")
        return end_all(running)

    def stop(self) -> list[str]:
        """Shut the server down as Jupyter's own shutdown does; the processes it left, if any."""
        running = [self.process, *descendants(self.process.pid)]
        try:
            self.api("/api/shutdown", method="POST")
        except OSError:
            self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        return end_all(running)


@pytest.fixture(scope="session")
def browser_rows(request: pytest.FixtureRequest) -> list:
    return request.config.stash.setdefault(ROWS, [])


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lab")
    ignore = shutil.ignore_patterns(".ipynb_checkpoints")
    shutil.copytree(ROOT / "notebooks", folder / "notebooks", ignore=ignore)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for old in SCREENSHOTS.glob("*.png"):  # the folder shows this run only
        old.unlink()
    server = Lab(folder)
    yield server
    left = server.stop()
    assert not left, f"JupyterLab left processes behind (now killed): {left}"


@pytest.fixture(scope="module")
def browser():
    """A Chromium browser context with JupyterLab's window size."""
    if not Path(CHROMIUM).exists():
        unavailable(f"{CHROMIUM} not found: apt-get install chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed: pip install -e '.[dev]'")
    before = {p.pid for p in psutil.Process().children()}
    playwright = sync_playwright().start()
    drivers = [p for p in psutil.Process().children() if p.pid not in before]  # Playwright's
    chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
    context = chromium.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(60_000)
    yield context
    ours = drivers + [p for driver in drivers for p in descendants(driver.pid)]  # + Chromium's
    context.close()
    chromium.close()
    playwright.stop()
    left = end_all(ours)
    assert not left, f"Chromium or Playwright left processes behind (now killed): {left}"


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    rows = config.stash.get(ROWS, [])
    if not rows:
        return
    terminalreporter.section("notebooks in JupyterLab (headless Chromium)")
    terminalreporter.write_line("notebook                               run all s  images  widgets")
    for name, seconds, images, widgets in sorted(rows):
        terminalreporter.write_line(f"{name:<38} {seconds:>9.1f}  {images:>6}  {widgets}")
    terminalreporter.write_line(f"screenshots: {SCREENSHOTS}")

"""Install a PyTorch build that suits this machine into the current Python environment.

Run by `make` (test, lab, gpu-check) before minidp itself is installed, so that pip never pulls a
multi-gigabyte CUDA build onto a laptop or a CPU-only CI machine, and a GPU node gets one:

    python scripts/install_torch.py             # choose, then install (or keep what is there)
    python scripts/install_torch.py --dry-run   # only print the choice and the pip command
    TORCH_INDEX=https://download.pytorch.org/whl/cu128 python scripts/install_torch.py

The choice:
- an NVIDIA GPU (`nvidia-smi` runs and reports the driver's CUDA version): the CUDA build of
  torch for the newest CUDA the driver supports, from PyTorch's index for it
  (download.pytorch.org/whl/cuXYZ). A CPU build already installed is replaced by it.
- no GPU: PyTorch's CPU index, whose small CPU wheels suit Linux, macOS and Windows, when it
  answers; plain pip otherwise (PyPI, or whatever local wheels pip is configured to find).
- a torch already installed is kept, except a CPU build on a machine with a GPU.
"""

import os
import re
import subprocess
import sys
import urllib.request

TORCH_VERSION = os.environ.get("TORCH_VERSION", "2.13.0")
INDEX = "https://download.pytorch.org/whl/"
# The CUDA versions PyTorch publishes builds of this torch for, newest first. A driver runs any
# CUDA up to the version nvidia-smi reports (NVIDIA's minor-version compatibility aside).
CUDA_BUILDS = [(13, 0), (12, 8), (12, 6)]


def installed_torch() -> tuple[str, bool] | None:
    """(version, whether it is a CUDA build) of the torch importable here, or None."""
    probe = "import torch; print(torch.__version__, torch.version.cuda is not None)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    if result.returncode != 0:
        return None
    version, cuda = result.stdout.split()
    return version, cuda == "True"


def driver_cuda() -> tuple[int, int] | None:
    """The newest CUDA version the NVIDIA driver supports, from nvidia-smi; None without a GPU
    (no nvidia-smi, no driver loaded, no device)."""
    try:
        result = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"CUDA Version:\s*(\d+)\.(\d+)", result.stdout)
    if result.returncode != 0 or not found:
        return None
    return int(found[1]), int(found[2])


def cuda_index(driver: tuple[int, int]) -> str | None:
    """PyTorch's index URL of the newest CUDA build this driver runs; None if it runs none."""
    usable = [build for build in CUDA_BUILDS if build <= driver]
    return f"{INDEX}cu{usable[0][0]}{usable[0][1]}" if usable else None


def reachable(url: str, timeout_s: float = 3.0) -> bool:
    try:
        urllib.request.urlopen(url + "/torch/", timeout=timeout_s).close()
        return True
    except OSError:
        return False


def plan(installed: tuple[str, bool] | None, driver: tuple[int, int] | None) -> list[str] | None:
    """The arguments of `pip install` to run, or None to keep the installed torch."""
    requirement = f"torch=={TORCH_VERSION}"
    if installed is None and os.environ.get("TORCH_INDEX"):  # the user's choice
        return [requirement, "--extra-index-url", os.environ["TORCH_INDEX"]]
    if driver is not None and (installed is None or not installed[1]):
        index = cuda_index(driver)
        if index is not None and reachable(index):
            # The local version (+cu128) pins this build, and replaces a CPU build of torch.
            return [f"{requirement}+{index.rsplit('/', 1)[-1]}", "--extra-index-url", index]
        if index is not None:  # PyPI's Linux wheels are CUDA builds too
            print(f"install_torch: {index} does not answer; PyPI's torch (a CUDA build)")
            return [requirement] if installed is None else [requirement, "--force-reinstall"]
        oldest = ".".join(map(str, CUDA_BUILDS[-1]))
        print(
            f"install_torch: the NVIDIA driver supports CUDA {driver[0]}.{driver[1]}, torch "
            f"{TORCH_VERSION} needs {oldest} or newer: update the driver; no CUDA build for now"
        )
    if installed is not None:
        return None
    if sys.platform.startswith("linux") and reachable(INDEX + "cpu"):
        # The CPU build's version is "2.13.0+cpu", which pip ranks above PyPI's "2.13.0".
        return [requirement, "--extra-index-url", INDEX + "cpu"]
    print(f"install_torch: {INDEX}cpu not used; installing {requirement} with plain pip")
    return [requirement]


def main(argv: list[str]) -> int:
    installed, driver = installed_torch(), driver_cuda()
    if driver is not None:
        print(f"install_torch: an NVIDIA GPU, driver for CUDA {driver[0]}.{driver[1]}")
    args = plan(installed, driver)
    if args is None:
        print(f"install_torch: keeping the installed torch {installed[0]}")
        return 0
    pip = [sys.executable, "-m", "pip", "install", *args]
    print("install_torch: pip install", " ".join(args), flush=True)
    return 0 if "--dry-run" in argv else subprocess.call(pip)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

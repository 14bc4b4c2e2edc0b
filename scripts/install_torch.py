"""Install a PyTorch build that suits this machine into the current Python environment.

Run by `make test` and `make lab` before minidp itself is installed, so that pip never pulls a
multi-gigabyte CUDA build onto a laptop or a CPU-only CI machine:

    python scripts/install_torch.py            # keep an existing torch, else install the CPU build
    TORCH_INDEX=https://download.pytorch.org/whl/cu128 python scripts/install_torch.py   # GPU node

Why a script: PyPI's Linux torch wheels are CUDA builds, so a plain `pip install torch` costs
several GB on a machine without a GPU. PyTorch's own CPU index serves small CPU wheels for Linux,
macOS and Windows; we use it when it answers and fall back to plain pip (PyPI, or whatever local
wheels pip is configured to find) when it does not.
"""

import os
import subprocess
import sys
import urllib.request

TORCH_VERSION = os.environ.get("TORCH_VERSION", "2.13.0")
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def installed_torch() -> str | None:
    """The version of torch importable here, or None."""
    probe = [sys.executable, "-c", "import torch; print(torch.__version__)"]
    result = subprocess.run(probe, capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else None


def reachable(url: str, timeout_s: float = 3.0) -> bool:
    try:
        urllib.request.urlopen(url + "/torch/", timeout=timeout_s).close()
        return True
    except OSError:
        return False


def main() -> int:
    version = installed_torch()
    if version is not None:
        print(f"install_torch: keeping the installed torch {version}")
        return 0
    pip = [sys.executable, "-m", "pip", "install", f"torch=={TORCH_VERSION}"]
    index = os.environ.get("TORCH_INDEX", "")
    if index:
        pip += ["--extra-index-url", index]
    elif sys.platform.startswith("linux") and reachable(CPU_INDEX):
        # The CPU build's version is "2.13.0+cpu", which pip ranks above PyPI's "2.13.0".
        pip += ["--extra-index-url", CPU_INDEX]
    else:
        print(
            f"install_torch: {CPU_INDEX} not used; installing torch=={TORCH_VERSION} with plain pip"
        )
    print("install_torch:", " ".join(pip[2:]), flush=True)
    return subprocess.call(pip)


if __name__ == "__main__":
    sys.exit(main())

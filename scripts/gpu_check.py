"""`make gpu-check`: what minidp does on this GPU node, in under 5 minutes, printed and saved.

    make gpu-check                               # installs a CUDA build of torch first if needed
    .venv/bin/python scripts/gpu_check.py [--steps 120] [--out runs/gpu-check]
    .venv/bin/python scripts/gpu_check.py --cpu  # 2 CPU processes, a tiny model: tests this script

It prints the GPUs, the driver, torch, CUDA and NCCL versions; then trains a GPT of GPT-2 small's
shape (12 layers, 768 wide, 1024 tokens of context: 85M parameters with 256 byte tokens) with
bf16 (autocast under DDP, bf16 weights gathered under FSDP) and torch.compile, 16 sequences per
GPU, on every GPU of the node, once per data-parallel variant (our DDP and torch's, our FSDP and
torch's fully_shard), each a torchrun job of its own of at most 70 s; and it prints, side by
side, tokens/s, MFU (minidp.peak) and peak memory: the medians of the steps after the first
fifth (compilation and warm-up). Everything goes to OUT/gpu_check.json too, with each job's
metrics.jsonl beside it.
"""

import argparse
import datetime
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

GPT2_SMALL = ["--n-layer", "12", "--n-head", "12", "--n-embd", "768", "--block-size", "1024"]
TINY = ["--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "32"]


def variants() -> dict[str, list[str]]:
    """The data-parallel variants to compare, as trainer options: DDP and FSDP, ours and torch's."""
    return {
        "minidp DDP": ["--impl", "minidp"],
        "torch DDP": ["--impl", "torch"],
        "minidp FSDP": ["--shard", "fsdp", "--impl", "minidp"],
        "torch FSDP": ["--shard", "fsdp", "--impl", "torch"],
    }


def versions() -> dict:
    """The GPUs and the software stack: what the figures below depend on."""
    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "nccl": None, "driver": None}
    info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    if info["gpus"]:
        info["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
        query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        try:
            info["driver"] = subprocess.run(query, capture_output=True, text=True).stdout.split()[0]
        except (OSError, IndexError):
            pass
    return info


def train(name: str, options: list[str], nproc: int, out: Path, env: dict, limit_s: float) -> dict:
    """One torchrun job of the trainer; its figures, from its metrics.jsonl."""
    folder = out / name.replace(" ", "-")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", str(nproc), "-m", "minidp.train", *options]
    command += ["--out-dir", str(folder), "--no-progress"]
    start = time.monotonic()
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=limit_s)
        last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        failed = [last] if done.returncode != 0 else []
    except subprocess.TimeoutExpired:
        failed = [f"did not finish within {limit_s:.0f} s"]
    result = {"seconds": round(time.monotonic() - start, 1), "error": failed[0] if failed else None}
    if failed:
        return result
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").open()]
    rows = [r for r in rows if "tokens_per_s" in r]
    measured = rows[len(rows) // 5 :]  # past compilation and warm-up

    def median(key: str) -> float | None:
        values = [r[key] for r in measured if r.get(key) is not None]
        return statistics.median(values) if values else None

    result.update(tokens_per_s=median("tokens_per_s"), mfu=median("mfu"))
    result.update(step_ms=1e3 * median("time_s"), steps=len(rows))
    result["peak_memory_gb"] = max((r.get("peak_memory_gb") or 0 for r in rows), default=None)
    return result


def report(info: dict, model: str, results: dict[str, dict], nproc: int) -> None:
    gpus = f"{len(info['gpus'])} x {info['gpus'][0]}" if info["gpus"] else f"{nproc} CPU processes"
    print(f"gpu-check: {gpus}, driver {info['driver']}, torch {info['torch']}, ", end="")
    print(f"CUDA {info['cuda']}, NCCL {info['nccl']}")
    print(f"gpu-check: {model}")
    header = ("variant", 12), ("tokens/s", 12), ("per device", 11), ("MFU", 6), ("peak GB", 8)
    print(" ".join(f"{title:>{width}}" for title, width in header), f"{'step ms':>8}")
    for name, r in results.items():
        if r["error"]:
            print(f"{name:>12}  failed after {r['seconds']} s: {r['error']}")
            continue
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        memory = f"{r['peak_memory_gb']:.1f}" if r["peak_memory_gb"] else "-"
        print(
            f"{name:>12} {r['tokens_per_s']:12,.0f} {r['tokens_per_s'] / nproc:11,.0f} "
            f"{mfu:>6} {memory:>8} {r['step_ms']:8.1f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=120, help="steps per variant (default 120)")
    parser.add_argument("--out", default="runs/gpu-check", help="folder for the results")
    parser.add_argument("--cpu", action="store_true", help="CPU processes, a tiny model")
    args = parser.parse_args(argv)
    info, env = versions(), dict(os.environ)
    if args.cpu:
        nproc, model, per_device = 2, TINY + ["--eval-batches", "1"], 4
        env.update(MINIDP_DEVICE="cpu", OMP_NUM_THREADS="1")
    elif not info["gpus"]:
        print(
            f"gpu-check: torch {info['torch']} sees no CUDA GPU (a CPU build? `make gpu-check` "
            f"installs a CUDA build when nvidia-smi works; see the README, 'GPU node')",
            file=sys.stderr,
        )
        return 1
    else:
        nproc, model, per_device = len(info["gpus"]), GPT2_SMALL + ["--compile"], 16
    options = model + ["--batch-size", str(per_device * nproc), "--steps", str(args.steps)]
    options += ["--warmup-steps", "10", "--eval-every", "0", "--sample-tokens", "0"]
    options += ["--checkpoint-every", "0", "--eval-batches", "2"]
    out = Path(args.out)
    results = {}
    for name, variant in variants().items():  # at most 70 s each: 4 of them within 5 minutes
        results[name] = train(name, options + variant, nproc, out, env, limit_s=70)
    described = " ".join(model) + f", {per_device} sequences per device, {args.steps} steps"
    report(info, described, results, nproc)
    when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    summary = {"date": when, "host": socket.gethostname(), **info, "nproc": nproc}
    summary.update(model=described, variants=results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"gpu-check: written to {out / 'gpu_check.json'}")
    return 0 if all(r["error"] is None for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

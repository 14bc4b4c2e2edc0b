"""The trainer as an operator runs it: torchrun jobs restarted after a worker is killed, two
nodes (two torchrun agents on loopback), SIGTERM and Ctrl-C, a dead worker, `make gpu-check`.

Every job is a subprocess on loopback, with free ports, a timeout, and nothing left running.
"""

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from minidp import checkpoint
from minidp.config import parse_args
from minidp.train import run

pytestmark = pytest.mark.usefixtures("no_orphans")

ROOT = Path(__file__).resolve().parents[1]
TINY = (
    "--n-layer 2 --n-head 2 --n-embd 32 --block-size 32 --batch-size 8 "
    "--eval-every 0 --eval-batches 1 --sample-tokens 8 --no-progress"
).split()
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
# CPU workers of one thread on loopback; TORCH_DISABLE_SHARE_RDZV_TCP_STORE: see the README
# (without it, restarted workers often fail to connect: pytorch issue 135712).
ENV = dict(
    os.environ,
    OMP_NUM_THREADS="1",
    MINIDP_DEVICE="cpu",
    GLOO_SOCKET_IFNAME="lo",
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _checkpoint_step(path: Path) -> int | None:
    try:
        return checkpoint.load(path)["step"]
    except checkpoint.CheckpointError:  # not written yet
        return None


def _rows(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").open()]


def _reference(options: list[str], out_dir: Path) -> dict:
    """The same job, uninterrupted, on 2 workers of `launch`: its final weights."""
    run(parse_args([*options, "--nproc", "2", "--out-dir", str(out_dir)]))
    return checkpoint.load(out_dir / "ckpt.pt")["model"]


def _wait_for_rows(out_dir: Path, proc: subprocess.Popen, rows: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    log = out_dir / "metrics.jsonl"
    while not (log.exists() and len(log.read_text().splitlines()) >= rows):
        assert proc.poll() is None, "the job ended early"
        assert time.monotonic() < deadline, "the job logged nothing"
        time.sleep(0.05)


def _end(proc: subprocess.Popen) -> None:
    """Kill a job left running by a failed test, with its workers."""
    if proc.poll() is None:
        children = psutil.Process(proc.pid).children(recursive=True)
        proc.kill()
        for child in children:
            child.kill()
        psutil.wait_procs(children, timeout=5)
    proc.wait(timeout=10)


# Under fsdp every checkpoint gathers the shards: a shorter job keeps the test's time down.
@pytest.mark.parametrize("shard, steps", [("none", 40), ("fsdp", 16)])
def test_a_restarted_job_ends_as_an_uninterrupted_one(tmp_path, shard, steps):
    options = TINY + ["--steps", str(steps), "--checkpoint-every", "4", "--shard", shard]
    out = tmp_path / "restarted"
    command = TORCHRUN + ["--standalone", "--nproc-per-node", "2", "--max-restarts", "1"]
    command += ["-m", "minidp.train", *options, "--resume", "auto", "--out-dir", str(out)]
    stderr = open(tmp_path / "stderr.txt", "w+")  # noqa: SIM115
    proc = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=stderr)
    seen_steps, seen, killed_at = [], None, None
    try:
        deadline = time.monotonic() + 180
        while proc.poll() is None and time.monotonic() < deadline:
            stamp = (out / "ckpt.pt").stat().st_mtime_ns if (out / "ckpt.pt").exists() else None
            if stamp != seen:  # a new checkpoint: read its step
                seen, step = stamp, _checkpoint_step(out / "ckpt.pt")
                seen_steps.append(step)
                if killed_at is None:  # rank 1 dies mid-run, after the first checkpoint
                    workers = psutil.Process(proc.pid).children()
                    [w for w in workers if w.environ().get("RANK") == "1"][0].kill()
                    killed_at = step
            time.sleep(0.02)
        assert proc.wait(timeout=30) == 0, Path(stderr.name).read_text()[-3000:]
    finally:
        _end(proc)
    assert killed_at is not None and killed_at < steps  # the kill came mid-run
    assert "exitcode: -9" in Path(stderr.name).read_text()  # so torchrun did restart the job
    assert seen_steps == sorted(seen_steps) and seen_steps[-1] == steps  # it never went back
    rows = _rows(out)
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, steps + 1))  # each once
    assert [r["step"] for r in rows if "val_loss" in r] == [steps]
    expected = _reference(options, tmp_path / "straight")
    got = checkpoint.load(out / "ckpt.pt")["model"]
    assert all(torch.equal(got[name], expected[name]) for name in expected)  # bit for bit


def test_two_agents_train_as_two_nodes(tmp_path):
    # Two torchrun agents meet through the c10d rendezvous, as two nodes would. Each node has
    # its own --out-dir, as on a cluster without a shared file system: global rank 0's gets
    # every output, the other nothing.
    options = TINY + ["--steps", "6"]
    command = TORCHRUN + ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d"]
    command += ["--rdzv-endpoint", f"127.0.0.1:{_free_port()}", "--rdzv-id", f"job{os.getpid()}"]
    command += ["--local-addr", "127.0.0.1", "-m", "minidp.train", *options]
    folders = [tmp_path / "node-a", tmp_path / "node-b"]
    nodes = [
        subprocess.Popen(
            [*command, "--out-dir", str(folder)],
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for folder in folders
    ]
    try:
        outputs = [node.communicate(timeout=180) for node in nodes]
    finally:
        for node in nodes:
            _end(node)
    for node, (_, err) in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, err[-3000:]
    written = [f for f in folders if f.exists()]
    assert len(written) == 1  # global rank 0's node; rank 1 created nothing
    assert sorted(p.name for p in written[0].iterdir()) == [
        "ckpt.pt",
        "metrics.jsonl",
        "sample.txt",
    ]
    assert sum("done: 6 steps" in out for out, _ in outputs) == 1
    assert [r["step"] for r in _rows(written[0])] == [1, 2, 3, 4, 5, 6, 6]
    expected = _reference(options, tmp_path / "one-node")
    got = checkpoint.load(written[0] / "ckpt.pt")["model"]
    assert all(torch.equal(got[name], expected[name]) for name in expected)


def _stop_with(signum: int, command: list[str], out: Path, tmp_path: Path) -> tuple[int, str]:
    """Start a long job, send `signum` to the process we started once 3 rows are logged;
    its exit code and stderr."""
    stderr = open(tmp_path / "stderr.txt", "w+")  # noqa: SIM115
    stdout = open(tmp_path / "stdout.txt", "w")  # noqa: SIM115
    proc = subprocess.Popen(command, env=ENV, stdout=stdout, stderr=stderr)
    try:
        _wait_for_rows(out, proc, rows=3)
        proc.send_signal(signum)
        code = proc.wait(timeout=60)
    finally:
        _end(proc)
    return code, Path(stderr.name).read_text()


def _assert_stopped_cleanly(out: Path, err: str, name: str) -> None:
    state = checkpoint.load(out / "ckpt.pt")  # loadable, and written at the last step done
    rows = [r for r in _rows(out) if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, state["step"] + 1))
    line = f"python -m minidp.train: stopped by {name} after step {state['step']} of 100000; "
    assert err.count(line) == 1, err[-3000:]


def test_sigterm_to_torchrun_stops_after_a_step_with_a_checkpoint(tmp_path):
    # Under fsdp, whose checkpoint is a collective: every rank stops at the same step for it.
    # (Ctrl-C, below, stops a run of --shard none.)
    out = tmp_path / "run"
    command = TORCHRUN + ["--standalone", "--nproc-per-node", "2", "-m", "minidp.train"]
    command += [*TINY, "--shard", "fsdp", "--steps", "100000", "--out-dir", str(out)]
    code, err = _stop_with(signal.SIGTERM, command, out, tmp_path)
    assert code != 0
    _assert_stopped_cleanly(out, err, "SIGTERM")


def test_ctrl_c_stops_after_a_step_with_a_checkpoint(tmp_path):
    # SIGINT to the launching process alone: it passes it on to its workers.
    out = tmp_path / "run"
    command = [sys.executable, "-m", "minidp.train", "--nproc", "2", *TINY]
    command += ["--steps", "100000", "--out-dir", str(out)]
    code, err = _stop_with(signal.SIGINT, command, out, tmp_path)
    assert code == 128 + signal.SIGINT
    assert len(err.strip().splitlines()) == 1  # that one line, and nothing else
    _assert_stopped_cleanly(out, err, "SIGINT")


def test_a_killed_worker_stops_the_run_and_keeps_the_checkpoint(tmp_path):
    args = TINY + ["--nproc", "2", "--steps", "100000", "--checkpoint-every", "2"]
    command = [sys.executable, "-m", "minidp.train", *args, "--out-dir", str(tmp_path)]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "ckpt.pt").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        workers = sorted(psutil.Process(proc.pid).children(), key=lambda p: p.create_time())
        assert len(workers) == 2
        workers[1].send_signal(signal.SIGKILL)  # rank 1 dies mid-run
        _, err = proc.communicate(timeout=30)
    finally:
        _end(proc)
    assert proc.returncode != 0
    assert "rank 1 failed" in err and "SIGKILL" in err
    assert checkpoint.load(tmp_path / "ckpt.pt")["step"] >= 2  # the last checkpoint is intact
    assert psutil.wait_procs(workers, timeout=5)[1] == []  # and no worker is left running


def test_gpu_check_runs_its_comparison_on_cpus(tmp_path, capsys, monkeypatch):
    # No GPU here: --cpu runs the same script on 2 CPU processes with a tiny model.
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    for key in ("OMP_NUM_THREADS", "GLOO_SOCKET_IFNAME"):  # the jobs inherit these
        monkeypatch.setenv(key, ENV[key])
    assert gpu_check.main(["--cpu", "--steps", "4", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert {"torch", "cuda", "nccl", "driver", "gpus", "date"} <= summary.keys()
    assert set(summary["variants"]) == {"minidp DDP", "torch DDP", "minidp FSDP", "torch FSDP"}
    for name, result in summary["variants"].items():
        assert result["error"] is None and result["tokens_per_s"] > 0, name
        assert f"{name:>12} " in printed

"""The trainer: equal results at any world size, exact resume, faults, bad input, torchrun."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch

from minidp import checkpoint
from minidp.train import TrainConfig, lr_at, main, run


def tiny(out_dir, **overrides) -> TrainConfig:
    """A model small enough to train a few steps in about a second."""
    base = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=8, steps=6, lr=1e-3,
                min_lr=1e-4, warmup_steps=2, eval_every=0, eval_batches=1, sample_tokens=8,
                progress=False, out_dir=str(out_dir))  # fmt: skip
    return TrainConfig(**{**base, **overrides})


def final_weights(config: TrainConfig) -> dict:
    return checkpoint.load(os.path.join(config.out_dir, "ckpt.pt"))["model"]


def max_difference(a: dict, b: dict) -> float:
    return max((a[name] - b[name]).abs().max().item() for name in a)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The reference: one process, the whole batch, no accumulation."""
    config = tiny(tmp_path_factory.mktemp("one"))
    return run(config), final_weights(config)


def test_one_process_run_returns_metrics(one_process):
    metrics, _ = one_process
    assert [row["step"] for row in metrics["log"]] == [1, 2, 3, 4, 5, 6]
    assert {"loss", "lr", "tokens_per_s", "mfu", "time_s"} <= metrics["log"][0].keys()
    assert metrics["val"][-1]["step"] == 6
    assert metrics["log"][-1]["loss"] < metrics["log"][0]["loss"]  # it learns
    assert isinstance(metrics["sample_before"], str) and isinstance(metrics["sample"], str)
    assert metrics["tokens_per_s"] > 0


@pytest.mark.parametrize(
    "overrides",
    [
        {"nproc": 2},
        {"nproc": 2, "ddp": "torch"},
        {"nproc": 2, "zero1": True},
        {"nproc": 2, "grad_accum": 2},
        {"nproc": 1, "grad_accum": 4},
    ],
    ids=["2-ranks-minidp", "2-ranks-torch", "2-ranks-zero1", "2-ranks-accum", "1-rank-accum"],
)
def test_same_parameters_at_any_world_size(one_process, tmp_path, overrides):
    config = tiny(tmp_path, **overrides)
    metrics = run(config)
    assert metrics["world_size"] == config.nproc
    # float32: only the order of summation differs, so the difference is rounding.
    assert max_difference(final_weights(config), one_process[1]) <= 1e-5


def test_resume_continues_exactly(tmp_path):
    # Dropout and accumulation too: their randomness and data must continue where they were.
    options = dict(nproc=2, zero1=True, dropout=0.1, grad_accum=2)
    straight = tiny(tmp_path / "straight", **options)
    run(straight)
    interrupted = tiny(tmp_path / "interrupted", stop_after=3, **options)
    run(interrupted)
    assert checkpoint.load(os.path.join(interrupted.out_dir, "ckpt.pt"))["step"] == 3
    run(dataclasses.replace(interrupted, stop_after=0, resume="yes"))
    resumed, expected = final_weights(interrupted), final_weights(straight)
    assert all(torch.equal(resumed[name], expected[name]) for name in expected)


def test_resume_at_another_world_size(one_process, tmp_path):
    interrupted = tiny(tmp_path, nproc=2, stop_after=3)
    run(interrupted)
    run(dataclasses.replace(interrupted, nproc=1, stop_after=0, resume="yes"))
    assert max_difference(final_weights(interrupted), one_process[1]) <= 1e-5


def test_a_new_run_starts_a_new_log_and_a_resumed_one_continues_it(tmp_path):
    config = tiny(tmp_path, steps=2)
    run(config)
    run(config)
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").open()]
    assert steps == [1, 2, 2]  # two steps and the validation at step 2, once
    run(dataclasses.replace(config, steps=3, resume="yes"))
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").open()]
    assert steps == [1, 2, 2, 3, 3]


def test_learning_rate_schedule():
    c = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=10, steps=110)
    assert lr_at(0, c) == pytest.approx(0.1)  # warmup from lr / warmup_steps
    assert lr_at(9, c) == pytest.approx(1.0)
    assert lr_at(60, c) == pytest.approx(0.55)  # half way down the cosine
    assert lr_at(110, c) == pytest.approx(0.1)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--nproc", "2", "--batch-size", "5"], "does not divide among 2 ranks"),
        (["--grad-accum", "3", "--batch-size", "8"], "does not divide"),
        (["--data", "/no/such/file.txt"], "no such file"),
        (["--data", __file__, "--block-size", "4096"], "hold too few blocks of --block-size 4096"),
        (["--nproc", "512"], "512 CPU workers"),
        (["--ddp", "mpi"], "invalid choice: 'mpi'"),
        (["--resume"], "no checkpoint"),
        (["--n-embd", "30", "--n-head", "4"], "not a multiple"),
        (["--no-such-option"], "unrecognized arguments"),
        (["--steps", "many"], "invalid int value"),
    ],
)
def test_bad_configuration_is_one_line_before_any_worker(tmp_path, capsys, args, message):
    start = time.monotonic()
    with pytest.raises(SystemExit) as exit_info:
        main(args + ["--out-dir", str(tmp_path)])
    err = capsys.readouterr().err + str(exit_info.value.code)
    assert exit_info.value.code != 0
    assert message in err
    assert "[rank" not in err and "Traceback" not in err  # no worker was started
    assert time.monotonic() - start < 5


def test_bad_checkpoints_are_refused_clearly(tmp_path, capsys):
    config = tiny(tmp_path, steps=2)
    run(config)
    path = tmp_path / "ckpt.pt"
    good = path.read_bytes()
    cases = {
        "truncated": (good[: len(good) // 2], "not a readable checkpoint"),
        "garbage": (b"\x00not a checkpoint" * 100, "not a readable checkpoint"),
    }
    for content, message in cases.values():
        path.write_bytes(content)
        with pytest.raises(checkpoint.CheckpointError, match=message):
            run(dataclasses.replace(config, resume="yes"))
    # A pickle that would run code when loaded is refused, not executed.
    torch.save({"format": 1, "payload": _Evil()}, path)
    with pytest.raises(checkpoint.CheckpointError, match="not a readable checkpoint"):
        run(dataclasses.replace(config, resume="yes"))
    path.write_bytes(good)
    with pytest.raises(SystemExit) as exit_info:
        main(["--resume", "--out-dir", str(tmp_path), "--n-layer", "3", "--n-head", "2"])
    assert "written for a different run: n_layer=2, now 3" in str(exit_info.value.code)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "minidp.train", *args]


TINY_CLI = ["--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "32",
            "--batch-size", "8", "--eval-every", "0", "--eval-batches", "1",
            "--sample-tokens", "8", "--no-progress"]  # fmt: skip


def test_a_killed_worker_stops_the_run_and_keeps_the_checkpoint(tmp_path):
    args = TINY_CLI + ["--nproc", "2", "--steps", "100000", "--checkpoint-every", "2"]
    proc = subprocess.Popen(_cli(*args, "--out-dir", str(tmp_path)), stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "ckpt.pt").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        workers = sorted(psutil.Process(proc.pid).children(), key=lambda p: p.create_time())
        assert len(workers) == 2
        workers[1].send_signal(signal.SIGKILL)  # rank 1 dies mid-run
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert "rank 1 failed" in err and "SIGKILL" in err
    assert checkpoint.load(tmp_path / "ckpt.pt")["step"] >= 2  # the last checkpoint is intact
    assert psutil.wait_procs(workers, timeout=5)[1] == []  # and no worker is left running


def test_torchrun_launches_two_processes(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "minidp.train", *TINY_CLI, "--steps", "3", "--out-dir", str(tmp_path)]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", MINIDP_DEVICE="cpu")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert checkpoint.load(tmp_path / "ckpt.pt")["step"] == 3
    assert "done: 3 steps" in out.stdout


def test_help_explains_every_option():
    out = subprocess.run(_cli("--help"), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for f in dataclasses.fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in out.stdout

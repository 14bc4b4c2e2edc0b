"""The trainer in one process or in workers from `launch`: the same gradients and parameters at
any world size, exact resume (`--resume yes|auto`), its log, and one line for every bad input.
Jobs under torchrun (restarts, two nodes, signals) are in test_train_torchrun.py."""

import dataclasses
import functools
import json
import math
import os
import subprocess
import sys
import time

import pytest
import torch

from minidp import checkpoint, launch
from minidp.data import load_tokens, split
from minidp.environment import read_env
from minidp.loader import DeviceBatches
from minidp.train import TrainConfig, build, lr_at, main, run, train_step


def tiny(out_dir, **overrides) -> TrainConfig:
    """A model small enough to train a few steps in about a second."""
    model = dict(n_layer=2, n_head=2, n_embd=32, block_size=32)
    schedule = dict(batch_size=8, steps=6, lr=1e-3, min_lr=1e-4, warmup_steps=2)
    output = dict(eval_every=0, eval_batches=1, sample_tokens=8, progress=False)
    return TrainConfig(**{**model, **schedule, **output, "out_dir": str(out_dir), **overrides})


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


SHARDED = {  # every --shard and --impl, at 2 ranks
    "2-ranks-minidp": {"nproc": 2},
    "2-ranks-torch": {"nproc": 2, "impl": "torch"},
    "2-ranks-zero1": {"nproc": 2, "shard": "zero1"},
    "2-ranks-zero1-torch": {"nproc": 2, "shard": "zero1", "impl": "torch"},
    "2-ranks-fsdp": {"nproc": 2, "shard": "fsdp"},
    "2-ranks-fsdp-torch": {"nproc": 2, "shard": "fsdp", "impl": "torch"},
}


@pytest.mark.parametrize("overrides", SHARDED.values(), ids=SHARDED.keys())
def test_same_parameters_at_any_world_size(one_process, tmp_path, overrides):
    # End to end, with AdamW: blind to the gradient's scale (the gradient test below is not).
    config = tiny(tmp_path, **overrides)
    metrics = run(config)
    assert metrics["world_size"] == config.nproc
    assert metrics["params"] == one_process[0]["params"]  # the whole model's, not a shard's
    # float32: only the order of summation differs, so the difference is rounding.
    assert max_difference(final_weights(config), one_process[1]) <= 1e-5


def _gradients(c: TrainConfig, steps: int) -> list[dict[str, torch.Tensor]]:
    """In each worker: the trainer's own build and train_step, with plain SGD at learning rate
    1 as the optimizer, so that each step's update is minus the gradient it stepped with,
    wherever that gradient lives (whole, in ZeRO's or FSDP's shards): read from the whole
    parameters before and after each step."""
    env = read_env()
    sharded = build(c, env, optimizer=(torch.optim.SGD, {"lr": 1.0}))
    batches = DeviceBatches(split(load_tokens())[0], c.seed, c.batch_size, c.block_size, env)
    whole = lambda: {name: t.clone() for name, t in sharded.full_state()[0].items()}  # noqa: E731
    before, steps_taken = whole(), []  # copies: unsharded, the state is the parameters' own
    for step in range(steps):
        train_step(step, 1.0, sharded, batches.get(step), c, env)
        after = whole()
        steps_taken.append({name: before[name] - after[name] for name in before})
        before = after
    return steps_taken


def _assert_same_gradients(per_rank: list, reference: list, rtol=1e-4, atol=1e-6) -> None:
    for steps in per_rank:  # every replica stepped with the same averaged gradient
        for got, want in zip(steps, reference, strict=True):
            for name in want:
                torch.testing.assert_close(got[name], want[name], rtol=rtol, atol=atol)


# No weight decay: the update is then the gradient alone.
EXACT = dict(grad_clip=0.0, weight_decay=0.0)


@pytest.fixture(scope="module")
def one_process_gradients(tmp_path_factory):
    """The reference: one process, the whole batch, no accumulation, no clipping."""
    steps = launch(_gradients, 1, tiny(tmp_path_factory.mktemp("g"), **EXACT), 3)[0]
    assert all(g.abs().max() > 0 for step in steps for g in step.values())  # each one moved
    return steps


ACCUMULATING = {
    **SHARDED,
    "2-ranks-accum": {"nproc": 2, "grad_accum": 2},
    "1-rank-accum": {"nproc": 1, "grad_accum": 4},
    "2-ranks-zero1-accum": {"nproc": 2, "shard": "zero1", "grad_accum": 2},
    "2-ranks-fsdp-accum": {"nproc": 2, "shard": "fsdp", "grad_accum": 2},
    "2-ranks-fsdp-torch-accum": {"nproc": 2, "shard": "fsdp", "impl": "torch", "grad_accum": 2},
}


@pytest.mark.parametrize("overrides", ACCUMULATING.values(), ids=ACCUMULATING.keys())
def test_same_gradients_at_any_world_size(one_process_gradients, tmp_path, overrides):
    # The gradient each rank steps with must be the mean over the whole global batch: a sum over
    # ranks (2x), a missing or doubled division by grad_accum (2x, 4x, 0.5x), a rank with the
    # wrong rows, or a shard that missed its reduction would all show here, where AdamW's
    # updates would hide the scale.
    c = tiny(tmp_path, **EXACT, **overrides)  # clipping would rescale them too
    per_rank = launch(_gradients, c.nproc, c, 3, timeout=60)
    _assert_same_gradients(per_rank, one_process_gradients)


CLIPPED = dict(grad_clip=0.05, weight_decay=0.0)  # below every step's norm: always clipping


@pytest.fixture(scope="module")
def one_process_clipped(tmp_path_factory):
    return launch(_gradients, 1, tiny(tmp_path_factory.mktemp("c"), **CLIPPED), 3)[0]


@pytest.mark.parametrize(
    "overrides",
    [SHARDED[k] for k in ("2-ranks-zero1", "2-ranks-zero1-torch", "2-ranks-fsdp")]
    + [ACCUMULATING["2-ranks-fsdp-torch-accum"]],
    ids=["zero1", "zero1-torch", "fsdp", "fsdp-torch-accum"],
)
def test_clipping_sees_the_whole_gradient(one_process_clipped, tmp_path, overrides):
    # Each rank holds a shard of the averaged gradient: clipped by its shard's norm, or by a sum
    # of shard norms counted twice, the update would differ from one process's.
    c = tiny(tmp_path, **CLIPPED, **overrides)
    _assert_same_gradients(launch(_gradients, c.nproc, c, 3, timeout=60), one_process_clipped)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"shard": "fsdp"}, {"shard": "fsdp", "impl": "torch"}],
    ids=["autocast", "fsdp", "fsdp-torch"],
)
def test_bf16_compute_is_close_to_float32(one_process_gradients, tmp_path, overrides):
    # bfloat16 keeps 8 bits of mantissa: the gradient within a few percent, as a whole.
    c = tiny(tmp_path, **EXACT, nproc=2, compute_dtype="bf16", **overrides)
    for steps in launch(_gradients, 2, c, 3, timeout=60):
        for got, want in zip(steps, one_process_gradients, strict=True):
            got, want = (torch.cat([t[n].reshape(-1) for n in want]) for t in (got, want))
            assert got.dtype == torch.float32  # the master weights (and so their updates)
            assert (got - want).norm() / want.norm() < 0.05


@pytest.mark.parametrize("shard", ["zero1", "fsdp", "fsdp-torch"])
def test_resume_continues_exactly(tmp_path, shard):
    # Dropout and accumulation too: their randomness and data must continue where they were.
    impl = "torch" if shard.endswith("-torch") else "minidp"
    options = dict(nproc=2, shard=shard.removesuffix("-torch"), impl=impl, dropout=0.1)
    options.update(grad_accum=2)
    straight = tiny(tmp_path / "straight", **options)
    run(straight)
    interrupted = tiny(tmp_path / "interrupted", stop_after=3, **options)
    run(interrupted)
    assert checkpoint.load(os.path.join(interrupted.out_dir, "ckpt.pt"))["step"] == 3
    run(dataclasses.replace(interrupted, stop_after=0, resume="auto"))
    resumed, expected = final_weights(interrupted), final_weights(straight)
    assert all(torch.equal(resumed[name], expected[name]) for name in expected)


def test_resume_in_any_shard_mode_at_any_world_size(one_process, tmp_path):
    # Checkpoints are whole: fsdp at 2 ranks, then torch's fsdp, then none at 1, zero1 at 2.
    legs = [
        dict(nproc=2, shard="fsdp", stop_after=2),
        dict(nproc=2, shard="fsdp", impl="torch", stop_after=3),
        dict(nproc=1, shard="none", stop_after=4),
        dict(nproc=2, shard="zero1", stop_after=0),
    ]
    for i, leg in enumerate(legs):
        run(tiny(tmp_path, **leg, resume="yes" if i else "no"))
        assert checkpoint.load(tmp_path / "ckpt.pt")["step"] == (leg["stop_after"] or 6)
    assert max_difference(final_weights(tiny(tmp_path)), one_process[1]) <= 1e-5
    expected = checkpoint.load(os.path.join(one_process[0]["config"]["out_dir"], "ckpt.pt"))
    got = checkpoint.load(tmp_path / "ckpt.pt")["optimizer"]
    for i, state in expected["optimizer"]["state"].items():  # AdamW's moments, whole
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(got["state"][i][key], state[key], rtol=1e-3, atol=1e-7)


def test_resume_at_another_world_size(one_process, tmp_path):
    interrupted = tiny(tmp_path, nproc=2, stop_after=3)
    run(interrupted)
    run(dataclasses.replace(interrupted, nproc=1, stop_after=0, resume="yes"))
    assert max_difference(final_weights(interrupted), one_process[1]) <= 1e-5


def test_a_new_run_starts_a_new_log_and_a_resumed_one_continues_it(tmp_path):
    config = tiny(tmp_path, steps=2)
    run(config)
    run(config)
    assert _logged_steps(tmp_path) == [1, 2, 2]  # two steps and the validation at step 2, once
    run(dataclasses.replace(config, steps=3, resume="yes"))
    assert _logged_steps(tmp_path) == [1, 2, 2, 3, 3]


def _logged_steps(out_dir) -> list[int]:
    return [json.loads(line)["step"] for line in (out_dir / "metrics.jsonl").open()]


def test_a_resume_drops_the_rows_logged_after_its_checkpoint(tmp_path):
    config = tiny(tmp_path, steps=8, checkpoint_every=3, eval_every=2, stop_after=6)
    run(config)
    assert checkpoint.load(tmp_path / "ckpt.pt")["step"] == 6
    # As if the run had gone on to step 7 and died before its next checkpoint, mid-line.
    with open(tmp_path / "metrics.jsonl", "a") as log:
        log.write('{"step": 7, "loss": -1.0}\n{"step": 8, "lo')
    run(dataclasses.replace(config, stop_after=0, resume="auto"))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 9))  # each step once
    assert [r["step"] for r in rows if "val_loss" in r] == [2, 4, 6, 8]
    assert all(r.get("loss") != -1.0 for r in rows)  # the dead run's row is gone


def test_learning_rate_schedule():
    c = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=10, steps=110)
    assert lr_at(0, c) == pytest.approx(0.1)  # warmup from lr / warmup_steps
    assert lr_at(9, c) == pytest.approx(1.0)
    assert lr_at(60, c) == pytest.approx(0.55)  # half way down the cosine
    assert lr_at(110, c) == pytest.approx(0.1)


def _one_line(capsys, args: list[str]) -> str:
    """main(args) must exit non-zero, fast, with one line and no worker started."""
    start = time.monotonic()
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code not in (0, None)
    code = exit_info.value.code  # sys.exit(message) prints it; argparse prints, then exits 2
    err = (capsys.readouterr().err + (code if isinstance(code, str) else "")).strip()
    assert "[rank" not in err and "Traceback" not in err  # no worker was started
    assert len(err.splitlines()) == 1, err
    assert time.monotonic() - start < 5
    return err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--nproc", "2", "--batch-size", "5"], "does not divide among 2 ranks"),
        (["--grad-accum", "3", "--batch-size", "8"], "does not divide"),
        (["--data", "/no/such/file.txt"], "no such file"),
        (["--data", __file__, "--block-size", "4096"], "hold too few blocks of --block-size 4096"),
        (["--nproc", "512"], "512 CPU workers"),
        (["--impl", "mpi"], "invalid choice: 'mpi'"),
        (["--shard", "zero3"], "invalid choice: 'zero3'"),
        (["--zero1"], "--zero1 is now --shard zero1"),
        (["--ddp", "torch"], "--ddp is now --impl"),
        (["--ddp=torch"], "--ddp is now --impl"),
        (["--no-bf16"], "--no-bf16 is now --compute-dtype fp32"),
        (["--compute-dtype", "fp16"], "fp16 needs loss scaling"),
        (["--resume"], "no checkpoint"),
        (["--resume", "maybe"], "invalid choice: 'maybe'"),
        (["--n-embd", "30", "--n-head", "4"], "not a multiple"),
        (["--no-such-option"], "unrecognized arguments"),
        (["--steps", "many"], "invalid int value"),
        (["--stop-after", "-1"], "--stop-after must be >= 0, not -1"),
        (["--lr", "nan"], "--lr must be > 0, not nan"),
        (["--dropout", "1"], "--dropout must be >= 0 and < 1, not 1.0"),
        (["--timeout-s", "0"], "--timeout-s must be > 0, not 0.0"),
        (["--seed", str(2**40)], "--seed must be >= 0 and < 4294967296"),
    ],
)
def test_bad_configuration_is_one_line_before_any_worker(tmp_path, capsys, args, message):
    assert message in _one_line(capsys, args + ["--out-dir", str(tmp_path)])


def test_torchs_fsdp_on_a_torch_without_it_is_one_line(tmp_path, capsys, monkeypatch):
    from torch.distributed import fsdp

    monkeypatch.delattr(fsdp, "fully_shard")  # as on torch 2.4 and 2.5
    err = _one_line(capsys, ["--shard", "fsdp", "--impl", "torch", "--out-dir", str(tmp_path)])
    assert "--shard fsdp --impl torch needs torch >= 2.6" in err


NUMERIC = [f for f in dataclasses.fields(TrainConfig) if f.type in (int, float)]


@pytest.mark.parametrize("field", NUMERIC, ids=[f.name for f in NUMERIC])
def test_every_numeric_option_is_range_checked(tmp_path, capsys, field):
    m = field.metadata
    low = m["at_least"] if m["at_least"] is not None else m["above"]
    assert low is not None, f"{field.name} has no lower bound"
    flag = "--" + field.name.replace("_", "-")
    too_small = str(field.type(low) - 1) if field.type is int else str(low - 0.5)
    assert f"{flag} must be" in _one_line(capsys, [flag, too_small, "--out-dir", str(tmp_path)])
    if field.type is float:  # infinity passes a lower bound, not the finite check
        assert f"{flag} must be" in _one_line(capsys, [flag, "inf", "--out-dir", str(tmp_path)])


def test_bad_files_are_one_line(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    assert "is empty" in _one_line(capsys, ["--data", str(empty), "--out-dir", str(tmp_path)])
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    err = _one_line(capsys, ["--out-dir", str(blocked / "runs")])
    assert f"--out-dir {blocked / 'runs'}: cannot write there" in err


def test_a_job_started_the_wrong_way_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RANK", "1")  # RANK without torchrun's MASTER_ADDR
    err = _one_line(capsys, ["--out-dir", str(tmp_path)])
    assert "RANK is set but MASTER_ADDR is not" in err and "torchrun" in err
    monkeypatch.delenv("RANK")
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "4")  # srun's copies, without torchrun
    err = _one_line(capsys, ["--out-dir", str(tmp_path)])
    assert "srun started 4 copies of this command without torchrun" in err


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
    err = _one_line(capsys, ["--resume", "--out-dir", str(tmp_path), *TINY_CLI, "--n-layer", "3"])
    assert "written for a different run: n_layer=2, now 3" in err
    err = _one_line(capsys, ["--resume", "auto", "--out-dir", str(tmp_path), "--seed", "7"])
    assert "written for a different run" in err  # auto resumes this run's only


def _tampered(state: dict, how: str) -> dict:
    state = dict(state, model=dict(state["model"]), optimizer=dict(state["optimizer"]))
    if how == "config not a dict":
        state["config"] = "n_layer=2"
    elif how == "no optimizer":
        del state["optimizer"]
    elif how == "negative step":
        state["step"] = -5
    elif how == "a weight of the wrong shape":
        state["model"]["blocks.0.mlp.fc.weight"] = torch.zeros(3, 3)
    elif how == "a missing weight":
        del state["model"]["ln_f.weight"]
    elif how == "optimizer state of the wrong shape":
        state["optimizer"]["state"] = {0: {"step": torch.tensor(2.0), "exp_avg": torch.zeros(7)}}
    elif how == "too few optimizer parameters":
        groups = state["optimizer"]["param_groups"]
        state["optimizer"]["param_groups"] = [dict(groups[0], params=[0])]
    return state


TAMPERED = {
    "config not a dict": "is damaged: config is a str",
    "no optimizer": "is damaged: no optimizer",
    "negative step": "is damaged: step -5",
    "a weight of the wrong shape": "does not fit the model: blocks.0.mlp.fc.weight is (3, 3)",
    "a missing weight": "does not fit the model: parameters ln_f.weight differ",
    "optimizer state of the wrong shape": "does not fit the optimizer: exp_avg of parameter 0",
    "too few optimizer parameters": "does not fit the optimizer: 1 parameters, not",
}


def test_a_tampered_but_loadable_checkpoint_is_one_line(tmp_path, capsys):
    config = tiny(tmp_path, steps=2)
    run(config)
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    for how, message in TAMPERED.items():
        torch.save(_tampered(state, how), tmp_path / "ckpt.pt")
        err = _one_line(capsys, ["--resume", "--out-dir", str(tmp_path), *TINY_CLI])
        assert message in err, how


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


TINY_CLI = (
    "--n-layer 2 --n-head 2 --n-embd 32 --block-size 32 --batch-size 8 "
    "--eval-every 0 --eval-batches 1 --sample-tokens 8 --no-progress"
).split()


def test_peak_tflops_gives_mfu_on_any_device(tmp_path):
    metrics = run(tiny(tmp_path, steps=2, peak_tflops=0.5))
    row, params = metrics["log"][-1], metrics["params"]
    flops_per_token = 6 * (params - 32 * 32) + 12 * 2 * 32 * 32  # non-embedding N, as PaLM
    expected = flops_per_token * row["tokens_per_s"] / 0.5e12
    assert row["mfu"] == pytest.approx(expected, rel=1e-6)
    assert not math.isnan(row["mfu"])


def test_torch_ddp_compiles_with_buckets_below_one_mb(tmp_path, monkeypatch):
    # Dynamo's DDPOptimizer, which split torch's compiled DDP at buckets, refused caps below its
    # 1 MB first bucket. It fails while tracing, before any code is generated: the eager
    # backend finds it in seconds where inductor would compile for a minute.
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    c = tiny(tmp_path, steps=2, impl="torch", compile=True, bucket_cap_mb=0.5, sample_tokens=0)
    assert len(run(c)["log"]) == 2


def _graph_breaks(c: TrainConfig) -> dict:
    """In each worker: the trainer's build and 3 steps; where torch.compile broke its graphs."""
    from torch._dynamo.utils import counters

    env = read_env()
    sharded = build(c, env)
    batches = DeviceBatches(split(load_tokens())[0], c.seed, c.batch_size, c.block_size, env)
    for step in range(3):
        train_step(step, c.lr, sharded, batches.get(step), c, env)
    return dict(counters["graph_break"])


@pytest.mark.parametrize("impl", ["minidp", "torch"])
def test_fsdp_compiles_without_tracing_its_hooks(tmp_path, monkeypatch, impl):
    # A block is an FSDP unit, whose hooks gather and swap its parameters: compiled whole, our
    # block had dynamo trace those hooks and break its graph at each collective and wait. So
    # --compile compiles each block's parts. The eager backend traces as inductor does, in
    # seconds (inductor runs too: tried by hand).
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    c = tiny(tmp_path, nproc=2, shard="fsdp", impl=impl, compile=True)
    assert launch(_graph_breaks, 2, c, timeout=120) == [{}, {}]


def test_help_explains_every_option():
    out = subprocess.run(
        [sys.executable, "-m", "minidp.train", "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0
    for f in dataclasses.fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in out.stdout

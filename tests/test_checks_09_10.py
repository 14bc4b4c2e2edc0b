"""The checkers of 09.token_loss_scale and 10.train_step: each accepts the notebook's own solution
and other right answers, gives each typical wrong answer its own hint, says "not attempted" for a
stub, and judges against a reference that is itself checked here against one process.

The wrong answers are written here the way a learner would write them, not taken from the
checkers, so a checker whose mistake list drifts from what learners really do fails here.
"""

import contextlib

import pytest
import torch
import torch.distributed as dist
from checking import assert_hint, stub, verdict
from solutions import notebook_solutions

import minidp
from minidp.config import TrainConfig
from minidp.course import checks
from minidp.course.checks import (
    CHECKERS,
    CORRECT,
    NOT_ATTEMPTED,
    nb09_gradient_accumulation,
    transcript,
)
from minidp.course.checks import nb10_training_a_gpt as nb10
from minidp.course.checks.nb08_overlap_and_buckets import tiny_gpt
from minidp.environment import DistEnv
from minidp.sharding import Sharded
from minidp.train import train_step

pytestmark = pytest.mark.usefixtures("no_orphans")

SOLUTIONS = {**notebook_solutions("09"), **notebook_solutions("10")}
NEW = ["09.token_loss_scale", "10.train_step"]


@pytest.mark.parametrize("exercise", NEW)
def test_the_notebooks_solution_is_correct_and_a_stub_is_not_attempted(exercise):
    assert verdict(exercise, SOLUTIONS[exercise]) == (CORRECT, "")
    assert verdict(exercise, stub)[0] == NOT_ATTEMPTED


# ---- 09.token_loss_scale: the factor of micro-batch j's mean loss on rank `rank`


def test_the_reference_scale_gives_every_valid_target_the_same_weight():
    # Per-target losses of K = 3 ranks x M = 2 micro-batches with unequal numbers of valid
    # targets: DDP's mean over ranks of the scaled micro-batch means is the mean over all targets.
    g = torch.Generator().manual_seed(0)
    counts = torch.tensor([[5, 1], [2, 9], [7, 3]])
    losses = [[torch.rand(int(v), generator=g, dtype=torch.float64) for v in row] for row in counts]
    scale = nb09_gradient_accumulation._token_scale
    ddp_mean = sum(
        scale(counts, k, j) * losses[k][j].mean() for k in range(3) for j in range(2)
    ) / len(counts)
    every_target = torch.cat([t for row in losses for t in row])
    torch.testing.assert_close(ddp_mean, every_target.mean())


def scale_by_mean_count(counts, rank, j):  # V / K: the mean count per rank
    return float(counts[rank, j]) / (float(counts.sum()) / counts.shape[0])


def scale_for_sum_loss(counts, rank, j):  # the sum of the micro-batch's losses times K / V,
    K, V = len(counts), counts.sum().item()  # written as a factor of its mean
    return counts[rank, j].item() * K / V


@pytest.mark.parametrize("fn", [scale_by_mean_count, scale_for_sum_loss])
def test_token_loss_scale_accepts_other_right_answers(fn):
    assert verdict("09.token_loss_scale", fn) == (CORRECT, "")


@pytest.mark.parametrize(
    ("fn", "words"),
    [
        (lambda counts, rank, j: 1 / counts.shape[1], "bug found in 2024"),
        (lambda counts, rank, j: 1 / (counts.shape[0] * counts.shape[1]), "do not divide by K"),
        (lambda counts, rank, j: counts[rank, j] / counts[rank].sum(), "this rank's own count"),
        (
            lambda counts, rank, j: len(counts) * counts[rank, j] / counts[rank].sum(),
            "this rank's own count",
        ),
        (lambda counts, rank, j: counts[rank, j] / counts.sum(), "K times too small"),
        (
            lambda counts, rank, j: len(counts) * counts[rank, j] / counts.sum() / counts.shape[1],
            "do not divide by M as well",
        ),
        (
            lambda counts, rank, j: (
                len(counts) * counts[rank, j] / counts[:, j].sum() / counts.shape[1]
            ),
            "its own count over the ranks",
        ),
        (lambda counts, rank, j: counts[rank, j], "sum of the micro-batch's losses"),
        (lambda counts, rank, j: 1, "needs a factor"),
        (lambda counts, rank, j: counts[rank, j] // counts.sum(), "compare your result"),
    ],
)
def test_token_loss_scale_recognises_mistakes(fn, words):
    assert_hint("09.token_loss_scale", fn, words)


# ---- 10.train_step: one optimizer step of the trainer, on 2 processes


def train_step_zero_first(model, optimizer, x, y, grad_accum, grad_clip):
    """Zero before the first backward instead of after the step; strided micro-batches."""
    optimizer.zero_grad()
    losses = []
    for i in range(grad_accum):
        xm, ym = x[i::grad_accum], y[i::grad_accum]  # any split into equal micro-batches will do
        sync = contextlib.nullcontext() if i == grad_accum - 1 else model.no_sync()
        with sync:
            loss = model(xm, ym)[1]
            (loss / grad_accum).backward()
        losses.append(loss.detach())
    torch.nn.utils.clip_grad_norm_(model.module.parameters(), grad_clip)
    optimizer.step()
    return torch.stack(losses).mean()


def step_with(scale=True, clip="end", zero="end", sync="last", step="end", returns="mean"):
    """The step written with one of the usual mistakes."""

    def train_step(model, optimizer, x, y, grad_accum, grad_clip):
        def clip_now():
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)

        losses = []
        for i, (xm, ym) in enumerate(zip(x.chunk(grad_accum), y.chunk(grad_accum), strict=True)):
            last = i == grad_accum - 1
            if zero == "each":
                optimizer.zero_grad()
            if clip == "before last" and last:
                clip_now()
            quiet = sync == "never" or (sync == "last" and not last)
            with model.no_sync() if quiet else contextlib.nullcontext():
                loss = model(xm, ym)[1]
                (loss / grad_accum if scale else loss).backward()
            losses.append(loss.item())
            if clip == "each":
                clip_now()
            if step == "each":
                optimizer.step()
                optimizer.zero_grad()
        if clip == "end":
            clip_now()
        if zero == "before step":
            optimizer.zero_grad()
        if step == "end":
            optimizer.step()
        if clip == "after step":
            clip_now()  # the step has used the gradient unclipped
        if zero == "end":
            optimizer.zero_grad()
        return {"mean": sum(losses) / len(losses), "sum": sum(losses), "last": losses[-1]}.get(
            returns
        )

    return train_step


def test_train_step_accepts_another_right_answer():
    assert verdict("10.train_step", train_step_zero_first) == (CORRECT, "")


@pytest.mark.parametrize(
    ("fn", "words"),
    [
        (step_with(scale=False), "grad_accum times too large"),
        (step_with(sync="always"), "all-reduced 3 times"),
        (step_with(sync="never"), "replicas differ"),
        (step_with(clip="each"), "clipped after every backward"),
        (step_with(clip="before last"), "clipped before the last backward"),
        (step_with(clip="never"), "not clipped"),
        (step_with(clip="after step"), "not clipped"),
        (step_with(zero="never"), "first step's gradients"),
        (step_with(zero="each"), "only the last micro-step counted"),
        (step_with(zero="before step"), "nothing moved"),
        (step_with(step="each", sync="always"), "stepped after every micro-step"),
        (step_with(step="each", sync="always", scale=False), "stepped after every micro-step"),
        (step_with(step="each"), "replicas differ"),  # stepped on local, unaveraged gradients
        (step_with(returns="sum"), "the sum of the micro-steps' losses"),
        (step_with(returns="last"), "return the mean"),
        (step_with(returns=None), "return the step's loss"),
    ],
)
def test_train_step_recognises_mistakes(fn, words):
    assert_hint("10.train_step", fn, words)


def test_a_crash_in_the_learners_step_is_incorrect_with_the_error(capsys):
    def crashes(model, optimizer, x, y, grad_accum, grad_clip):
        return model(x)[1].backward()  # no targets: the loss is None

    status, hint = verdict("10.train_step", crashes)
    assert status == "incorrect" and "rank" in hint and "AttributeError" in capsys.readouterr().out


def test_the_cases_reach_the_clipping_limit_only_where_they_should():
    """Case 1's limit is far above the first step's gradient norm, so a gradient's scale shows;
    case 2's is below it, and below the norm of rank 0's first micro-step alone, which is what
    clipping before the last backward would clip, so where clipping happens shows."""
    (_, loose), (accum, tight) = nb10._STEP_CASES
    torch.manual_seed(0)
    model = tiny_gpt().double()

    def norm(x, y, scale=1.0):
        grads = torch.autograd.grad(model(x, y)[1] * scale, list(model.parameters()))
        return torch.cat([g.reshape(-1) for g in grads]).norm()

    x, y = nb10._step_batches(0, 1)[0]  # the first step's global batch
    xr, yr = nb10._step_batches(0, 2)[0]  # rank 0's rows of it
    assert tight < norm(x, y) < loose
    assert norm(xr.chunk(accum)[0], yr.chunk(accum)[0], 1 / accum) > tight


def test_the_reference_is_one_process_on_the_whole_batch():
    """Without clipping, train_step on 2 ranks equals SGD in one process on both ranks' rows at
    once, the large-batch step: so the checker's reference is."""
    torch.manual_seed(0)
    model = tiny_gpt().double()
    optimizer = torch.optim.SGD(model.parameters(), lr=nb10._STEP_LR)
    for x, y in nb10._step_batches(0, 1):
        model(x, y)[1].backward()
        optimizer.step()
        optimizer.zero_grad()
    whole = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    torch.testing.assert_close(nb10._simulated(3, 1e3)[0], whole, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("grad_accum", "grad_clip"), nb10._STEP_CASES)
def test_the_reference_is_the_trainers_own_step_on_2_ranks(grad_accum, grad_clip):
    """The checker computes its reference in one process (so that the grader computes it, not
    the submission): minidp.train.train_step on 2 real ranks gives the same parameters and each
    rank's losses."""
    got = minidp.launch(_trainer_steps, 2, grad_accum, grad_clip, timeout=60)
    params, losses = nb10._simulated(grad_accum, grad_clip)
    for rank, (theirs, their_losses) in enumerate(got):
        torch.testing.assert_close(theirs, params, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(their_losses, losses[rank], rtol=1e-6, atol=1e-9)


def _trainer_steps(grad_accum: int, grad_clip: float) -> tuple:
    """Two steps of minidp.train.train_step, called as the trainer calls it."""
    rank, world_size = dist.get_rank(), dist.get_world_size()
    env = DistEnv(rank, rank, world_size, torch.device("cpu"), "gloo")
    c = TrainConfig(grad_accum=grad_accum, grad_clip=grad_clip)
    model = minidp.DistributedDataParallel(nb10._start())
    optimizer = torch.optim.SGD(model.parameters(), lr=nb10._STEP_LR)
    sharded = Sharded(model, model.module, optimizer)  # --shard none
    losses = []
    for batch in nb10._step_batches(rank, world_size):
        losses.append(float(train_step(0, nb10._STEP_LR, sharded, batch, c, env)))
    return torch.nn.utils.parameters_to_vector(model.parameters()).detach(), losses


@pytest.mark.parametrize(
    ("exercise", "fn", "status"),
    [
        ("09.token_loss_scale", SOLUTIONS["09.token_loss_scale"], "correct"),
        ("09.token_loss_scale", lambda counts, rank, j: 1 / counts.shape[1], "incorrect"),
        ("10.train_step", SOLUTIONS["10.train_step"], "correct"),
        ("10.train_step", step_with(clip="each"), "incorrect"),
        ("10.train_step", stub, "not attempted"),
    ],
)
def test_the_grader_replays_the_answers_to_the_same_verdict(tmp_path, exercise, fn, status):
    """Gradable: the checker, fed in another process's place the answers recorded here, asks the
    same questions and reaches the same verdict and hint with its own references."""
    recorder = transcript.Recorder(fn)
    here = CHECKERS[exercise](recorder)
    transcript.save(recorder, tmp_path, exercise)
    replay = transcript.Replay(transcript.load(tmp_path, exercise))
    there = CHECKERS[exercise](replay)
    assert here.status == there.status == status and here.hint == there.hint
    assert not replay.mismatch


def test_every_new_checker_is_registered():
    assert set(NEW) <= set(checks.CHECKERS)

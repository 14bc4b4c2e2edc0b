"""The checkers of notebooks 10-11: each accepts the reference, tells each typical wrong answer
apart by its own hint, and says "not attempted" for an untouched stub.

The wrong answers are written here the way a learner would write them, not taken from the
checkers, so a checker whose mistake list drifts from what learners really do fails here.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from checking import stub, verdict
from solutions import notebook_solutions

from minidp import memory, model_parallel
from minidp.course import checks
from minidp.course.checks import CORRECT, INCORRECT, NOT_ATTEMPTED
from minidp.model import GPT, GPTConfig

pytestmark = pytest.mark.usefixtures("no_orphans")  # 10.train_step's checker starts processes

# ---- the notebooks' own solutions (taken from the notebooks, not copied here)

SOLUTIONS = {**notebook_solutions("10"), **notebook_solutions("11")}
my_mfu = SOLUTIONS["10.mfu"]
my_model_state_bytes = SOLUTIONS["11.model_state_bytes"]
my_bubble_fraction = SOLUTIONS["11.bubble_fraction"]
my_tp_mlp_partial = SOLUTIONS["11.tp_mlp_partial"]


@pytest.mark.parametrize("exercise", sorted(SOLUTIONS))
def test_a_correct_answer_is_correct(exercise):
    assert verdict(exercise, SOLUTIONS[exercise]) == (CORRECT, "")


@pytest.mark.parametrize("exercise", sorted(SOLUTIONS))
def test_a_stub_is_not_attempted(exercise):
    assert verdict(exercise, stub)[0] == NOT_ATTEMPTED


def test_every_checker_of_10_and_11_is_tested():
    ours = {name for name in checks.CHECKERS if name[:2] in ("10", "11")}
    assert ours == set(SOLUTIONS)


def test_the_references_agree_with_minidp():
    # The MFU checker counts FLOPs as the trainer does, and the state bytes as minidp.memory.
    gpt = GPT(GPTConfig(block_size=64, n_layer=2, n_head=2, n_embd=32))
    per_token = my_mfu(gpt.num_params(), 2, 32, 64, 1.0, 1.0, 1)
    assert per_token == gpt.flops_per_token()
    for stage in range(4):
        expected = sum(memory.state_bytes(7e9, "bf16 mixed", stage, 32).values())
        assert my_model_state_bytes(7e9, stage, 32) == pytest.approx(expected)
    assert my_bubble_fraction(4, 8) == model_parallel.bubble_fraction(4, 8)


def test_the_partials_add_up_to_the_mlp():
    # What the exercise is for: t partial sums, plus the bias once, give the whole MLP's output.
    torch.manual_seed(0)
    x, W1, b1 = torch.randn(3, 8), torch.randn(32, 8), torch.randn(32)
    W2, b2 = torch.randn(8, 32), torch.randn(8)
    total = sum(my_tp_mlp_partial(x, W1, b1, W2, b2, r, 4) for r in range(4)) + b2
    torch.testing.assert_close(total, F.gelu(x @ W1.T + b1) @ W2.T + b2)


def test_a_crashing_answer_is_incorrect_with_the_error():
    status, hint = verdict("11.tp_mlp_partial", lambda x, W1, b1, W2, b2, r, t: x @ W1)
    assert status == INCORRECT and "RuntimeError" in hint


# ---- typical wrong answers, each with its own hint


def _states(P, s, dp, w=2, g=2, k=12):
    return w * P / (dp if s >= 3 else 1) + g * P / (dp if s >= 2 else 1) + k * P / (dp if s else 1)


def _bias_everywhere(x, W1, b1, W2, b2, r, t):
    return my_tp_mlp_partial(x, W1, b1, W2, b2, r, t) + b2


def _no_gelu(x, W1, b1, W2, b2, r, t):
    rows = slice(r * len(W1) // t, (r + 1) * len(W1) // t)
    return (x @ W1[rows].T + b1[rows]) @ W2[:, rows].T


def _strided(x, W1, b1, W2, b2, r, t):
    return F.gelu(x @ W1[r::t].T + b1[r::t]) @ W2[:, r::t].T


def _split_inputs(x, W1, b1, W2, b2, r, t):
    cols = slice(r * W1.shape[1] // t, (r + 1) * W1.shape[1] // t)
    return F.gelu(x[..., cols] @ W1[:, cols].T + b1) @ W2.T


WRONG = [
    # 10.mfu
    ("10.mfu", lambda N, L, d, T, tps, peak, n: (2 * N + 4 * L * T * d) * tps / (peak * n),
     "forward pass only"),
    ("10.mfu", lambda N, L, d, T, tps, peak, n: 6 * N * tps / (peak * n), "12 n_layer T d"),
    ("10.mfu", lambda N, L, d, T, tps, peak, n: (6 * N + 12 * L * T * d) * tps / peak,
     "n_gpus times"),
    ("10.mfu", lambda N, L, d, T, tps, peak, n: (6 * N + 12 * L * T * d) * tps * n / peak,
     "not multiply"),
    ("10.mfu", lambda N, L, d, T, tps, peak, n: 100 * my_mfu(N, L, d, T, tps, peak, n),
     "percentage"),
    # 10.micro_batch
    ("10.micro_batch", lambda B, nodes, gpus, accum: B // gpus // accum, "nnodes"),
    ("10.micro_batch", lambda B, nodes, gpus, accum: B // (nodes * gpus), "grad_accum"),
    ("10.micro_batch", lambda B, nodes, gpus, accum: B // (nodes * accum), "nproc_per_node"),
    ("10.micro_batch", lambda B, nodes, gpus, accum: B // (nodes * gpus) * accum, "not multiply"),
    ("10.micro_batch", lambda B, nodes, gpus, accum: B * nodes * gpus * accum, "shared out"),
    # 11.model_state_bytes
    ("11.model_state_bytes", lambda P, s, dp: _states(P, s, dp, k=8), "κ = 12"),
    ("11.model_state_bytes", lambda P, s, dp: _states(P, s, dp, w=4, g=4), "16-bit"),
    ("11.model_state_bytes", lambda P, s, dp: 16 * P / dp if s else 16 * P, "stage 1 shards"),
    ("11.model_state_bytes", lambda P, s, dp: _states(P, min(s + 1, 3), dp), "stage 2 also"),
    ("11.model_state_bytes", lambda P, s, dp: 16 * P, "divides what it shards"),
    ("11.model_state_bytes", lambda P, s, dp: _states(P, s, dp) / 1e9, "not GB"),
    # 11.bubble_fraction
    ("11.bubble_fraction", lambda p, m: (p - 1) / m, "relative to the busy time"),
    ("11.bubble_fraction", lambda p, m: m / (m + p - 1), "busy share"),
    ("11.bubble_fraction", lambda p, m: (p - 1) / p, "M belongs"),
    ("11.bubble_fraction", lambda p, m: (p - 1) / (m + p), "M + S - 1 slots"),
    ("11.bubble_fraction", lambda p, m: 1 / m, "S belongs"),
    ("11.bubble_fraction", lambda p, m: math.log(p) / m, "compare your result"),
    # 11.tp_mlp_partial
    ("11.tp_mlp_partial", _bias_everywhere, "bias once"),
    ("11.tp_mlp_partial", _no_gelu, "apply GELU"),
    ("11.tp_mlp_partial", _strided, "contiguous block"),
    ("11.tp_mlp_partial", _split_inputs, "not its d inputs"),
    ("11.tp_mlp_partial", lambda x, W1, b1, W2, b2, r, t: F.gelu(x @ W1.T + b1) @ W2.T,
     "whole MLP"),
]  # fmt: skip


@pytest.mark.parametrize("exercise, fn, words", WRONG)
def test_a_typical_mistake_gets_its_hint(exercise, fn, words):
    status, hint = verdict(exercise, fn)
    assert status == INCORRECT
    assert words in hint, f"expected a hint about {words!r}, got {hint!r}"

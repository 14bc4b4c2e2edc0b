"""Checkers of notebook 11, beyond data parallelism."""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from minidp import model_parallel
from minidp.course.checks.core import CheckResult, checker, compare
from minidp.course.i18n import _


def _model_states(params, zero_stage, dp, sizes=(2, 2, 12), shift=0, shard_all=False) -> float:
    """Bytes per GPU of mixed-precision Adam's model states, or a predictable mistake in them."""
    stage = min(max(zero_stage + shift, 0), 3)
    w, g, k = sizes  # bytes per parameter: weights, gradients, optimizer state
    if shard_all and stage >= 1:
        return (w + g + k) * params / dp
    sharded = lambda first_stage: dp if stage >= first_stage else 1
    return w * params / sharded(3) + g * params / sharded(2) + k * params / sharded(1)


@checker("11.model_state_bytes")
def _check_model_state_bytes(fn: Callable) -> CheckResult:
    # Stage 2 before stage 1: there, sharding nothing and shifting the stages by one differ.
    cases = [(1e9, 0, 8), (2e9, 2, 16), (7.5e9, 1, 64), (2e9, 3, 16), (3e9, 1, 4)]
    stages = _(
        "stage 1 shards the optimizer state, stage 2 also the gradients, stage 3 also weights"
    )
    mistakes = [
        (
            lambda P, s, dp: _model_states(P, s, dp, sizes=(2, 2, 8)),
            _(
                "mixed-precision Adam keeps κ = 12 bytes per parameter: an fp32 copy of the "
                "weights (4), the momentum μ (4) and the variance ν (4)"
            ),
        ),
        (
            lambda P, s, dp: _model_states(P, s, dp, sizes=(4, 4, 12)),
            _("weights and gradients are 16-bit, 2 bytes each; the fp32 copy is in the 12"),
        ),
        (lambda P, s, dp: _model_states(P, s, dp, shard_all=True), stages),
        (lambda P, s, dp: _model_states(P, s, dp, shift=1), stages),
        (lambda P, s, dp: _model_states(P, s, dp, shift=-1), stages),
        (
            lambda P, s, dp: _model_states(P, 0, dp),
            _("ZeRO divides what it shards by dp, the number of data-parallel GPUs"),
        ),
        (lambda P, s, dp: _model_states(P, s, dp) / 1e9, _("return bytes, not GB")),
    ]
    return compare("11.model_state_bytes", fn, _model_states, cases, mistakes)


@checker("11.bubble_fraction")
def _check_bubble_fraction(fn: Callable) -> CheckResult:
    cases = [(4, 8), (2, 1), (8, 32), (3, 5), (1, 4)]
    mistakes = [
        (
            lambda S, M: (S - 1) / M,
            _(
                "that is the idle time relative to the busy time; as a share of all the time it "
                "is (S - 1) / (M + S - 1), with S stages and M micro-batches"
            ),
        ),
        (lambda S, M: M / (M + S - 1), _("that is the busy share: the bubble is what is left")),
        (lambda S, M: (S - 1) / S, _("more micro-batches shrink the bubble: M belongs in it")),
        (lambda S, M: (S - 1) / (M + S), _("the forwards of M micro-batches fill M + S - 1 slots")),
        (lambda S, M: 1 / M, _("a single stage (S = 1) never waits: S belongs in it")),
    ]
    return compare("11.bubble_fraction", fn, model_parallel.bubble_fraction, cases, mistakes)


def _tp_partial(x, fc_weight, fc_bias, proj_weight, proj_bias, rank, t) -> Tensor:
    units = model_parallel.shard_range(fc_weight.shape[0], rank, t)  # this rank's hidden units
    return F.gelu(x @ fc_weight[units].T + fc_bias[units]) @ proj_weight[:, units].T


def _tp_cases() -> list[tuple]:
    g = torch.Generator().manual_seed(11)
    h = 8
    weights = [
        torch.randn(4 * h, h, generator=g),
        torch.randn(4 * h, generator=g),
        torch.randn(h, 4 * h, generator=g),
        torch.randn(h, generator=g),
    ]
    x = torch.randn(2, 3, h, generator=g)
    return [(x, *weights, rank, t) for rank, t in ((0, 2), (1, 2), (3, 4), (1, 4))]


@checker("11.tp_mlp_partial")
def _check_tp_mlp_partial(fn: Callable) -> CheckResult:
    def strided(x, W1, b1, W2, b2, r, t):
        return F.gelu(x @ W1[r::t].T + b1[r::t]) @ W2[:, r::t].T

    def input_split(x, W1, b1, W2, b2, r, t):
        cols = model_parallel.shard_range(W1.shape[1], r, t)
        return F.gelu(x[..., cols] @ W1[:, cols].T + b1) @ W2.T

    units = lambda W1, r, t: model_parallel.shard_range(W1.shape[0], r, t)
    mistakes = [
        (
            lambda x, W1, b1, W2, b2, r, t: _tp_partial(x, W1, b1, W2, b2, r, t) + b2,
            _(
                "add the second bias once, after the all-reduce: added on every rank, the sum "
                "would hold it τ times"
            ),
        ),
        (
            lambda x, W1, b1, W2, b2, r, t: (
                (x @ W1[units(W1, r, t)].T + b1[units(W1, r, t)]) @ W2[:, units(W1, r, t)].T
            ),
            _(
                "apply GELU to your hidden units before the second matrix: it is elementwise, so "
                "each rank can apply it to its own"
            ),
        ),
        (
            strided,
            _(
                "take the contiguous block of hidden units [r·4d/τ, (r+1)·4d/τ), as "
                "minidp.model_parallel.shard_range gives it"
            ),
        ),
        (
            input_split,
            _(
                "split the first matrix by its 4d outputs, not its d inputs: GELU is not linear, "
                "so it cannot be applied to partial sums"
            ),
        ),
        (
            lambda x, W1, b1, W2, b2, r, t: F.gelu(x @ W1.T + b1) @ W2.T,
            _("that is the whole MLP's output: each rank computes only its share, its 4d/τ units"),
        ),
        (
            lambda x, W1, b1, W2, b2, r, t: F.gelu(x @ W1.T + b1) @ W2.T + b2,
            _("that is the whole MLP's output: each rank computes only its share, its 4d/τ units"),
        ),
    ]
    return compare("11.tp_mlp_partial", fn, _tp_partial, _tp_cases(), mistakes)

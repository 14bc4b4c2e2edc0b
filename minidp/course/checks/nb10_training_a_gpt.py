"""Checkers of notebook 10, training a GPT."""

from collections.abc import Callable

from minidp.course.checks.core import CheckResult, checker, compare


@checker("10.scaling_efficiency")
def _check_scaling_efficiency(fn: Callable) -> CheckResult:
    efficiency = lambda one, many, k: many / (k * one)
    cases = [(1000.0, 1800.0, 2), (5e4, 1.2e5, 4), (2e3, 9e3, 8), (300.0, 300.0, 3)]
    mistakes = [
        (
            lambda one, many, k: many / one,
            "that is the speedup: divide it by K, the speedup K workers would give at best",
        ),
        (
            lambda one, many, k: k * one / many,
            "upside down: measured over ideal, that is (tokens/s with K) / (K × tokens/s with 1)",
        ),
        (lambda one, many, k: one / many, "measured over ideal: (tokens/s with K) / (K × with 1)"),
        (lambda one, many, k: many / (k * k * one), "divide by K once, not twice"),
        (lambda one, many, k: 100 * efficiency(one, many, k), "a fraction, not a percentage"),
    ]
    return compare("10.scaling_efficiency", fn, efficiency, cases, mistakes)


def _mfu(n_params, n_layer, n_embd, block_size, tokens_per_s, peak_flops, n_gpus) -> float:
    """As minidp.train measures it: 6N + 12 L T d FLOPs per token (PaLM, appendix B)."""
    flops_per_token = 6 * n_params + 12 * n_layer * block_size * n_embd
    return flops_per_token * tokens_per_s / (peak_flops * n_gpus)


@checker("10.mfu")
def _check_mfu(fn: Callable) -> CheckResult:
    cases = [
        (85_000_000, 12, 768, 1024, 4.0e5, 989e12, 8),
        (120_000, 2, 64, 1024, 3.0e4, 1e11, 2),
        (1_500_000_000, 48, 1600, 1024, 1.0e5, 312e12, 16),
    ]
    attention = lambda L, d, T: 12 * L * T * d
    mistakes = [
        (
            lambda N, L, d, T, tps, peak, n: (2 * N + attention(L, d, T) / 3) * tps / (peak * n),
            "that counts the forward pass only: backward costs twice as much, 6N in all",
        ),
        (
            lambda N, L, d, T, tps, peak, n: 6 * N * tps / (peak * n),
            "add the attention's 12 L T d FLOPs per token: with a long context they matter",
        ),
        (
            lambda N, L, d, T, tps, peak, n: _mfu(N, L, d, T, tps, peak, 1),
            "peak_flops is one GPU's: the job's peak is n_gpus times it",
        ),
        (
            lambda N, L, d, T, tps, peak, n: _mfu(N, L, d, T, tps, peak, 1) * n,
            "divide by the job's peak, n_gpus × peak_flops, not multiply",
        ),
        (
            lambda N, L, d, T, tps, peak, n: 100 * _mfu(N, L, d, T, tps, peak, n),
            "a fraction, not a percentage",
        ),
    ]
    return compare("10.mfu", fn, _mfu, cases, mistakes)


@checker("10.micro_batch")
def _check_micro_batch(fn: Callable) -> CheckResult:
    per_gpu = lambda B, nodes, gpus, accum: B // (nodes * gpus * accum)
    cases = [(512, 2, 8, 4), (256, 4, 4, 2), (96, 1, 2, 3), (1024, 8, 8, 1)]
    mistakes = [
        (lambda B, n, g, a: B // (g * a), "every node's GPUs take part: divide by nnodes too"),
        (
            lambda B, n, g, a: B // (n * g),
            "the batch is also split over grad_accum micro-steps: divide by it too",
        ),
        (
            lambda B, n, g, a: B // (n * a),
            "each node runs nproc_per_node processes, one per GPU: divide by it too",
        ),
        (lambda B, n, g, a: B // (n * g) * a, "divide by grad_accum, do not multiply"),
        (lambda B, n, g, a: B * n * g * a, "the global batch is shared out: divide, not multiply"),
    ]
    return compare("10.micro_batch", fn, per_gpu, cases, mistakes)

"""Benchmark of the trainer: tokens/s at 1 and 2 CPU ranks, with both DDPs.

python -m minidp.bench train [--layers 6] [--width 256] [--batch 8] [--steps 20]
"""

import statistics
import tempfile


def train(n_layer: int = 6, n_embd: int = 256, per_rank: int = 8, steps: int = 20) -> dict:
    """Trainer tokens/s at 1 and 2 CPU ranks for both DDPs (weak scaling: batch per rank fixed)."""
    from minidp.train import TrainConfig, run  # the trainer imports this module's neighbours

    runs: dict[tuple[int, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as out:
        for _ in range(2):  # two passes, alternating, so drift on the machine hits all alike
            for nproc, ddp in [(1, "minidp"), (2, "minidp"), (1, "torch"), (2, "torch")]:
                config = TrainConfig(
                    n_layer=n_layer,
                    n_head=8,
                    n_embd=n_embd,
                    steps=steps,
                    nproc=nproc,
                    ddp=ddp,
                    batch_size=per_rank * nproc,
                    eval_every=0,
                    eval_batches=1,
                    sample_tokens=0,
                    progress=False,
                    out_dir=out,
                )
                runs.setdefault((nproc, ddp), []).append(run(config)["tokens_per_s"])
    tps = {key: statistics.median(v) for key, v in runs.items()}
    print(
        f"trainer, GPT {n_layer}x{n_embd}, sequence 128, {per_rank} sequences per rank, "
        f"{steps} steps, CPU ranks of 1 thread; median tokens/s of each run, median of 2 runs"
    )
    print(f"{'DDP':>8} {'1 rank tok/s':>13} {'2 ranks tok/s':>14} {'scaling':>8}")
    for ddp in ("minidp", "torch"):
        one, two = tps[(1, ddp)], tps[(2, ddp)]
        print(f"{ddp:>8} {one:13,.0f} {two:14,.0f} {two / (2 * one):8.2f}")
    return tps

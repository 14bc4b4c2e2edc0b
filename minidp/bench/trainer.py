"""Benchmark: the trainer's tokens/s on CPU ranks, under each --shard mode and --impl.

    python -m minidp.bench train [--layers 6] [--width 256] [--batch 8] [--steps 20]

Weak scaling: the batch per rank is fixed, so the global batch doubles from 1 rank to 2, and
scaling = tokens/s at 2 ranks / (2 x tokens/s of --shard none at 1 rank, same --impl). Every run
is a whole `minidp.train.run` (processes started, model built, checkpoint written), its speed the
median of its steps past warm-up; all runs go twice, in turn, so that drift on the machine hits
all alike, and "vs torch" is the median over the two passes of ours / torch's, in each mode.
"""

import statistics
import tempfile

RUNS = [(1, "none"), (2, "none"), (2, "zero1"), (2, "fsdp")]  # (ranks, --shard)


def train(n_layer: int = 6, n_embd: int = 256, per_rank: int = 8, steps: int = 20) -> dict:
    """Trainer tokens/s of every run, {(ranks, shard, impl): median of the passes}; prints them."""
    from minidp.train import TrainConfig, run  # the trainer imports much: only when run

    runs: dict[tuple[int, str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as out:
        for _ in range(2):  # two passes, alternating, so drift on the machine hits all alike
            for nproc, shard in RUNS:
                for impl in ("minidp", "torch"):
                    config = TrainConfig(
                        n_layer=n_layer,
                        n_head=8,
                        n_embd=n_embd,
                        steps=steps,
                        nproc=nproc,
                        shard=shard,
                        impl=impl,
                        batch_size=per_rank * nproc,
                        eval_every=0,
                        eval_batches=1,
                        sample_tokens=0,
                        progress=False,
                        out_dir=out,
                    )
                    runs.setdefault((nproc, shard, impl), []).append(run(config)["tokens_per_s"])
    _report(runs, n_layer, n_embd, per_rank, steps)
    return {key: statistics.median(v) for key, v in runs.items()}


def _report(runs: dict, n_layer: int, n_embd: int, per_rank: int, steps: int) -> None:
    print(
        f"trainer, GPT {n_layer}x{n_embd}, sequence 128, {per_rank} sequences per rank, "
        f"{steps} steps, CPU ranks of 1 thread; median tokens/s of each run, median of 2 runs"
    )
    print(f"{'ranks':>5} {'shard':>6} {'impl':>7} {'tokens/s':>9} {'scaling':>8} {'vs torch':>9}")
    tps = {key: statistics.median(v) for key, v in runs.items()}
    for (nproc, shard, impl), value in tps.items():
        scaling = value / (nproc * tps[(1, "none", impl)])
        ours, theirs = runs[(nproc, shard, "minidp")], runs[(nproc, shard, "torch")]
        ratio = statistics.median(a / b for a, b in zip(ours, theirs, strict=True))
        vs = f"{ratio:8.2f}x" if impl == "minidp" else f"{1:8.2f}x"
        print(f"{nproc:5d} {shard:>6} {impl:>7} {value:9,.0f} {scaling:8.2f} {vs:>9}")

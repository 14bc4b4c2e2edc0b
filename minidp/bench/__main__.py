"""`python -m minidp.bench allreduce|ddp|fsdp|train`: the command line of the benchmarks."""

import argparse

import minidp.bench
from minidp.bench import allreduce, ddp, fsdp, train
from minidp.bench.collectives import SIZES, parse_size


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m minidp.bench",
        description=minidp.bench.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="which", required=True)
    ar = sub.add_parser("allreduce", help="our all-reduce algorithms vs dist.all_reduce")
    ar.add_argument("--world-size", type=int, default=2, help="worker processes (default 2)")
    ar.add_argument(
        "--repeats", type=int, default=50, help="rounds per size and algorithm (default 50)"
    )
    ar.add_argument(
        "--sizes",
        nargs="+",
        type=parse_size,
        default=SIZES,
        help="e.g. 4KB 4MB (default: 4KB-32MB)",
    )
    dp = sub.add_parser("ddp", help="our DDP variants vs torch's DDP on a GPT, 2 ranks")
    dp.add_argument("--layers", type=int, default=6, help="transformer blocks (default 6)")
    dp.add_argument("--width", type=int, default=256, help="embedding width (default 256)")
    dp.add_argument("--batch", type=int, default=8, help="sequences per rank (default 8)")
    dp.add_argument("--repeats", type=int, default=20, help="timed steps per variant (default 20)")
    fs = sub.add_parser("fsdp", help="our FSDP vs torch's fully_shard on a GPT, 2 ranks")
    fs.add_argument("--layers", type=int, default=6, help="transformer blocks (default 6)")
    fs.add_argument("--width", type=int, default=256, help="embedding width (default 256)")
    fs.add_argument("--batch", type=int, default=8, help="sequences per rank (default 8)")
    fs.add_argument("--repeats", type=int, default=20, help="timed steps each (default 20)")
    tr = sub.add_parser("train", help="trainer tokens/s at 1 and 2 CPU ranks, both DDPs")
    tr.add_argument("--layers", type=int, default=6, help="transformer blocks (default 6)")
    tr.add_argument("--width", type=int, default=256, help="embedding width (default 256)")
    tr.add_argument("--batch", type=int, default=8, help="sequences per rank (default 8)")
    tr.add_argument("--steps", type=int, default=20, help="steps per run (default 20)")
    args = parser.parse_args(argv)
    if args.which == "allreduce":
        allreduce(args.world_size, args.sizes, args.repeats)
    elif args.which == "ddp":
        ddp(args.layers, args.width, args.batch, args.repeats)
    elif args.which == "fsdp":
        fsdp(args.layers, args.width, args.batch, args.repeats)
    else:
        train(args.layers, args.width, args.batch, args.steps)


if __name__ == "__main__":
    main()

"""Benchmarks: ours against torch's, side by side in one run. Not tests.

    python -m minidp.bench allreduce     # our all-reduce algorithms (both rings) vs dist.all_reduce
    python -m minidp.bench ddp           # our DDP variants vs torch's DDP, on a small GPT,
                                         # and the host reads of a step's forward and backward
    python -m minidp.bench fsdp          # our FSDP vs torch's fully_shard, on the same GPT
    python -m minidp.bench train         # trainer tokens/s at 1 and 2 CPU ranks

Each prints medians over repeats and ratios against torch measured in the same processes, in
the same run, interleaved: on a shared machine an absolute time means little, a ratio a lot more.
Bandwidths follow nccl-tests (PERFORMANCE.md): algbw = bytes / time, and for all-reduce
busbw = algbw * 2(p-1)/p, the rate each link must sustain, comparable across world sizes.
"""

from minidp.bench.collectives import allreduce
from minidp.bench.data_parallel import ddp
from minidp.bench.sharded import fsdp
from minidp.bench.trainer import train

__all__ = ["allreduce", "ddp", "fsdp", "train"]

"""minidp: data-parallel training from send/recv to a GPT trainer. See README.md for the map.

The engine only: what `torchrun -m minidp.train` runs and a learner reads. Importing it loads
torch and nothing else; the course's checkers, plots and widgets are in `minidp.course`.

    results = minidp.launch(fn, 2)                          # fn on 2 CPU worker processes
    minidp.collectives.ring_all_reduce(t)                   # like dist.all_reduce(t), by hand
    model = minidp.DistributedDataParallel(model)           # like torch's DDP
    model = minidp.FullyShardedDataParallel(model, units=(Block,))  # like torch's fully_shard
    optimizer = minidp.ZeroRedundancyOptimizer(params, torch.optim.AdamW, lr=1e-3)
"""

from minidp import collectives, data, linear, model
from minidp.ddp import AfterBackwardDDP, DistributedDataParallel, PerParameterDDP
from minidp.environment import DistEnv, read_env, setup_distributed
from minidp.fsdp import FullyShardedDataParallel
from minidp.launch import WorkerError, launch
from minidp.zero import ZeroRedundancyOptimizer

__all__ = [
    "AfterBackwardDDP",
    "DistEnv",
    "DistributedDataParallel",
    "FullyShardedDataParallel",
    "PerParameterDDP",
    "WorkerError",
    "ZeroRedundancyOptimizer",
    "collectives",
    "data",
    "launch",
    "linear",
    "model",
    "read_env",
    "setup_distributed",
]

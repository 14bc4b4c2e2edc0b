"""minidp: data-parallel training from send/recv to a GPT trainer. See README.md for the map."""

from minidp import checks, collectives, data, model
from minidp.ddp import AfterBackwardDDP, DistributedDataParallel, PerParameterDDP
from minidp.launch import DistEnv, WorkerError, launch, read_env, setup_distributed
from minidp.zero import ZeroRedundancyOptimizer

__all__ = [
    "AfterBackwardDDP",
    "DistEnv",
    "DistributedDataParallel",
    "PerParameterDDP",
    "WorkerError",
    "ZeroRedundancyOptimizer",
    "checks",
    "collectives",
    "data",
    "launch",
    "model",
    "read_env",
    "setup_distributed",
]

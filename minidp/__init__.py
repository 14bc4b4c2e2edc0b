"""minidp: data-parallel training from send/recv to a GPT trainer. See README.md for the map."""

from minidp import checks, collectives, data, model
from minidp.launch import DistEnv, WorkerError, launch, read_env, setup_distributed

__all__ = [
    "DistEnv",
    "WorkerError",
    "checks",
    "collectives",
    "data",
    "launch",
    "model",
    "read_env",
    "setup_distributed",
]

"""Where this process sits in a distributed job, read from the environment in one place.

    env = setup_distributed()        # under torchrun: join its group; alone: a group of one
    env.rank, env.local_rank, env.world_size, env.device, env.backend

torchrun describes the job in environment variables: RANK (global), LOCAL_RANK (on this node:
which GPU), WORLD_SIZE, MASTER_ADDR and MASTER_PORT. `minidp.launch` sets the same except the
last two, as its workers are already in their group when their code starts.
This module is the only place in minidp that reads them; everything else is handed a `DistEnv`
or a process group, so the same code runs in a test with world size 1 (pytorch/examples'
multigpu_torchrun.py keeps its Trainer free of the environment the same way).

A multi-node job started the wrong way would otherwise fail silently: without MASTER_ADDR, or
started by srun or mpirun without torchrun, every process would think it is alone, train a
model of its own and race the others to the same checkpoint. `check_launch` refuses both.
"""

import os
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


class LaunchError(RuntimeError):
    """A job started in a way that would make every process train alone."""


# Set by launchers that start N copies of a command without torchrun's variables.
_COPIES = {
    "SLURM_STEP_NUM_TASKS": "srun",
    "OMPI_COMM_WORLD_SIZE": "mpirun (Open MPI)",
    "PMI_SIZE": "mpirun (MPICH, Intel MPI)",
}


def check_launch(environ: dict | None = None) -> None:
    """Raise LaunchError (one line, with the fix) for a job that torchrun did not start right."""
    # In a group already (minidp.launch's workers, which meet through a file), this process has
    # found the others without MASTER_ADDR.
    in_group = environ is None and dist.is_available() and dist.is_initialized()
    environ = os.environ if environ is None else environ
    if "RANK" in environ and "MASTER_ADDR" not in environ and not in_group:
        raise LaunchError(
            "RANK is set but MASTER_ADDR is not, so no process could find the others: start the "
            "job with torchrun (it sets both), or set MASTER_ADDR and MASTER_PORT to rank 0's "
            "host and a free port on it"
        )
    if "RANK" not in environ:
        for variable, launcher in _COPIES.items():
            copies = environ.get(variable, "1")
            if copies.isdigit() and int(copies) > 1:
                raise LaunchError(
                    f"{launcher} started {copies} copies of this command without torchrun, and "
                    f"each would train alone: start one torchrun per node instead (srun "
                    f"--ntasks-per-node 1 torchrun --nnodes N ...; see the README, 'several nodes')"
                )


def restart_warning(environ: dict | None = None) -> str | None:
    """A warning for a torchrun job whose restarts would fail, or None.

    With --max-restarts, torchrun's c10d rendezvous shares its TCP store with the restarted
    workers, and on current torch they may then look for each other at the previous attempt's
    addresses (pytorch issue 135712: "Connection refused", or a hang). Setting
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in torchrun's environment avoids it.
    """
    environ = os.environ if environ is None else environ
    restarts = environ.get("TORCHELASTIC_MAX_RESTARTS", "0")
    if (
        restarts.isdigit()
        and int(restarts) > 0
        and environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    ):
        return (
            "torchrun may fail to restart this job (pytorch issue 135712): give torchrun "
            "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in its environment"
        )
    return None


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job, and what it computes on."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def read_env() -> DistEnv:
    """The job as torchrun (or `launch`) describes it in the environment; one process if unset."""
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    # One GPU per local rank with NCCL where GPUs exist; CPU with gloo otherwise. MINIDP_DEVICE=cpu
    # forces the CPU (a GPU machine running the CPU tests, or `launch`, which forks and so must
    # not touch CUDA in the parent).
    want_cpu = os.environ.get("MINIDP_DEVICE", "") == "cpu"
    if not want_cpu and torch.cuda.is_available():
        return DistEnv(rank, local_rank, world_size, torch.device("cuda", local_rank), "nccl")
    return DistEnv(rank, local_rank, world_size, torch.device("cpu"), "gloo")


def setup_distributed(timeout_s: float = 300.0) -> DistEnv:
    """Join the process group described by the environment (torchrun), if not already in one.

    Under `launch` the group already exists and this only reports it. With no environment at
    all it starts a group of one process, so that code written for many ranks (DDP, ZeRO) runs
    unchanged in one; the caller ends it with dist.destroy_process_group().
    """
    check_launch()
    env = read_env()
    if env.device.type == "cuda":
        torch.cuda.set_device(env.device)
    if dist.is_initialized():
        return env
    if env.rank == 0 and restart_warning():
        print(f"minidp: warning: {restart_warning()}", file=sys.stderr)
    timeout = timedelta(seconds=timeout_s)
    device_id = env.device if env.device.type == "cuda" else None
    if "MASTER_ADDR" in os.environ:  # torchrun: its rendezvous tells us where to meet
        dist.init_process_group(
            env.backend,
            rank=env.rank,
            world_size=env.world_size,
            timeout=timeout,
            device_id=device_id,
        )
    else:  # one process on its own: an in-memory store is all the rendezvous it needs
        dist.init_process_group(
            env.backend,
            store=dist.HashStore(),
            rank=0,
            world_size=1,
            timeout=timeout,
            device_id=device_id,
        )
    return env

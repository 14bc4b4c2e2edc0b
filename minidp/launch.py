"""Start worker processes from a notebook cell, a test or a script, as torchrun would.

Two ways to run the same worker code:

    # from a notebook cell, a test or a script: N processes on this machine, gloo on CPU
    results = minidp.launch(fn, 2, x, y)        # fn(x, y) on ranks 0 and 1, returns [r0, r1]

    # on a cluster: torchrun starts the processes and sets RANK, LOCAL_RANK, WORLD_SIZE, ...
    torchrun --nproc-per-node 8 -m minidp.train ...    # which calls setup_distributed()

`launch` forks, so the function may be defined in a notebook cell or in `__main__`, which the
`spawn` start method cannot pickle. It follows torch.multiprocessing.spawn's error handling (the
first failing rank's traceback is raised in the caller, the others are ended) and torchrun's
environment variables, so code written for one runs under the other.

Nothing outlives a launch: each worker leads a process group, ended whole on every path, and
every pipe is closed, start-up failures included (see minidp/workers.py).

The workers meet through a file, torch's FileStore, not through a TCPStore on a port as torchrun's
do: a TCPStore looks up the name of the address at both ends of each of its connections, which
for ::ffff:127.0.0.1 means asking DNS, and a lost answer costs the resolver's 5 s timeout; a file
asks nobody. So a launch sets torchrun's variables except MASTER_ADDR and MASTER_PORT.
"""

import multiprocessing as mp
import os
import pickle
import sys
import tempfile
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from minidp.workers import Workers, become_worker

RENDEZVOUS_S = 60.0  # the least time workers get to find each other, whatever `timeout` is
ECHO_S = 0.2  # how long to wait for the partners' errors after a first failure


class WorkerError(RuntimeError):
    """A worker process raised or died; the message holds its rank and traceback."""

    def __init__(self, rank: int, message: str):
        super().__init__(f"rank {rank} failed:\n{message}")
        self.rank = rank


# ---- inside a worker


def _worker(
    fn: Callable, rank: int, world_size: int, store: str, options: dict, args, kwargs, out_fd, conn
):
    """Body of one worker process: join the group, run fn, report back."""
    become_worker(out_fd)
    for name in ("MASTER_ADDR", "MASTER_PORT"):  # an outer job's (a batch script's), not ours
        os.environ.pop(name, None)
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        GROUP_RANK="0",  # one node: this machine
        OMP_NUM_THREADS=str(options["threads"]),
        MINIDP_DEVICE="cpu",
        GLOO_SOCKET_IFNAME="lo",  # loopback only, whatever interfaces the machine has
    )
    torch.set_num_threads(options["threads"])
    try:
        _join_group(rank, world_size, store, options)
        result = fn(*args, **kwargs)
        if dist.is_initialized():  # unless fn ended the group itself
            dist.barrier()  # no rank leaves while another still needs it in a collective
            dist.destroy_process_group()
        # Plain pickle, not the Connection's own: torch makes multiprocessing send tensors as
        # shared-memory handles, which break once this process exits.
        conn.send_bytes(pickle.dumps(("ok", result)))
    except BaseException:
        conn.send_bytes(pickle.dumps(("error", traceback.format_exc())))
    finally:
        sys.stdout.flush()
        conn.close()


def _join_group(rank: int, world_size: int, path: str, options: dict) -> None:
    """Open the launch's rendezvous store, a file, and make the process group.

    On a busy machine workers may need seconds to get here, so they first wait for each other on
    the store, for up to RENDEZVOUS_S; only then is the group made, with the caller's (perhaps
    much shorter) timeout, which gloo applies to every later collective and send/recv, as well
    as to its own quick connection set-up.
    """
    store = dist.FileStore(path, world_size)
    store.set_timeout(timedelta(seconds=RENDEZVOUS_S))
    if store.add("arrived", 1) == world_size:
        store.set("all arrived", "yes")
    store.wait(["all arrived"])
    dist.init_process_group(
        options["backend"],
        store=store,
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=options["timeout"]),
    )


# ---- in the launcher


def launch(
    fn: Callable,
    world_size: int,
    *args: Any,
    timeout: float = 60.0,
    threads: int = 1,
    backend: str = "gloo",
    **kwargs: Any,
) -> list:
    """Run fn(*args, **kwargs) on `world_size` CPU processes and return their results in rank order.

    Args:
        timeout: seconds a collective (or the rendezvous) may wait before it fails.
        threads: torch threads per worker; one suits a laptop running 2-4 workers.
        backend: the process group's backend; gloo is the one that runs on CPUs.

    Raises WorkerError with the traceback of the first rank that fails; the others are ended.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    if "fork" not in mp.get_all_start_methods():
        raise RuntimeError(
            "minidp.launch needs the 'fork' start method (Linux, macOS, WSL); on native Windows "
            "use WSL, or put the worker code in a script and run it with torchrun."
        )
    # torch.optim imports torch._dynamo on first use, about 2 s; imported once here, before the
    # fork, every worker of every launch inherits it instead of paying again.
    import torch._dynamo  # noqa: F401

    options = {"timeout": timeout, "threads": threads, "backend": backend}
    # The store's file, in a folder of its own so that launches never collide, removed however
    # the launch ends, a Ctrl-C during the workers' clean-up included (only a launcher killed by
    # SIGKILL leaves it behind, in the temporary folder).
    with tempfile.TemporaryDirectory(prefix="minidp-launch-", ignore_cleanup_errors=True) as folder:
        store = os.path.join(folder, "store")
        workers = Workers(sys.stdout)
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            for rank in range(world_size):
                workers.fork(rank, _worker, (fn, rank, world_size, store, options, args, kwargs))
            return _collect(workers)
        finally:
            workers.end()


def _collect(workers: Workers) -> list:
    """Wait for each worker's report; on the first failure raise it (the caller ends the rest)."""
    outcomes = lambda: [w.outcome for w in workers.started]
    failed = lambda: any(o and o[0] == "error" for o in outcomes())
    workers.serve(lambda: all(outcomes()) or failed(), float("inf"))
    if not failed():
        return [result for _, result in outcomes()]
    # When one rank fails, its partners soon fail too, with "Connection closed by peer".
    # Give them a moment, then report the rank whose error is not such an echo.
    workers.serve(lambda: all(outcomes()), ECHO_S)
    failures = {r: o[1] for r, o in enumerate(outcomes()) if o and o[0] == "error"}
    echoes = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")
    causes = [r for r, msg in failures.items() if not any(e in msg for e in echoes)]
    rank = min(causes or failures)
    raise WorkerError(rank, failures[rank])

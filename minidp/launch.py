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

The workers find the job in the environment variables torchrun sets (see minidp.environment).
"""

import ctypes
import multiprocessing as mp
import os
import pickle
import re
import select
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from datetime import timedelta
from multiprocessing.connection import wait as wait_any
from typing import Any

import torch
import torch.distributed as dist

LOOPBACK = "127.0.0.1"
RENDEZVOUS_S = 60.0  # the least time workers get to find each other, whatever `timeout` is


class WorkerError(RuntimeError):
    """A worker process raised or died; the message holds its rank and traceback."""

    def __init__(self, rank: int, message: str):
        super().__init__(f"rank {rank} failed:\n{message}")
        self.rank = rank


def _die_with_parent() -> None:
    # Linux only: the kernel kills this worker if the launching process dies (kill -9, a crashed
    # kernel), so no worker outlives the notebook that started it. Elsewhere the launcher's
    # `finally` is the only guard.
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def _worker(
    fn: Callable, rank: int, world_size: int, options: dict, out_fd: int, conn, args, kwargs
) -> None:
    """Body of one worker process: route output, join the group, run fn, report back."""
    _die_with_parent()
    # Everything this process prints, from Python or from C++ (gloo's warnings), goes into a pipe
    # that the launcher reads and prefixes with the rank. In a notebook the inherited sys.stdout
    # belongs to the kernel's I/O thread, which does not exist in the forked child.
    os.dup2(out_fd, 1)
    os.dup2(out_fd, 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = sys.stdout
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher decides when workers stop
    port = conn.recv()  # the rendezvous store's port, known once every worker is forked
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        GROUP_RANK="0",  # one node: this machine
        MASTER_ADDR=LOOPBACK,
        MASTER_PORT=str(port),
        OMP_NUM_THREADS=str(options["threads"]),
        MINIDP_DEVICE="cpu",
        GLOO_SOCKET_IFNAME="lo",  # loopback only, whatever interfaces the machine has
    )
    torch.set_num_threads(options["threads"])
    try:
        _join_group(rank, world_size, port, options)
        result = fn(*args, **kwargs)
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


def _join_group(rank: int, world_size: int, port: int, options: dict) -> None:
    """Connect to the launcher's rendezvous store and make the process group.

    On a busy machine workers may need seconds to get here, so they first wait for each other on
    the store, for up to RENDEZVOUS_S; only then is the group made, with the caller's (perhaps
    much shorter) timeout, which gloo applies to every later collective and send/recv, as well
    as to its own quick connection set-up.
    """
    store = dist.TCPStore(LOOPBACK, port, is_master=False, timeout=timedelta(seconds=RENDEZVOUS_S))
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


def _pump_output(fds: dict[int, int], sink) -> None:
    """Copy each worker's output to `sink` line by line, prefixed with its rank, until all close.

    A carriage return ends a line too, and is kept: a progress bar redraws its line with one,
    and a terminal or a notebook then redraws the prefixed line in place.
    """
    partial = {fd: b"" for fd in fds}
    while partial:
        ready, _, _ = select.select(list(partial), [], [])
        for fd in ready:
            chunk = os.read(fd, 65536)
            if chunk:
                # [line, end, line, end, ..., unfinished]
                *pieces, partial[fd] = re.split(rb"(\r\n|\r|\n)", partial[fd] + chunk)
            else:  # end of file: the worker (and any children it started) have exited
                rest = partial.pop(fd)
                pieces = [rest, b"\n"] if rest else []
                os.close(fd)
            for line, end in zip(pieces[::2], pieces[1::2], strict=True):
                text = line.decode(errors="replace")
                sink.write(f"[rank {fds[fd]}] {text}{end.decode()}")
            if pieces:
                sink.flush()


def _stop(procs: list) -> None:
    """End every worker still running: SIGTERM, then SIGKILL for any that ignore it."""
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=2)
        if p.is_alive():
            p.kill()
            p.join()


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
    ctx = mp.get_context("fork")
    # torch.optim imports torch._dynamo on first use, about 2 s; imported once here, before the
    # fork, every worker of every launch inherits it instead of paying again.
    import torch._dynamo  # noqa: F401

    options = {"timeout": timeout, "threads": threads, "backend": backend}
    procs, conns, out_fds, store = [], {}, {}, None
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        for rank in range(world_size):
            read_fd, write_fd = os.pipe()
            conn, worker_conn = ctx.Pipe()
            worker_args = (fn, rank, world_size, options, write_fd, worker_conn, args, kwargs)
            # Not a daemon: daemonic processes may not start processes of their own (a DataLoader).
            p = ctx.Process(target=_worker, args=worker_args, name=f"minidp-rank{rank}")
            p.start()
            os.close(write_fd)  # the worker holds the only write end, so EOF means it is gone
            worker_conn.close()
            procs.append(p)
            conns[conn] = rank
            out_fds[read_fd] = rank
        # The store starts only now: forking while its server thread runs could copy a held lock
        # into a child and hang it. Port 0 lets the OS pick a free port, so launches never collide.
        store = dist.TCPStore(LOOPBACK, 0, world_size, is_master=True, wait_for_workers=False)
        for conn in conns:
            conn.send(store.port)
        pump = threading.Thread(target=_pump_output, args=(out_fds, sys.stdout), daemon=True)
        pump.start()
        return _collect(procs, conns, pump)
    finally:
        _stop(procs)
        del store


def _collect(procs: list, conns: dict, pump: threading.Thread) -> list:
    """Wait for each worker's report; on the first failure raise it (the caller ends the rest)."""
    results: list = [None] * len(procs)
    pending = dict(conns)
    while pending:
        failures = {}
        for conn in wait_any(list(pending)):
            rank = pending.pop(conn)
            status, payload = _receive(conn, procs[rank])
            if status == "error":
                failures[rank] = payload
            else:
                results[rank] = payload
        if failures:
            # When one rank fails, its partners soon fail too, with "Connection closed by peer".
            # Give them a moment, then report the rank whose error is not such an echo.
            for conn in wait_any(list(pending), timeout=0.2):
                rank = pending.pop(conn)
                status, payload = _receive(conn, procs[rank])
                if status == "error":
                    failures[rank] = payload
            _stop(procs)
            pump.join(timeout=2)  # let the failing rank's last lines reach the caller
            echoes = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")
            causes = [r for r, msg in failures.items() if not any(e in msg for e in echoes)]
            rank = min(causes or failures)
            raise WorkerError(rank, failures[rank])
    for p in procs:  # reported, so about to exit; a thread the worker left running can delay it
        p.join(timeout=10)
    _stop(procs)
    pump.join(timeout=5)
    return results


def _receive(conn, proc) -> tuple[str, Any]:
    """A worker's report: ("ok", result) or ("error", traceback or how it died)."""
    try:
        return pickle.loads(conn.recv_bytes())
    except EOFError:  # died without a word: a signal, os._exit, or a crash in C++
        proc.join(timeout=5)
        return "error", _describe_exit(proc.exitcode)


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:  # a real-time signal has no name
            name = str(-code)
        return f"the worker process was killed by signal {name}"
    return f"the worker process exited with code {code} without reporting a result"

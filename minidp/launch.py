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

Nothing outlives a launch: each worker leads a process group, which holds whatever it starts (a
DataLoader's workers, a subprocess), and each group is ended whole, SIGTERM then SIGKILL, on every
path; a second Ctrl-C only skips the grace period. One loop in the caller's thread relays output
and reports, and every pipe is closed on every path, start-up failures included.
"""

import contextlib
import ctypes
import multiprocessing as mp
import os
import pickle
import re
import selectors
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from multiprocessing.connection import Connection
from typing import Any

import torch
import torch.distributed as dist

LOOPBACK = "127.0.0.1"
RENDEZVOUS_S = 60.0  # the least time workers get to find each other, whatever `timeout` is
EXIT_S = 10.0  # how long a worker that reported may take to exit (a thread it left can delay it)
GRACE_S = 2.0  # how long a group has between SIGTERM and SIGKILL
ECHO_S = 0.2  # how long to wait for the partners' errors after a first failure


class WorkerError(RuntimeError):
    """A worker process raised or died; the message holds its rank and traceback."""

    def __init__(self, rank: int, message: str):
        super().__init__(f"rank {rank} failed:\n{message}")
        self.rank = rank


# ---- inside a worker


def _worker(
    fn: Callable, rank: int, world_size: int, options: dict, out_fd: int, conn, args, kwargs
) -> None:
    """Body of one worker process: route output, join the group, run fn, report back."""
    os.setpgid(0, 0)  # a group of its own, which its children join: the launcher ends it whole
    if sys.platform.startswith("linux"):  # the kernel kills this worker if the launcher dies
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: after kill -9, a crash
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


# ---- in the launcher


@dataclass
class _Worker:
    """The launcher's side of one worker: its process and the read ends of its two pipes."""

    rank: int
    output: int  # its stdout and stderr; -1 once closed
    report: Connection  # ("ok", result) or ("error", traceback), pickled
    process: Any  # a multiprocessing Process
    partial: bytes = b""  # output after the last line end
    outcome: tuple | None = None


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
    workers: list[_Worker] = []
    relay, store = _Relay(workers, sys.stdout), None
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        for rank in range(world_size):
            workers.append(_fork(ctx, rank, (fn, rank, world_size, options), (args, kwargs)))
            relay.add(workers[-1])
        # The store starts only now: forking while its server thread runs could copy a held lock
        # into a child and hang it. Port 0 lets the OS pick a free port, so launches never collide.
        store = dist.TCPStore(LOOPBACK, 0, world_size, is_master=True, wait_for_workers=False)
        for worker in workers:
            worker.report.send(store.port)
        return _collect(workers, relay)
    finally:
        with _deferred_interrupts() as hurry:
            _end(workers, relay, hurry)
            relay.close()
            del store


def _fork(ctx, rank: int, head: tuple, tail: tuple) -> _Worker:
    """Start one worker; the launcher keeps the read ends of its output and report pipes."""
    with contextlib.ExitStack() as if_failed, contextlib.ExitStack() as always:
        read_fd, write_fd = os.pipe()
        if_failed.callback(os.close, read_fd)
        always.callback(os.close, write_fd)  # after the fork only the worker holds the write
        report, worker_end = ctx.Pipe()  # ends, so the end of a pipe means the worker is gone
        if_failed.callback(report.close)
        always.callback(worker_end.close)
        # Not a daemon: daemonic processes may not start processes of their own (a DataLoader).
        process = ctx.Process(
            target=_worker, args=(*head, write_fd, worker_end, *tail), name=f"minidp-rank{rank}"
        )
        process.start()
        if_failed.pop_all()
    # Here too, not only in the worker, so that the group exists before any kill can come.
    with contextlib.suppress(OSError):
        os.setpgid(process.pid, process.pid)
    return _Worker(rank, read_fd, report, process)


class _Relay:
    """One selector over every worker's output and report: output goes to `sink` line by line,
    prefixed with the rank; a report becomes the worker's outcome."""

    def __init__(self, workers: list[_Worker], sink):
        self.workers, self.sink, self.selector = workers, sink, selectors.DefaultSelector()

    def add(self, worker: _Worker) -> None:
        self.selector.register(worker.output, selectors.EVENT_READ, (worker, "output"))
        self.selector.register(worker.report, selectors.EVENT_READ, (worker, "report"))

    def serve(self, done: Callable[[], bool], seconds: float, hurry=None) -> bool:
        """Relay until done() (True), or until `seconds` pass or `hurry` is set (False)."""
        deadline = time.monotonic() + seconds
        while not done():
            left = deadline - time.monotonic()
            if left <= 0 or (hurry is not None and hurry.is_set()):
                return False
            for key, _ in self.selector.select(timeout=min(left, 0.01)):
                worker, what = key.data
                self._read_report(worker) if what == "report" else self._read_output(worker)
            for worker in self.workers:  # its report pipe may stay open: a child holds a copy
                if worker.outcome is None and worker.process.exitcode is not None:
                    self._read_report(worker)
        return True

    def _read_report(self, worker: _Worker) -> None:
        self.selector.unregister(worker.report)
        try:
            if worker.process.exitcode is None or worker.report.poll(0):
                worker.outcome = pickle.loads(worker.report.recv_bytes())
                return
        except (EOFError, OSError):  # died without a word: a signal, os._exit, a crash in C++
            worker.process.join(timeout=5)
        except Exception as e:  # a result pickled by the worker that cannot be unpickled here
            worker.outcome = ("error", f"its result could not be unpickled: {e!r}")
            return
        worker.outcome = ("error", _describe_exit(worker.process.exitcode))

    def _read_output(self, worker: _Worker) -> None:
        # A carriage return ends a line too, and is kept: a progress bar redraws its line with
        # one, and a terminal or a notebook then redraws the prefixed line in place.
        chunk = os.read(worker.output, 65536)
        if chunk:  # [line, end, line, end, ..., unfinished]
            *pieces, worker.partial = re.split(rb"(\r\n|\r|\n)", worker.partial + chunk)
        else:  # end of file: the worker and everything it started have closed it
            pieces = [worker.partial, b"\n"] if worker.partial else []
            self.selector.unregister(worker.output)
            os.close(worker.output)
            worker.output = -1
        for line, end in zip(pieces[::2], pieces[1::2], strict=True):
            self.sink.write(f"[rank {worker.rank}] {line.decode(errors='replace')}{end.decode()}")
        if pieces:
            self.sink.flush()

    def close(self) -> None:
        for worker in self.workers:
            if worker.output >= 0:
                os.close(worker.output)
            worker.report.close()
        self.selector.close()


def _collect(workers: list[_Worker], relay: _Relay) -> list:
    """Wait for each worker's report; on the first failure raise it (the caller ends the rest)."""
    failed = lambda: any(w.outcome[0] == "error" for w in workers if w.outcome)
    reported = lambda: all(w.outcome for w in workers)
    relay.serve(lambda: reported() or failed(), float("inf"))
    if not failed():
        return [w.outcome[1] for w in workers]
    # When one rank fails, its partners soon fail too, with "Connection closed by peer".
    # Give them a moment, then report the rank whose error is not such an echo.
    relay.serve(reported, ECHO_S)
    failures = {w.rank: w.outcome[1] for w in workers if w.outcome and w.outcome[0] == "error"}
    echoes = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")
    causes = [r for r, msg in failures.items() if not any(e in msg for e in echoes)]
    rank = min(causes or failures)
    raise WorkerError(rank, failures[rank])


def _end(workers: list[_Worker], relay: _Relay, hurry: threading.Event) -> None:
    """End every worker's process group: SIGTERM, then SIGKILL for whatever is left."""
    exited = lambda: all(w.process.exitcode is not None for w in workers)
    closed = lambda: all(w.output < 0 for w in workers)
    if all(w.outcome and w.outcome[0] == "ok" for w in workers):  # all reported: let them exit
        relay.serve(exited, EXIT_S, hurry)
    for w in workers:
        _signal(w, signal.SIGTERM)
    relay.serve(lambda: exited() and closed(), GRACE_S, hurry)
    for w in workers:
        _signal(w, signal.SIGKILL)
    # The last lines; a process that left the group may keep a pipe open: stop waiting for it.
    relay.serve(closed, 0.5)
    for w in workers:
        w.process.join(timeout=5)


def _signal(worker: _Worker, signum: int) -> None:
    """Send signum to the worker's process group, and to the worker if it left the group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(worker.process.pid, signum)
    if worker.process.exitcode is None:  # not reaped yet, so the pid is still the worker's
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.process.pid, signum)


@contextlib.contextmanager
def _deferred_interrupts():
    """Ctrl-C during clean-up sets the yielded event (skip the grace period) instead of raising;
    afterwards it is raised, unless a KeyboardInterrupt is already on its way."""
    hurry = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield hurry  # only the main thread receives KeyboardInterrupt
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: hurry.set())
    try:
        yield hurry
    finally:  # None: a handler not set from Python, which Python cannot put back
        signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)
    if hurry.is_set() and not isinstance(sys.exc_info()[1], KeyboardInterrupt):
        raise KeyboardInterrupt


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:  # a real-time signal has a number but no name
        name = {int(s): s.name for s in signal.Signals}.get(-code, -code)
        return f"the worker process was killed by signal {name}"
    return f"the worker process exited with code {code} without reporting a result"

"""Worker processes that leave nothing behind: what `minidp.launch` runs its ranks in.

    workers = Workers(sys.stdout)
    workers.fork(rank, body, args)    # body(*args, out_fd, report) in a process group of its own
    workers.serve(done, seconds)      # relay output ("[rank r] ...") and reports until done()
    workers.end()                     # SIGTERM each group, SIGKILL what is left, close every pipe

Each worker leads a process group, which its children join (a DataLoader's workers, a
subprocess), so ending the group ends them too; a process that leaves the group (setsid) is out
of its reach (minidp/course/reaper.py shows a supervisor that finds those). One selector in the
caller's thread relays output and reports: no helper thread to leave behind, and no limit on fd
numbers (select() stops at 1023). A Ctrl-C during `end` skips the grace period instead of
interrupting the clean-up.
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
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection

EXIT_S = 10.0  # how long a worker that reported may take to exit (a thread it left can delay it)
GRACE_S = 2.0  # how long a group has between SIGTERM and SIGKILL


def become_worker(out_fd: int) -> None:
    """First thing in a new worker: its own group, death with the launcher, output to the pipe."""
    os.setpgid(0, 0)  # a group of its own, which its children join: `end` ends it whole
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


@dataclass
class Worker:
    """The launcher's side of one worker: its process and the read ends of its two pipes."""

    rank: int
    process: mp.Process
    output: int  # its stdout and stderr; -1 once closed
    report: Connection  # what the worker sends, pickled
    partial: bytes = b""  # output after the last line end
    outcome: tuple | None = None  # its report, or ("error", how it died)


class Workers:
    """Workers forked one by one, their output relayed to `sink`, all ended together."""

    def __init__(self, sink):
        self.sink, self.selector, self.started = sink, selectors.DefaultSelector(), []

    def fork(self, rank: int, body: Callable, args: tuple) -> Worker:
        """Start body(*args, out_fd, report) in a new process (fork: closures work)."""
        with contextlib.ExitStack() as if_failed, contextlib.ExitStack() as always:
            read_fd, write_fd = os.pipe()
            if_failed.callback(os.close, read_fd)
            always.callback(os.close, write_fd)  # after the fork only the worker holds the
            report, worker_end = mp.Pipe()  # write ends, so the end of a pipe means it is gone
            if_failed.callback(report.close)
            always.callback(worker_end.close)
            # Not a daemon: daemonic processes may not start processes (a DataLoader's).
            process = mp.get_context("fork").Process(
                target=body, args=(*args, write_fd, worker_end), name=f"minidp-rank{rank}"
            )
            process.start()
            if_failed.pop_all()
        with contextlib.suppress(OSError):  # here too, so that the group exists before any kill
            os.setpgid(process.pid, process.pid)
        self.started.append(worker := Worker(rank, process, read_fd, report))
        self.selector.register(read_fd, selectors.EVENT_READ, (worker, self._read_output))
        self.selector.register(report, selectors.EVENT_READ, (worker, self._read_report))
        # Readable when the worker exits (unless a child of it holds it too): wakes `serve` then.
        self.selector.register(process.sentinel, selectors.EVENT_READ, (worker, self._exited))
        return worker

    def serve(self, done: Callable[[], bool], seconds: float, hurry=None) -> bool:
        """Relay until done() (True), or until `seconds` pass or `hurry` is set (False)."""
        deadline = time.monotonic() + seconds
        while not done():
            left = deadline - time.monotonic()
            if left <= 0 or (hurry is not None and hurry.is_set()):
                return False
            for key, _ in self.selector.select(timeout=min(left, 0.01)):
                worker, read = key.data
                read(worker)
            for worker in self.started:  # its report pipe may stay open: a child of it holds a copy
                if worker.outcome is None and worker.process.exitcode is not None:
                    self._read_report(worker)
        return True

    def _exited(self, worker: Worker) -> None:
        self.selector.unregister(worker.process.sentinel)

    def _read_report(self, worker: Worker) -> None:
        self.selector.unregister(worker.report)
        try:
            if worker.process.exitcode is None or worker.report.poll(0):
                worker.outcome = pickle.loads(worker.report.recv_bytes())
                return
        except (EOFError, OSError):  # died without a word: a signal, os._exit, a crash in C++
            worker.process.join(timeout=5)
        except Exception as e:  # what the worker pickled cannot be unpickled here
            worker.outcome = ("error", f"its report could not be unpickled: {e!r}")
            return
        worker.outcome = ("error", _describe_exit(worker.process.exitcode))

    def _read_output(self, worker: Worker) -> None:
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

    def end(self) -> None:
        """End every worker's process group, SIGTERM then SIGKILL, and close every pipe."""
        with _deferred_interrupts() as hurry:
            exited = lambda: all(w.process.exitcode is not None for w in self.started)
            closed = lambda: all(w.output < 0 for w in self.started)
            if all(w.outcome and w.outcome[0] == "ok" for w in self.started):  # let them exit
                self.serve(exited, EXIT_S, hurry)
            # After SIGTERM, the grace period; after SIGKILL, the last lines (a process that
            # left the group may hold a pipe open: do not wait long for it).
            for signum, wait_s in ((signal.SIGTERM, GRACE_S), (signal.SIGKILL, 0.5)):
                for worker in self.started:
                    _signal(worker, signum)
                self.serve(lambda: exited() and closed(), wait_s, hurry)
            for worker in self.started:
                worker.process.join(timeout=5)
                if worker.output >= 0:
                    os.close(worker.output)
                worker.report.close()
            self.selector.close()


def _signal(worker: Worker, signum: int) -> None:
    """Send signum to the worker's process group, and to the worker if it left the group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(worker.process.pid, signum)
    if worker.process.exitcode is None:  # not reaped yet, so the pid is still the worker's
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.process.pid, signum)


@contextlib.contextmanager
def _deferred_interrupts():
    """Ctrl-C sets the yielded event instead of raising KeyboardInterrupt; afterwards it is
    raised, unless one is already on its way. Only the main thread receives them."""
    hurry = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield hurry
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

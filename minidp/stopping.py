"""Stopping cleanly when asked: SIGTERM (a scheduler, torchrun) and SIGINT (Ctrl-C).

    with StopRequest() as stop:         # in each training process
        for step in ...:
            ...                          # all ranks agree on stop.signum (an all-reduce)
            if stop.signum:              # finish the step, checkpoint, then:
                raise stop.stopped(step, steps, out_dir, rank)   # exit non-zero, one line

    with forward_to_workers():          # in the process that started the workers (`launch`)
        launch(train, 2, config)

A cluster scheduler preempting a job sends SIGTERM and, some seconds later, SIGKILL (SLURM's
KillWait, Kubernetes' grace period, torchrun's --shutdown-timeout: 30 s by default). Python's
default reaction, dying at once or raising KeyboardInterrupt wherever the program happens to be,
loses every step since the last checkpoint. Here a signal only sets a flag; the training loop
checks it after each step, and all ranks agree on it through the step's own all-reduce (a signal
may reach one rank a step before another), then write a checkpoint and exit together.
"""

import multiprocessing as mp
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(RuntimeError):
    """Raised on every rank once a signal has stopped the run, after its checkpoint."""

    def __init__(self, message: str, signum: int, rank: int):
        super().__init__(message, signum, rank)  # all three: an exception pickles its args
        self.signum, self.rank = signum, rank

    def __str__(self) -> str:
        return self.args[0]


class StopRequest:
    """While active, SIGTERM and SIGINT set `signum` instead of ending the process."""

    def __init__(self) -> None:
        self.signum = 0  # the first signal received; 0 while none
        self._previous: dict = {}

    def _handle(self, signum: int, frame) -> None:
        self.signum = self.signum or signum

    def __enter__(self) -> "StopRequest":
        # Python lets only the main thread set handlers; elsewhere (a thread of a notebook
        # kernel) signals keep their usual effect.
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def stopped(self, step: int, steps: int, out_dir: str, rank: int) -> Stopped:
        """The exception that ends a run stopped after `step`, on any rank, signalled or not."""
        name = signal.Signals(self.signum).name if self.signum else "a signal to another rank"
        message = (
            f"stopped by {name} after step {step} of {steps}; checkpoint in {out_dir} "
            f"(continue with --resume auto)"
        )
        return Stopped(message, self.signum or signal.SIGTERM, rank)

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}


@contextmanager
def forward_to_workers() -> Iterator[None]:
    """In the launching process: the first SIGTERM or SIGINT is passed on to the worker
    processes (they stop after their step, with a checkpoint) while this process keeps waiting
    for them; a second one raises KeyboardInterrupt here, and the launcher ends them at once.

    Ctrl-C in a terminal reaches every process of the foreground group, workers included, but a
    scheduler's SIGTERM may reach this process alone: hence the forwarding.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    seen = []

    def handle(signum: int, frame) -> None:
        if seen:
            raise KeyboardInterrupt
        seen.append(signum)
        for child in mp.active_children():  # the workers `launch` started from this process
            os.kill(child.pid, signum)

    previous = {s: signal.signal(s, handle) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)

"""The grader's reaper: every process a submission starts, found and ended, setsid or not.

    with reaping() as end_new_processes:    # this process is now a child subreaper
        ...                                 # start the submission's kernel, run it
        end_new_processes(kernel_pid)       # all it started, however far it went, is gone

A process whose parent dies is re-parented to init, out of sight, unless an ancestor is a child
subreaper (Linux's prctl(PR_SET_CHILD_SUBREAPER), what systemd and container runtimes use): then
it is re-parented to that ancestor. So while a submission runs the grader is one, and every
orphan stays its descendant, double-forked daemons and new sessions (setsid) included. Ending
them goes round after round, stopping then killing all it sees, because a killed parent's
children are re-parented here next. Elsewhere (macOS) the grader can only add the processes of
the kernel's session: one that leaves both the tree and the session escapes.
"""

import contextlib
import ctypes
import os
import sys
import time

import psutil

PR_SET_CHILD_SUBREAPER, PR_GET_CHILD_SUBREAPER = 36, 37


@contextlib.contextmanager
def reaping():
    """This process as a child subreaper for the block, and every process started in the block
    ended when it closes. Yields that ending as a function of the kernel's pid, to call earlier:
    where there is no subreaper, the kernel's session is what it can still find."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None
    was = ctypes.c_int(0)
    if prctl:
        prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(was))
        prctl(PR_SET_CHILD_SUBREAPER, 1)
    known = {p.pid for p in psutil.Process().children()}  # not the submission's
    try:
        yield lambda kernel: end_processes(known, None if prctl else kernel)
    finally:
        end_processes(known)
        if prctl:
            prctl(PR_SET_CHILD_SUBREAPER, was.value)


def end_processes(known: set[int], session: int | None = None) -> None:
    """Kill every descendant of this process but the children in `known` and theirs (and every
    process of `session`), round after round, and reap those that are this process's children."""
    me, deadline = psutil.Process(), time.monotonic() + 30
    while time.monotonic() < deadline:
        found = []
        for child in me.children():
            if child.pid not in known:
                with contextlib.suppress(psutil.Error):
                    found += [child, *child.children(recursive=True)]
        if session is not None:
            found += [p for p in psutil.process_iter() if _session(p) == session]
        if not found:
            return
        for stop in (psutil.Process.suspend, psutil.Process.kill):  # stopped first: no new forks
            for p in found:
                with contextlib.suppress(psutil.Error):
                    stop(p)
        psutil.wait_procs([p for p in found if _parent(p) == me.pid], timeout=5)


def _session(p: psutil.Process) -> int | None:
    """The process's session, None for one that is gone or dead (a zombie is init's to reap)."""
    with contextlib.suppress(OSError, psutil.Error):
        return os.getsid(p.pid) if p.status() != psutil.STATUS_ZOMBIE else None
    return None


def _parent(p: psutil.Process) -> int | None:
    with contextlib.suppress(psutil.Error):
        return p.ppid()
    return None

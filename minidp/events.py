"""Event: one moment or one span of a training step, the record every timeline of minidp is
made of: DDP's (minidp.buckets), FSDP's and ZeRO's (minidp.flat), and the marks a worker adds.

    Event("forward")                                  # an instant, stamped now
    Event("launch", 3)                                # bucket 3's all-reduce starts, now
    Event("all-gather", 0, start, end, nbytes=4096)   # a span: unit 0's all-gather

`start` and `end` are time.perf_counter() seconds, one clock for all the processes of a machine
(Linux), so the ranks' events line up on one axis. An instant is a span of length zero.
"""

import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Event:
    """kind: what happened. DDP's are "grad" (index: a parameter), "launch" and "done" (a
    bucket), "backward end"; FSDP's and ZeRO's "all-gather", "reduce-scatter" and "all-reduce"
    (with `nbytes`, the size of the whole flat tensor) and "forward" / "backward" (a unit's
    computation); or a caller's own mark ("forward", "step", "end", ...).

    index: the parameter, bucket, FSDP unit or ZeRO flat tensor it concerns; -1 for none.
    """

    kind: str
    index: int = -1
    start: float = field(default_factory=time.perf_counter)
    end: float | None = None  # None when made: an instant, whose end is its start
    nbytes: int = 0

    def __post_init__(self):
        if self.end is None:  # frozen: set through object, once, at construction
            object.__setattr__(self, "end", self.start)

    # The names each timeline had before they shared this record; notebooks 08 and 12 use them.
    @property
    def time(self) -> float:
        """When an instant happened (its start)."""
        return self.start

    @property
    def unit(self) -> int:
        """The FSDP unit or ZeRO flat tensor of a collective or a computation (its index)."""
        return self.index

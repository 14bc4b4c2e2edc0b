"""Counting the values a piece of code reads back from tensors into Python.

    with HostReads() as reads:
        loss.backward()
    print(reads.total, reads.counts)     # 0, {} for torch's DDP and ours by default

On a GPU each such read is a stall: the CPU waits for the device to finish everything queued
before it, and in the middle of backward that stops the overlap of computation and
communication. Counted, in this thread: every scalar read (`item()`, `bool(t)`, `float(t)`,
`int(t)`: aten._local_scalar_dense, which the dispatcher sees), every `tolist()` (on the CPU
it reads memory directly, without the dispatcher, so the method itself is counted), and every
tensor made from Python numbers or lists (aten.lift_fresh: on a GPU, a copy from the host).
`python -m minidp.bench ddp` reports them per training step; tests/test_ddp.py holds our DDP
to none.
"""

import torch
from torch import Tensor

# TorchDispatchMode is the documented way to see every operator call (see "Extending PyTorch",
# __torch_dispatch__); only its module's name is private.
from torch.utils._python_dispatch import TorchDispatchMode

_COUNTED = {
    torch.ops.aten._local_scalar_dense.default: "scalar",
    torch.ops.aten.lift_fresh.default: "tensor from Python data",
}


class HostReads(TorchDispatchMode):
    """A context manager: `counts` ({what: how many}) and `total` of the reads inside it."""

    def __init__(self):
        super().__init__()
        self.counts: dict[str, int] = {}

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in _COUNTED:
            self._count(_COUNTED[func])
        return func(*args, **(kwargs or {}))

    def __enter__(self) -> "HostReads":
        # The one reading method the dispatcher does not see: wrapped while we count, then
        # restored (an outer HostReads's wrapper, or the method Tensor inherits from C++).
        self._previous = torch.Tensor.__dict__.get("tolist")
        real = torch.Tensor.tolist

        def tolist(tensor: Tensor):
            self._count("tolist")
            return real(tensor)

        torch.Tensor.tolist = tolist
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        if self._previous is None:
            del torch.Tensor.tolist
        else:
            torch.Tensor.tolist = self._previous
        super().__exit__(*exc)

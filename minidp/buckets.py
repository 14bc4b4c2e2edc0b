"""Gradient buckets: which gradients travel together, in one flat buffer, and when they go.

    buckets = assign_buckets(params, cap_mb=25)    # [[5, 4], [3, 2, 1, 0]]: indices into params
    bucket = Bucket(params, buckets[0])            # one buffer, a slot shaped like each parameter
    bucket.gather()                                # gradients into their slots
    dist.all_reduce(bucket.buffer)                 # one message for all of them
    bucket.scatter(world_size, as_view=True)       # averages back as the parameters' gradients

`Reducer` runs this during backward: told each gradient as it becomes ready, it launches every
bucket that is full, strictly in order, and at the end waits for them all and hands back the
averages. minidp.ddp's wrappers are built on it. Both follow torch's DDP (Li et al., "PyTorch
Distributed", VLDB 2020; its reducer.cpp): parameters in reverse order, a small first bucket,
one dtype and device per bucket, buckets launched in the same order on every rank.
"""

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor

from minidp.events import Event

# torch's DDP also caps its first bucket at 1 MB: the last layers' gradients, ready first, can
# then start travelling while most of backward is still to run.
FIRST_BUCKET_MB = 1.0


def assign_buckets(
    params: list[Tensor], cap_mb: float, first_cap_mb: float = FIRST_BUCKET_MB
) -> list[list[int]]:
    """Indices of params in reverse order, cut into buckets of about cap_mb (the first one of
    at most first_cap_mb), a new bucket wherever the dtype or device changes.

    Reverse, because backward produces the last layer's gradients first; a bucket of the last
    layers is full, and can start its all-reduce, while the first layers still compute. A
    parameter larger than the cap gets a bucket of its own.
    """
    buckets: list[list[int]] = []
    size, cap, kind = 0, min(first_cap_mb, cap_mb) * 2**20, None
    for i in reversed(range(len(params))):
        p = params[i]
        nbytes = p.numel() * p.element_size()
        if not buckets or size + nbytes > cap or (p.dtype, p.device) != kind:
            if buckets:
                cap = cap_mb * 2**20
            buckets.append([])
            size, kind = 0, (p.dtype, p.device)
        buckets[-1].append(i)
        size += nbytes
    return buckets


def check_buckets(buckets: list[list[int]], params: list[Tensor]) -> list[list[int]]:
    """The caller's buckets as lists of ints, or a ValueError saying what is wrong with them."""
    buckets = [[int(i) for i in bucket] for bucket in buckets]
    flat = [i for bucket in buckets for i in bucket]
    n = len(params)
    if sorted(flat) != list(range(n)):
        wrong = sorted({i for i in flat if not 0 <= i < n or flat.count(i) > 1})
        missing = sorted(set(range(n)) - set(flat))
        raise ValueError(
            f"buckets must hold each of the {n} parameter indices 0..{n - 1} exactly once; "
            f"repeated or out of range: {wrong}, missing: {missing}"
        )
    for k, bucket in enumerate(buckets):
        if not bucket:
            raise ValueError(f"bucket {k} is empty")
        if len({(params[i].dtype, params[i].device) for i in bucket}) > 1:
            raise ValueError(f"bucket {k} mixes dtypes or devices: one buffer holds one of each")
    return buckets


class Bucket:
    """Some parameters' gradients side by side in one flat buffer, averaged by one all-reduce."""

    def __init__(self, params: list[Tensor], indices: list[int]):
        self.indices = indices
        self.params = [params[i] for i in indices]
        first = self.params[0]
        numel = sum(p.numel() for p in self.params)
        self.buffer = torch.empty(numel, dtype=first.dtype, device=first.device)
        # Each parameter's slot: a view of the buffer with its shape (contiguous, whatever the
        # parameter's own strides; a gradient of any layout copies into it).
        self.views, offset = [], 0
        for p in self.params:
            self.views.append(self.buffer[offset : offset + p.numel()].view(p.shape))
            offset += p.numel()

    def gather(self) -> None:
        """Copy each gradient into its slot (zeros for a parameter without one), except those
        that already are their slot, as scatter(as_view=True) leaves them."""
        for p, view in zip(self.params, self.views, strict=True):
            if p.grad is None:
                view.zero_()
            elif p.grad.data_ptr() != view.data_ptr():
                view.copy_(p.grad)

    def scatter(self, world_size: int, as_view: bool, used: list[int] | None = None) -> None:
        """Divide the summed buffer by world_size and hand each average back as its gradient:
        the slot itself (as_view, no copy; torch's gradient_as_bucket_view=True), or copied into
        the parameter's own .grad. A parameter whose `used` flag is 0 keeps its .grad as it was."""
        self.buffer.div_(world_size)
        for k, (p, view) in enumerate(zip(self.params, self.views, strict=True)):
            if used is not None and not used[k]:
                continue
            if as_view:
                p.grad = view
            elif p.grad is None:
                p.grad = view.clone()
            else:
                p.grad.copy_(view)


class Reducer:
    """Averages gradients over the ranks of a group, bucket by bucket, as backward makes them.

    With overlap=False nothing is launched before finish(). With find_unused, mark_used(i)
    says that parameter i has a gradient to contribute, and finish() leaves alone what no rank
    used. Set `events = []` to record every bucket's "launch" and "done" as `Event`s.
    """

    def __init__(
        self,
        params: list[Tensor],
        names: list[str],
        buckets: list[list[int]],
        process_group: dist.ProcessGroup | None,
        all_reduce: Callable,
        overlap: bool = True,
        find_unused: bool = False,
    ):
        self.names, self.process_group, self.all_reduce = names, process_group, all_reduce
        self.overlap, self.find_unused = overlap, find_unused
        self.events: list[Event] | None = None
        self.world_size = dist.get_world_size(process_group)
        self.buckets = [Bucket(params, indices) for indices in buckets]
        self.bucket_of = {i: b for b, indices in enumerate(buckets) for i in indices}
        # Which parameters had a gradient since the last synchronisation, kept on the device:
        # summed over the ranks at the end of backward, it says which ones anybody used.
        device = params[0].device if params else torch.device("cpu")
        self.used = torch.zeros(len(params), dtype=torch.int32, device=device)
        self.works: list = []
        self.reset()

    def reset(self) -> None:
        """Wait for what is in flight (every rank launched it alike, so it finishes), and
        forget the backward pass that launched it."""
        for work in self.works:
            if work is not None:
                work.wait()
        self.ready = [False] * len(self.names)
        self.pending = [len(bucket.params) for bucket in self.buckets]  # gradients to come
        self.next = 0  # buckets start in this order on every rank, whatever the timing
        self.works = []

    def mark_used(self, i: int) -> None:
        self.used[i].fill_(1)  # on the device: nothing is read back

    def gradient_ready(self, i: int) -> None:
        """Count parameter i's gradient into its bucket, and launch every bucket that can go."""
        if self.ready[i]:  # its first part would be averaged without the second
            raise _ready_twice(self.names[i])
        self.ready[i] = True
        self.pending[self.bucket_of[i]] -= 1
        # A bucket that fills early waits for its predecessors: every rank must issue the same
        # all-reduces in the same order, or gloo would pair one rank's bucket 3 with another's 2.
        while self.overlap and self.next < len(self.buckets) and self.pending[self.next] == 0:
            self.launch_bucket(self.next)

    def launch_bucket(self, b: int) -> None:
        """Copy bucket b's gradients into its buffer and start their all-reduce."""
        bucket = self.buckets[b]
        bucket.gather()
        self.record("launch", b)
        if self.all_reduce is dist.all_reduce:
            work = dist.all_reduce(bucket.buffer, group=self.process_group, async_op=True)
            if self.events is not None:  # stamped on gloo's thread the moment the data is summed
                work.get_future().then(lambda _, b=b: self.record("done", b))
        else:  # an all-reduce of our own is synchronous: backward waits for it
            self.all_reduce(bucket.buffer, group=self.process_group)
            self.record("done", b)
            work = None
        self.works.append(work)
        self.next += 1

    def finish(self, as_view: bool) -> None:
        """Launch what is left, wait for everything, and hand back the averages."""
        missing = []  # without find_unused, every parameter must have had its gradient
        if self.next < len(self.buckets) and not self.find_unused:
            missing = [
                name for name, ready in zip(self.names, self.ready, strict=True) if not ready
            ]
        # Buckets holding a parameter this rank did not use never filled: launch them now, in
        # order, with zeros for the missing gradients, so that no other rank waits for them.
        while self.next < len(self.buckets):
            self.launch_bucket(self.next)
        used = self._global_used() if self.find_unused else None
        for bucket, work in zip(self.buckets, self.works, strict=True):
            if work is not None:
                work.wait()
            if not missing:
                flags = None if used is None else [used[i] for i in bucket.indices]
                bucket.scatter(self.world_size, as_view, flags)
        self.reset()
        if missing:
            raise _no_gradient(missing)

    def record(self, kind: str, index: int = -1) -> None:
        if self.events is not None:
            self.events.append(Event(kind, index))

    def _global_used(self) -> list[int]:
        """How many ranks used each parameter since the last synchronisation: with find_unused,
        the one value read back from the device per step. A parameter no rank used keeps its
        gradient as it was (None stays None), as in one process."""
        used = self.used.clone()
        self.used.zero_()
        dist.all_reduce(used, group=self.process_group)
        return used.tolist()


def _ready_twice(name: str) -> RuntimeError:
    return RuntimeError(
        f"DistributedDataParallel: parameter {name} got its gradient twice in one backward, "
        "and its first part would be averaged without the second. Reentrant activation "
        "checkpointing (torch.utils.checkpoint(..., use_reentrant=True)) of a layer used more "
        "than once does this: use use_reentrant=False"
    )


def _no_gradient(names: list[str]) -> RuntimeError:
    return RuntimeError(
        f"DistributedDataParallel: {len(names)} parameter(s) got no gradient in this backward: "
        f"{', '.join(names)}. Every parameter must take part in the loss, or pass "
        "find_unused_parameters=True to average only what some rank used"
    )

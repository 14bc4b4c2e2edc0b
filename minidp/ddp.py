"""Data parallelism as torch's DistributedDataParallel does it, in three steps of sophistication.

    model = DistributedDataParallel(model)          # drop-in for torch's DDP
    loss = model(x).loss; loss.backward()           # gradients are averaged when this returns
    optimizer.step()                                # so every replica takes the same step

Every variant broadcasts rank 0's parameters and buffers at construction, so all replicas start
equal, and averages gradients over the ranks during backward, so they stay equal.

    AfterBackwardDDP          waits for the whole backward, then all-reduces every gradient in
                              one flat buffer; can use one of minidp.collectives' algorithms.
    PerParameterDDP           starts an asynchronous all-reduce of each gradient the moment
                              autograd has produced it, overlapping communication with backward.
    DistributedDataParallel   groups gradients into buckets of `bucket_cap_mb` and starts one
                              all-reduce per full bucket: overlap, and few large messages.

All three share `no_sync()` for gradient accumulation and `finish_gradient_sync()`, which the
end of backward calls. They follow torch's design (Li et al., "PyTorch Distributed: Experiences
on Accelerating Data Parallel Training", VLDB 2020): buckets in reverse parameter order, launched
strictly in order on every rank, a small first bucket, an end-of-backward callback.
"""

import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
import torch.nn as nn
from torch import Tensor

# torch's DDP also caps its first bucket at 1 MB: the last layers' gradients, ready first, can
# then start travelling while most of backward is still to run.
FIRST_BUCKET_MB = 1.0


def _weak_hook(ddp: "weakref.ref[_DataParallel]") -> Callable[[Tensor], None]:
    """A gradient hook that calls ddp._hook while that DDP exists, and does nothing after."""

    def hook(param: Tensor) -> None:
        alive = ddp()
        if alive is not None:
            alive._hook(param)

    return hook


class _DataParallel(nn.Module):
    """What every variant shares: the start broadcast, the hooks, no_sync and the step's end."""

    def __init__(self, module: nn.Module, group=None, broadcast_buffers: bool = True):
        super().__init__()
        self.module = module
        self.group = group
        self.broadcast_buffers = broadcast_buffers
        self.world_size = dist.get_world_size(group)
        self.require_sync = True
        self._callback_queued = False
        # Set `events = []` to record a timeline: (what, index, time.perf_counter()) tuples, what
        # being "grad" (parameter index ready), "launch" or "done" (a bucket's all-reduce), or
        # "backward end". perf_counter is one clock for all processes of a machine (Linux).
        self.events: list[tuple[str, int, float]] | None = None
        # Parameters as the optimizer sees them: tied weights once, frozen ones not at all.
        self.params = [p for p in module.parameters() if p.requires_grad]
        with torch.no_grad():
            for t in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(t, src=self._global_rank(0), group=group)
        self.index = {p: i for i, p in enumerate(self.params)}  # tensors hash by identity
        # Through a weak reference: a hook holding the DDP itself would make parameter -> hook ->
        # DDP -> module -> parameter, a cycle through C++ that Python's collector cannot see, and
        # no DDP (with its buffers) would ever be freed. A freed DDP's hooks do nothing.
        for p in self.params:
            p.register_post_accumulate_grad_hook(_weak_hook(weakref.ref(self)))

    def _global_rank(self, rank: int) -> int:
        return rank if self.group is None else dist.get_global_rank(self.group, rank)

    def forward(self, *args, **kwargs):
        self._start_step()
        if self.broadcast_buffers:
            # Like torch's DDP: rank 0's buffers (BatchNorm's running statistics) everywhere,
            # before every forward, or each replica would keep statistics of its own data.
            with torch.no_grad():
                for b in self.module.buffers():
                    dist.broadcast(b, src=self._global_rank(0), group=self.group)
        return self.module(*args, **kwargs)

    def _start_step(self) -> None:
        """Forget any bookkeeping a backward left unfinished (it raised: OOM, a bad batch), so
        that the next backward synchronises again, as torch's DDP does in its forward."""
        self._callback_queued = False

    @contextmanager
    def no_sync(self) -> Iterator[None]:
        """Accumulate gradients locally (no communication) for the backward passes inside."""
        previous, self.require_sync = self.require_sync, False
        try:
            yield
        finally:
            self.require_sync = previous

    def _hook(self, param: Tensor) -> None:
        """Runs when autograd has accumulated `param`'s gradient for this backward pass."""
        if not self.require_sync:
            return
        if not self._callback_queued:
            # The end of backward has no public hook: like torch's DDP (reducer.cpp), queue a
            # callback on the autograd engine, run once the whole graph has been processed.
            torch.autograd.Variable._execution_engine.queue_callback(self.finish_gradient_sync)
            self._callback_queued = True
        self._record("grad", self.index[param])
        self._grad_ready(param)

    def _record(self, what: str, index: int) -> None:
        if self.events is not None:
            self.events.append((what, index, time.perf_counter()))

    def _grad_ready(self, param: Tensor) -> None:
        """A variant's reaction to one ready gradient (nothing, for after-backward)."""

    def finish_gradient_sync(self) -> None:
        """Wait until every gradient is averaged; the end of each synchronised backward calls it."""
        raise NotImplementedError

    def _flatten(self, params: list[Tensor], buffer: Tensor) -> None:
        """Copy gradients into buffer, followed by one used-flag per parameter.

        A parameter the forward pass did not use has no gradient: it contributes zeros, and a
        flag of 0. Summed over ranks, a flag of 0 means no rank used it, and its gradient stays
        None, exactly as in a single process; the flags ride in the same all-reduce, for free.
        """
        offset, flags = 0, []
        for p in params:
            n = p.numel()
            if p.grad is None:
                buffer[offset : offset + n].zero_()
            else:
                buffer[offset : offset + n].copy_(p.grad.reshape(-1))  # any memory layout
            flags.append(float(p.grad is not None))
            offset += n
        buffer[offset:] = torch.tensor(flags, dtype=buffer.dtype, device=buffer.device)

    def _unflatten(self, params: list[Tensor], buffer: Tensor) -> None:
        """Write the summed buffer back as averaged gradients."""
        offset, used = 0, buffer[-len(params) :].tolist()
        for p, flag in zip(params, used, strict=True):
            n = p.numel()
            if flag > 0:
                grad = buffer[offset : offset + n].view_as(p) / self.world_size
                if p.grad is None:
                    p.grad = grad
                else:
                    p.grad.copy_(grad)
            offset += n


def _flat_size(params: list[Tensor]) -> int:
    return sum(p.numel() for p in params) + len(params)  # gradients, then one flag each


class AfterBackwardDDP(_DataParallel):
    """All-reduce all gradients at once when backward has finished: simple, no overlap.

    `all_reduce` may be any function with the contract of dist.all_reduce(tensor), for example
    minidp.collectives.ring_all_reduce.
    """

    def __init__(
        self,
        module: nn.Module,
        group=None,
        all_reduce: Callable | None = None,
        broadcast_buffers: bool = True,
    ):
        super().__init__(module, group, broadcast_buffers)
        self.all_reduce = all_reduce or dist.all_reduce
        dtypes = {p.dtype for p in self.params}
        assert len(dtypes) <= 1, "AfterBackwardDDP flattens all gradients: one dtype only"

    def finish_gradient_sync(self) -> None:
        self._callback_queued = False
        self._record("backward end", -1)
        if not self.params:
            return
        p0 = self.params[0]
        buffer = torch.empty(_flat_size(self.params), dtype=p0.dtype, device=p0.device)
        self._flatten(self.params, buffer)
        self._record("launch", 0)
        self.all_reduce(buffer, group=self.group)
        self._record("done", 0)
        self._unflatten(self.params, buffer)


class DistributedDataParallel(_DataParallel):
    """Bucketed gradient all-reduce, overlapped with backward: our drop-in for torch's DDP."""

    def __init__(
        self, module: nn.Module, bucket_cap_mb: float = 25.0, group=None, broadcast_buffers=True
    ):
        super().__init__(module, group, broadcast_buffers)
        self.buckets = self._make_buckets(bucket_cap_mb)
        self.bucket_of = {p: i for i, bucket in enumerate(self.buckets) for p in bucket}
        self.bucket_buffers = [
            torch.empty(_flat_size(b), dtype=b[0].dtype, device=b[0].device) for b in self.buckets
        ]
        # Each parameter's place in its bucket, shaped like the parameter.
        self.views, offsets = {}, [0] * len(self.buckets)
        for p, i in self.bucket_of.items():
            self.views[p] = self.bucket_buffers[i][offsets[i] : offsets[i] + p.numel()].view_as(p)
            offsets[i] += p.numel()
        self._reset()

    def _make_buckets(self, cap_mb: float) -> list[list[Tensor]]:
        """Parameters in reverse order, cut into buckets of about cap_mb, one dtype and device each.

        Reverse, because backward produces the last layer's gradients first; a bucket of the
        last layers is full, and can start its all-reduce, while the first layers still compute.
        """
        buckets, size, cap, kind = [], 0, min(FIRST_BUCKET_MB, cap_mb) * 2**20, None
        for p in reversed(self.params):
            nbytes = p.numel() * p.element_size()
            if not buckets or size + nbytes > cap or (p.dtype, p.device) != kind:
                if buckets:
                    cap = cap_mb * 2**20
                buckets.append([])
                size, kind = 0, (p.dtype, p.device)
            buckets[-1].append(p)
            size += nbytes
        return buckets

    def _flatten(self, params: list[Tensor], buffer: Tensor) -> None:
        """Gradients into the bucket (with the used-flags, as in _DataParallel._flatten), except
        those that already are their views in it, as _unflatten leaves them."""
        for p in params:
            view = self.views[p]
            if p.grad is None:
                view.zero_()
            elif p.grad.data_ptr() != view.data_ptr():
                view.copy_(p.grad)
        flags = [float(p.grad is not None) for p in params]
        buffer[-len(params) :] = torch.tensor(flags, dtype=buffer.dtype, device=buffer.device)

    def _unflatten(self, params: list[Tensor], buffer: Tensor) -> None:
        """Average in place, and make each gradient a view of the bucket: no copy back (torch's
        DDP does the same with gradient_as_bucket_view=True). The next backward accumulates
        into the views directly when the gradients are zeroed rather than set to None."""
        buffer.div_(self.world_size)
        for p, flag in zip(params, buffer[-len(params) :].tolist(), strict=True):
            p.grad = self.views[p] if flag > 0 else None

    def _start_step(self) -> None:
        super()._start_step()
        for work in self.works:  # launched on every rank alike, so these finish
            work.wait()
        self._reset()

    def _reset(self) -> None:
        self.pending = [len(b) for b in self.buckets]  # gradients each bucket still waits for
        self.next_bucket = 0  # buckets start in this order on every rank, whatever the timing
        self.works: list = []

    def _grad_ready(self, param: Tensor) -> None:
        self.pending[self.bucket_of[param]] -= 1
        # A bucket that fills early waits for its predecessors: every rank must issue the same
        # all-reduces in the same order, or gloo would pair one rank's bucket 3 with another's 2.
        while self.next_bucket < len(self.buckets) and self.pending[self.next_bucket] == 0:
            self._launch(self.next_bucket)

    def _launch(self, i: int) -> None:
        self._flatten(self.buckets[i], self.bucket_buffers[i])
        self._record("launch", i)
        work = dist.all_reduce(self.bucket_buffers[i], group=self.group, async_op=True)
        if self.events is not None:  # stamped on gloo's thread the moment the data is summed
            work.get_future().then(lambda _, i=i: self._record("done", i))
        self.works.append(work)
        self.next_bucket += 1

    def finish_gradient_sync(self) -> None:
        self._callback_queued = False
        self._record("backward end", -1)
        # Buckets holding a parameter this rank did not use never filled: launch them now, in
        # order, with zeros for the missing gradients.
        while self.next_bucket < len(self.buckets):
            self._launch(self.next_bucket)
        for i, work in enumerate(self.works):
            work.wait()
            self._unflatten(self.buckets[i], self.bucket_buffers[i])
        self._reset()


class PerParameterDDP(DistributedDataParallel):
    """One asynchronous all-reduce per parameter, started as soon as its gradient is ready.

    The bucketed DDP with buckets of one parameter each: maximal overlap, but one message per
    parameter, each paying the network's fixed cost (alpha).
    """

    def __init__(self, module: nn.Module, group=None, broadcast_buffers: bool = True):
        super().__init__(module, 0.0, group, broadcast_buffers)

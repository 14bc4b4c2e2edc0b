"""Data parallelism as torch's DistributedDataParallel does it, in three steps of sophistication.

    model = DistributedDataParallel(model, device_ids=None, bucket_cap_mb=25)  # torch's call
    loss = model(x).loss; loss.backward()    # gradients are averaged when this returns
    optimizer.step()                         # so every replica takes the same step

Every variant broadcasts rank 0's parameters and buffers at construction, so all replicas start
equal, and averages gradients over the ranks during backward, so they stay equal. They differ in
how gradients are grouped into buckets (minidp.buckets) and when a bucket starts travelling:

    AfterBackwardDDP          one bucket of every gradient, all-reduced once backward has ended:
                              simple, no overlap.
    PerParameterDDP           a bucket per parameter, all-reduced the moment autograd has
                              produced its gradient: overlap, but one message per parameter.
    DistributedDataParallel   buckets of `bucket_cap_mb`, each all-reduced as soon as it is
                              full: overlap, and few large messages.

All three are built by torch's DDP's call (by keyword; its positional order differs after
device_ids), plus two arguments of ours: `all_reduce=`, any function with the contract of
dist.all_reduce such as minidp.collectives.ring_all_reduce (it then runs synchronously, without
overlap), and `buckets=`, lists of indices into `ddp.params` in launch order, instead of the
variant's rule. All have `no_sync()`, `finish_gradient_sync()` (the end of backward calls it),
`remove_hooks()` and `events`, a timeline of `Event`s. With find_unused_parameters=False, as in
torch's DDP, nothing is read back from the device in forward or backward.
"""

import math
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
import torch.nn as nn
from torch import Tensor

from minidp.buckets import Reducer, assign_buckets, check_buckets
from minidp.events import Event


def _weak_hook(ddp: "weakref.ref[DistributedDataParallel]", i: int) -> Callable:
    """Parameter i's gradient hook: calls ddp.post_accumulate_grad(i) while that DDP exists.

    Through a weak reference: a hook holding the DDP itself would make parameter -> hook -> DDP
    -> module -> parameter, a cycle through C++ that Python's collector cannot see, and no DDP
    (with its buckets) would ever be freed.
    """

    def hook(param: Tensor) -> None:
        alive = ddp()
        if alive is not None:
            alive.post_accumulate_grad(i)

    return hook


def _tensors(output) -> Iterator[Tensor]:
    """The tensors in a module's output: a tensor, or lists, tuples and dicts of them."""
    if isinstance(output, Tensor):
        yield output
    elif isinstance(output, list | tuple):
        for item in output:
            yield from _tensors(item)
    elif isinstance(output, dict):
        for item in output.values():
            yield from _tensors(item)


class DistributedDataParallel(nn.Module):
    """Bucketed gradient all-reduce, overlapped with backward: our drop-in for torch's DDP."""

    overlap = True  # launch each bucket during backward, as soon as it is full

    def __init__(
        self,
        module: nn.Module,
        device_ids: list[int | torch.device] | None = None,
        process_group: dist.ProcessGroup | None = None,
        bucket_cap_mb: float = 25.0,
        find_unused_parameters: bool = False,
        broadcast_buffers: bool = True,
        gradient_as_bucket_view: bool = False,
        *,
        all_reduce: Callable | None = None,
        buckets: list[list[int]] | None = None,
    ):
        super().__init__()
        _check_device_ids(module, device_ids)
        self.module = module
        self.process_group = process_group
        self.bucket_cap_mb = bucket_cap_mb
        self.find_unused_parameters = find_unused_parameters
        self.broadcast_buffers = broadcast_buffers
        self.gradient_as_bucket_view = gradient_as_bucket_view
        self.require_sync = True
        self._callback_queued = False
        # Parameters as the optimizer sees them: tied weights once, frozen ones not at all.
        self.params = [p for p in module.parameters() if p.requires_grad]
        names = {p: name for name, p in module.named_parameters()}  # tensors hash by identity
        with torch.no_grad():
            for t in [*module.parameters(), *module.buffers()]:
                dist.broadcast(t, src=self._global_rank(0), group=process_group)
        given = None if buckets is None else check_buckets(buckets, self.params)
        self.buckets = self._default_buckets() if given is None else given
        self.reducer = Reducer(
            self.params,
            [names[p] for p in self.params],
            self.buckets,
            process_group,
            all_reduce or dist.all_reduce,
            self.overlap,
            find_unused_parameters,
        )
        self._ref = weakref.ref(self)
        self._handles = [
            p.register_post_accumulate_grad_hook(_weak_hook(self._ref, i))
            for i, p in enumerate(self.params)
        ]
        weakref.finalize(self, _remove, self._handles)  # a freed DDP leaves no hook behind

    def _default_buckets(self) -> list[list[int]]:
        return assign_buckets(self.params, self.bucket_cap_mb)

    def _global_rank(self, rank: int) -> int:
        group = self.process_group
        return rank if group is None else dist.get_global_rank(group, rank)

    @property
    def events(self) -> list[Event] | None:
        """Set to [] to record a timeline of this DDP's Events; None records nothing."""
        return self.reducer.events

    @events.setter
    def events(self, events: list[Event] | None) -> None:
        self.reducer.events = events

    def forward(self, *args, **kwargs):
        # Forget what a backward that raised (OOM, a bad batch) left unfinished, so that the
        # next backward synchronises again, as torch's DDP does in its forward.
        self.reducer.reset()
        self._callback_queued = False
        if self.broadcast_buffers:
            # Like torch's DDP: rank 0's buffers (BatchNorm's running statistics) everywhere,
            # before every forward, or each replica would keep statistics of its own data.
            with torch.no_grad():
                for b in self.module.buffers():
                    dist.broadcast(b, src=self._global_rank(0), group=self.process_group)
        output = self.module(*args, **kwargs)
        # Backward reaches the output first, in the outermost backward pass even where
        # checkpointed layers run backward passes of their own inside it: the end of that
        # outermost pass is the one to wait for (torch's DDP hooks its _DDPSink there).
        for t in _tensors(output):
            if t.grad_fn is not None:
                t.grad_fn.register_prehook(lambda grads, ref=self._ref: _queue(ref))
        return output

    @contextmanager
    def no_sync(self) -> Iterator[None]:
        """Accumulate gradients locally (no communication) for the backward passes inside."""
        previous, self.require_sync = self.require_sync, False
        try:
            yield
        finally:
            self.require_sync = previous

    def post_accumulate_grad(self, i: int) -> None:
        """What parameter i's hook runs, once autograd has accumulated its gradient."""
        if self.find_unused_parameters:
            self.reducer.mark_used(i)
        if not self.require_sync:
            return  # inside no_sync(): the gradient stays here, and accumulates
        if not self._callback_queued:  # a backward that did not start at our output
            _queue(self._ref)
        self.reducer.record("grad", i)
        self.reducer.gradient_ready(i)

    def finish_gradient_sync(self) -> None:
        """Wait until every gradient is averaged; the end of each synchronised backward calls it."""
        self._callback_queued = False
        self.reducer.record("backward end")
        self.reducer.finish(self.gradient_as_bucket_view)

    def remove_hooks(self) -> None:
        """Take this DDP's hooks off the parameters: it no longer averages anything."""
        _remove(self._handles)


def _queue(ref: "weakref.ref[DistributedDataParallel]") -> None:
    """Queue ddp.finish_gradient_sync for the end of the backward pass now running, once."""
    ddp = ref()
    if ddp is None or not ddp.require_sync or ddp._callback_queued:
        return
    # The end of backward has no public hook: like torch's DDP (reducer.cpp), queue a callback
    # on the autograd engine, run once the whole graph has been processed.
    torch.autograd.Variable._execution_engine.queue_callback(ddp.finish_gradient_sync)
    ddp._callback_queued = True


def _remove(handles: list) -> None:
    for handle in handles:
        handle.remove()


def _check_device_ids(module: nn.Module, device_ids: list | None) -> None:
    """device_ids, as in torch's DDP: None, or the one GPU that holds the whole module."""
    if device_ids is None:
        return
    devices = {p.device for p in module.parameters()}
    gpus = [torch.device("cuda", d) if isinstance(d, int) else torch.device(d) for d in device_ids]
    if len(gpus) != 1 or devices != set(gpus):
        raise ValueError(
            f"device_ids={device_ids} must name the one GPU that holds the module (its "
            f"parameters are on {sorted(map(str, devices))}); leave it None for CPU modules"
        )


class PerParameterDDP(DistributedDataParallel):
    """One all-reduce per parameter, started as soon as its gradient is ready: maximal overlap,
    but one message per parameter, each paying the network's fixed cost (alpha)."""

    def _default_buckets(self) -> list[list[int]]:
        return [[i] for i in reversed(range(len(self.params)))]


class AfterBackwardDDP(DistributedDataParallel):
    """Every gradient in one bucket (one per dtype), all-reduced when backward has ended."""

    overlap = False

    def _default_buckets(self) -> list[list[int]]:
        return assign_buckets(self.params, math.inf, math.inf)  # one per run of a dtype

"""Fully sharded data parallelism (FSDP, ZeRO stage 3): each rank keeps 1/K of every parameter,
gradient and optimizer state, and a unit's parameters are whole only while that unit computes.

    model = FullyShardedDataParallel(GPT(config), units=(Block,))  # every block a unit
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)     # steps this rank's shards
    model(x, y)[1].backward()     # gradients are averaged into the shards when this returns
    optimizer.step()

A unit is a submodule whose parameters are sharded together (minidp.flat: laid end to end, cut
into K equal shards). Just before its forward an all-gather makes them whole; just after it they
are freed. In backward they are gathered again, the unit's gradients are computed, then
reduce-scattered, averaged, into the shards' .grad, and freed. While one unit computes, the next
one's all-gather is already on its way (prefetch). Parameters of no unit stay replicated and are
averaged over the ranks, as DDP does, in one all-reduce at the end of backward.

`.module.named_parameters()` yields this rank's piece of each unit parameter under its own name,
shaped (1, ..., 1, n) with the parameter's number of dimensions, so any torch optimizer steps
the shards (its state is sharded for free) and rules by `p.dim()` (weight decay) still hold.
`compute_dtype` (bf16 or fp16) casts a unit's shard before the all-gather (half the bytes) and
runs the unit in it (its floating-point inputs cast too, and the outputs of the outermost unit
cast back); shards, gradients (reduced in the shards' dtype) and optimizer stay in the
parameters' own dtype (fp32 master weights). Parameters outside units are not cast.

It follows torch's FSDP2 (torch.distributed.fsdp.fully_shard: hooks around each unit, storage
freed and re-gathered under autograd's saved tensors, prefetch) with the flat shards of torch's
first FSDP, and the ZeRO paper's stage 3 (Rajbhandari et al. 2020).
"""

import time
import weakref
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn as nn
from torch import Tensor

from minidp.events import Event
from minidp.flat import FlatLayout, all_reduce, pack, unpack
from minidp.fsdp_unit import AfterBackward, Unit, cast, find_units, tensors_in

_WRAPPED: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()


class FullyShardedDataParallel(nn.Module):
    """Shard `units` (module classes, or a predicate on modules) of `module` over the ranks."""

    def __init__(
        self,
        module: nn.Module,
        units: type | tuple[type, ...] | Callable[[nn.Module], bool],
        compute_dtype: torch.dtype | None = None,
        process_group=None,
        prefetch: bool = True,
    ):
        super().__init__()
        if isinstance(module, FullyShardedDataParallel) or any(
            m in _WRAPPED for m in module.modules()
        ):
            raise ValueError("this module is already wrapped in FullyShardedDataParallel")
        if compute_dtype is not None and not compute_dtype.is_floating_point:
            raise ValueError(f"compute_dtype must be a floating-point dtype, not {compute_dtype}")
        self.module, self.group, self.prefetch = module, process_group, prefetch
        self.world_size = dist.get_world_size(process_group)
        self.events: list[Event] | None = None  # set to [] to record a timeline
        src = 0 if process_group is None else dist.get_global_rank(process_group, 0)
        found, self.replicated = find_units(module, units)
        self.units = [
            Unit(i, m, members, compute_dtype, process_group, src, self)
            for i, (m, members) in enumerate(found)
        ]
        with torch.no_grad():  # every replica starts from rank 0's values, as under DDP
            for t in [*self.replicated, *module.buffers()]:
                dist.broadcast(t, src=src, group=process_group)
        for unit in self.units:
            unit.module.register_forward_pre_hook(self._pre_forward(unit), with_kwargs=True)
            unit.module.register_forward_hook(self._post_forward(unit))
        for p in self.replicated:  # the end of backward, when no unit's hook starts it
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(_weak(weakref.ref(self)))
        self._predicted: list[int] = []  # units in the order the last forward entered them
        self._entered: list[int] = []  # ... and this forward
        self._finished: list[Unit] = []  # units in the order their forwards ended, for backward
        self._queued, self._depth = False, 0  # depth: units entered and not yet left
        _WRAPPED.add(module)

    def forward(self, *args, **kwargs):
        self._predicted, self._entered = self._entered or self._predicted, []
        self._depth = 0
        output = self.module(*args, **kwargs)
        for unit in self.units:  # a prefetched unit that this forward did not use after all
            if unit.idle():
                unit.free()
        return output

    def _record(self, kind: str, unit: int, start: float) -> None:
        if self.events is not None:
            self.events.append(Event(kind, unit, start, time.perf_counter()))

    def _pre_forward(self, unit: Unit):
        def hook(module, args, kwargs):
            position, self._depth = len(self._entered), self._depth + 1
            self._entered.append(unit.index)
            unit.gather()
            unit.wait()  # before the next one starts: two at once would share the wire
            if self.prefetch and position + 1 < len(self._predicted):
                self.units[self._predicted[position + 1]].gather()
            unit.use_full(True)
            if torch.is_grad_enabled():
                args, kwargs = self._after_backward(unit, args, kwargs)
            if unit.compute_dtype is not None:
                args = cast(args, unit.compute_dtype)
                kwargs = {k: cast(v, unit.compute_dtype) for k, v in kwargs.items()}
            unit.started = time.perf_counter()
            return args, kwargs

        return hook

    def _after_backward(self, unit: Unit, args: tuple, kwargs: dict):
        """Route the inputs that need a gradient through AfterBackward."""
        names = [k for k, v in kwargs.items() if isinstance(v, Tensor) and v.requires_grad]
        slots = [i for i, a in enumerate(args) if isinstance(a, Tensor) and a.requires_grad]
        if not names and not slots:
            return args, kwargs
        routed = AfterBackward.apply(
            lambda: self._post_backward(unit),
            *[args[i] for i in slots],
            *[kwargs[k] for k in names],
        )
        args = list(args)
        for i, t in zip(slots, routed[: len(slots)], strict=True):
            args[i] = t
        return tuple(args), {**kwargs, **dict(zip(names, routed[len(slots) :], strict=True))}

    def _post_forward(self, unit: Unit):
        def hook(module, args, output):
            self._record("forward", unit.index, unit.started)
            unit.use_full(False)
            self._depth -= 1
            if unit.compute_dtype is not None and self._depth == 0:  # leaving the last unit:
                output = cast(output, unit.dtype)  # back to the dtype of the rest of the model
            tensors = tensors_in(output)
            needs_backward = [t for t in tensors or [] if t.requires_grad]
            if torch.is_grad_enabled() and (tensors is None or needs_backward):
                position = len(self._finished)  # backward meets the units in reverse order
                self._finished.append(unit)
                unit.calls += unit.trainable
                for t in needs_backward:
                    t.register_hook(lambda grad: self._pre_backward(position))
            if tensors is None and torch.is_grad_enabled():
                unit.keep = True  # outputs we cannot see may need the parameters in backward
            else:
                unit.free()
            return output

        return hook

    def _pre_backward(self, position: int) -> None:
        unit = self._finished[position]
        if not self._queued:
            # The end of backward has no public hook: like torch's DDP and FSDP, queue a
            # callback on the autograd engine, run once the whole graph has been processed.
            torch.autograd.Variable._execution_engine.queue_callback(self.finish_gradient_sync)
            self._queued = True
        unit.gather()
        unit.wait()
        if self.prefetch:  # the unit whose forward ended before this one's: next in backward
            earlier = [
                u
                for u in self._finished[:position]
                if u is not unit and (u.calls > 0 or not u.trainable)
            ]
            if earlier:
                earlier[-1].gather()
        unit.started = time.perf_counter()

    def _post_backward(self, unit: Unit) -> None:
        self._record("backward", unit.index, unit.started)
        if not unit.trainable:
            unit.free()
            return
        unit.calls -= 1
        if unit.calls == 0:  # the last use of this unit in backward: its gradients are complete
            unit.reduce()

    def finish_gradient_sync(self) -> None:
        """Wait until every gradient is averaged into its shard; the end of backward calls it."""
        self._queued = False
        for unit in self.units:  # those whose inputs needed no gradient: nothing called them
            if unit.calls > 0:
                unit.reduce()
        pending = self._start_replicated()
        for unit in self.units:
            unit.finish()
        for work, layout, params, had in pending:
            out = work.wait()[0]
            targets = [params[p.index] for p in layout.pieces(0)]
            unpack(layout, out, layout.pieces(0), targets, had, self.world_size, accumulate=False)
        self._finished = []

    def _start_replicated(self) -> list:
        """Start averaging the replicated parameters' gradients: one all-reduce per dtype."""
        params = [p for p in self.replicated if p.requires_grad]
        pending = []
        for kind in sorted({(p.dtype, p.device) for p in params}, key=str):
            same = [p for p in params if (p.dtype, p.device) == kind]
            layout = FlatLayout([p.numel() for p in same], 1)  # one "rank": the flat vector
            grads = [p.grad for p in same]
            buffer = pack(layout, grads, kind[0])
            work = all_reduce(buffer, self.group, self.events, -1)
            pending.append((work, layout, same, [g is not None for g in grads]))
        return pending

    # ---- checkpoints: full tensors under the original names, on every rank

    @torch.no_grad()
    def full_state_dict(self) -> dict[str, Tensor]:
        """Every parameter and buffer, whole, under its original name (a collective)."""
        full = {}
        for unit in self.units:
            full.update(unit.gather_full())  # shard Parameter -> full tensor
        state = self.module.state_dict()
        for name, p in self.module.named_parameters(remove_duplicate=False):
            if p in full:
                state[name] = full[p]
        return state

    @torch.no_grad()
    def load_full_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load a full_state_dict (the same on every rank): each rank keeps its own shards."""
        expected = set(self.module.state_dict())
        if set(state) != expected:
            missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
            raise KeyError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
        pieces = {s: (u, i) for u in self.units for i, s in enumerate(u.shards)}
        for name, p in self.module.named_parameters(remove_duplicate=False):
            if p in pieces:
                unit, i = pieces[p]
                p.copy_(unit.cut(i, state[name]))
            else:
                p.copy_(state[name])
        for name, b in self.module.named_buffers():
            b.copy_(state[name])


def _weak(fsdp: "weakref.ref[FullyShardedDataParallel]") -> Callable[[Tensor], None]:
    """A gradient hook that queues the end of backward while that FSDP exists (held weakly, as
    ddp.py explains: a hook on a parameter holding its wrapper would never be freed)."""

    def hook(param: Tensor) -> None:
        alive = fsdp()
        if alive is not None and not alive._queued:
            torch.autograd.Variable._execution_engine.queue_callback(alive.finish_gradient_sync)
            alive._queued = True

    return hook

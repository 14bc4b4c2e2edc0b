"""One unit of FullyShardedDataParallel: its flat shard, its parameters gathered whole, and its
gradients reduce-scattered; `find_units`, which decides which parameters each unit owns; and
what the hooks around a unit need (AfterBackward, tensors_in, cast).

    members, replicated = find_units(model, (Block,))   # [(module, [(param, places)])], [param]
    unit = Unit(0, *members[0], compute_dtype=None, group=None, src=0, owner=fsdp)
    unit.gather(); unit.wait(); unit.use_full(True)      # the module computes with whole weights
    unit.use_full(False); unit.free()                    # and holds its shards again

A unit owns a parameter when every module that holds it lies inside that unit (and in no unit
nested in it); a parameter shared across units, or with the rest of the model (a GPT's tied
embedding and output head, one of them outside every unit), stays replicated.

The gathered parameters are nn.Parameters whose storage is that of one flat buffer; freeing sets
the storage's size to 0 and gathering gives it back, so the tensors that autograd saved in
forward hold the same parameters again when backward needs them. The all-gather writes through
the flat buffer, not through those parameters, so their version counters do not move and
autograd does not mistake the re-gathered values (the same values) for an in-place change.
"""

from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn as nn
from torch import Tensor

from minidp.flat import FlatLayout, all_gather, pack, reduce_scatter, unpack

Places = list[tuple[nn.Module, str]]  # where a parameter is registered: (module, attribute)


def _matcher(units) -> Callable[[nn.Module], bool]:
    if isinstance(units, type | tuple):
        return lambda m: isinstance(m, units)
    return units


def find_units(root: nn.Module, units) -> tuple[list[tuple[nn.Module, list]], list[Tensor]]:
    """The units of `root` (module classes, or a predicate on modules), each as (module,
    [(parameter, places)]) in module order, and the parameters left replicated."""
    match = _matcher(units)
    owners: dict[Tensor, set] = {}  # parameter -> the units (None: no unit) its holders lie in
    places: dict[Tensor, Places] = {}
    found: list[nn.Module] = []
    seen: set[tuple[int, int]] = set()

    def walk(module: nn.Module, unit: nn.Module | None) -> None:
        if match(module):
            unit = module
            if module not in found:
                found.append(module)
        if (id(module), id(unit)) in seen:  # a module reachable twice, under the same unit
            return
        seen.add((id(module), id(unit)))
        for name, p in module.named_parameters(recurse=False, remove_duplicate=False):
            owners.setdefault(p, set()).add(unit)
            if (module, name) not in places.setdefault(p, []):
                places[p].append((module, name))
        for child in module.children():
            walk(child, unit)

    walk(root, None)
    _check_matches(root, units, found)
    owned = {u: [] for u in found}
    replicated = []
    for p, where in owners.items():
        if len(where) == 1 and None not in where:
            owned[next(iter(where))].append((p, places[p]))
        else:
            replicated.append(p)
    return [(u, owned[u]) for u in found if owned[u]], replicated


def _check_matches(root: nn.Module, units, found: list[nn.Module]) -> None:
    """One clear error for units that match nothing (a typo, a class of another model)."""
    classes = (units,) if isinstance(units, type) else units if isinstance(units, tuple) else ()
    for cls in classes:
        if not any(isinstance(m, cls) for m in found):
            raise ValueError(f"units: no submodule of {type(root).__name__} is a {cls.__name__}")
    if not found:
        raise ValueError(f"units: the predicate matched no submodule of {type(root).__name__}")


# ---- what the hooks around a unit need


class AfterBackward(torch.autograd.Function):
    """Identity on a unit's inputs, whose backward runs when the unit's backward is complete:
    the gradient of an input comes only after every operation of the unit that used it."""

    @staticmethod
    def forward(ctx, callback: Callable[[], None], *inputs: Tensor):
        ctx.callback = callback
        return inputs

    @staticmethod
    def backward(ctx, *grads: Tensor):
        ctx.callback()
        return (None, *grads)


def tensors_in(obj) -> list[Tensor] | None:
    """The tensors in a module's output (a tensor, or a tuple, list or dict of them); None for
    anything else, whose tensors this wrapper cannot see."""
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, tuple | list | dict):
        parts = [tensors_in(o) for o in (obj.values() if isinstance(obj, dict) else obj)]
        return None if any(p is None for p in parts) else [t for p in parts for t in p]
    return [] if obj is None or isinstance(obj, int | float | bool | str) else None


def cast(obj, dtype: torch.dtype):
    """obj with its floating-point tensors (top level, or in a tuple or list) cast to dtype."""
    if isinstance(obj, Tensor):
        return obj.to(dtype) if obj.is_floating_point() else obj
    if isinstance(obj, tuple | list):
        return type(obj)(cast(o, dtype) for o in obj)
    return obj


def _piece_shape(p: Tensor, a: int, b: int) -> tuple[int, ...]:
    """The shape of elements [a, b) of p: p's own when it is all of p (one rank, or a small
    parameter), else (1, ..., 1, n), keeping p's number of dimensions (a scalar's stays 1-D)."""
    return tuple(p.shape) if (a, b) == (0, p.numel()) else (1,) * (p.dim() - 1) + (b - a,)


class Unit:
    """One unit's parameters: this rank's flat shard of them, and their gathered whole form."""

    def __init__(
        self, index: int, module: nn.Module, members: list, compute_dtype, group, src, owner
    ):
        params = [p for p, _ in members]
        if len({(p.dtype, p.device) for p in params}) > 1:
            raise ValueError(
                f"unit {type(module).__name__}: its parameters need one dtype and device"
            )
        self.index, self.module, self.owner, self.group = index, module, owner, group
        self.places = [where for _, where in members]
        self.dtype, device = params[0].dtype, params[0].device
        self.compute_dtype = None if compute_dtype in (None, self.dtype) else compute_dtype
        self.requires_grad = [p.requires_grad for p in params]
        self.trainable = any(self.requires_grad)
        rank, K = dist.get_rank(group), dist.get_world_size(group)
        self.layout = layout = FlatLayout([p.numel() for p in params], K)
        with torch.no_grad():  # rank 0's values, laid end to end; this rank keeps its shard
            flat = torch.zeros(layout.padded_numel, dtype=self.dtype, device=device)
            for p, offset in zip(params, layout.offsets, strict=True):
                flat[offset : offset + p.numel()] = p.reshape(-1)
            dist.broadcast(flat, src=src, group=group)
            S = layout.shard_numel
            self.shard = flat[rank * S : (rank + 1) * S].clone()  # (S,)
        self.pieces = [piece for piece in layout.pieces(rank) if self.requires_grad[piece.index]]
        ranges = {i: (a, b, at) for i, a, b, at in layout.pieces(rank)}
        self.ranges = [ranges.get(i, (0, 0, 0)) for i in range(len(params))]
        self.shards = [  # views of self.shard: the optimizer's steps land in it
            nn.Parameter(self.shard[at : at + b - a].view(_piece_shape(p, a, b)), p.requires_grad)
            for p, (a, b, at) in zip(params, self.ranges, strict=True)
        ]
        gathered = self.compute_dtype or self.dtype
        self.flat = torch.empty(layout.padded_numel, dtype=gathered, device=device)  # (K S,)
        self.nbytes = self.flat.untyped_storage().nbytes()
        self.full = [
            nn.Parameter(
                torch.empty(0, dtype=gathered, device=device).set_(
                    self.flat.untyped_storage(), offset, p.shape
                ),
                p.requires_grad,
            )
            for p, offset in zip(params, layout.offsets, strict=True)
        ]
        self.flat.untyped_storage().resize_(0)
        self.state, self.gathering, self.reducing = "sharded", None, None
        self.calls, self.keep, self.started = 0, False, 0.0
        self.use_full(False)

    def use_full(self, whole: bool) -> None:
        """Register the gathered parameters in the modules (for forward), or the shards."""
        for i, where in enumerate(self.places):
            for module, name in where:
                setattr(module, name, self.full[i] if whole else self.shards[i])

    def gather(self) -> None:
        """Start the all-gather of this unit's parameters, unless they are whole or on the way."""
        if self.state != "sharded":
            return
        self.flat.untyped_storage().resize_(self.nbytes)
        # Cast before the all-gather: a bf16 shard is half the bytes on the wire.
        send = self.shard if self.compute_dtype is None else self.shard.to(self.compute_dtype)
        self.gathering = all_gather(self.flat, send, self.group, self.owner.events, self.index)
        self.state = "gathering"

    def wait(self) -> None:
        if self.state == "gathering":
            self.gathering.wait()
            self.gathering, self.state = None, "gathered"

    def idle(self) -> bool:
        """Whole, or on the way, without anyone needing it now."""
        return self.state != "sharded" and not self.keep

    def free(self) -> None:
        """Give the whole parameters' memory back (autograd's saved tensors keep only metadata)."""
        if self.state != "sharded":
            self.wait()
            self.flat.untyped_storage().resize_(0)
            self.state, self.keep = "sharded", False

    def reduce(self) -> None:
        """Start reduce-scattering this backward's gradients into the shards, and free."""
        grads = [f.grad for f in self.full]
        for f in self.full:
            f.grad = None
        self.calls = 0
        # Summed in the shards' dtype (float32 under bf16 compute): K bf16 addends lose bits.
        buffer = pack(self.layout, grads, self.dtype)
        had = [g is not None for g in grads]
        self.reducing = (reduce_scatter(buffer, self.group, self.owner.events, self.index), had)
        self.free()

    def finish(self) -> None:
        """Wait for the reduce-scatter and add the averaged gradients to the shards' .grad."""
        if self.reducing is not None:
            work, had = self.reducing
            targets = [self.shards[piece.index] for piece in self.pieces]
            unpack(self.layout, work.wait(), self.pieces, targets, had, self.layout.world_size)
            self.reducing = None
        self.free()

    def gather_full(self) -> dict[Tensor, Tensor]:
        """Each shard Parameter -> its whole parameter, in the parameters' own dtype."""
        flat = torch.empty(self.layout.padded_numel, dtype=self.dtype, device=self.shard.device)
        all_gather(flat, self.shard, self.group).wait()
        return {
            s: flat[o : o + f.numel()].view(f.shape).clone()
            for s, f, o in zip(self.shards, self.full, self.layout.offsets, strict=True)
        }

    def cut(self, i: int, whole: Tensor) -> Tensor:
        """This rank's piece of parameter i out of its whole value."""
        a, b, _ = self.ranges[i]
        return whole.reshape(-1)[a:b].view(self.shards[i].shape)

"""ZeRO stage 1: shard the optimizer's state across data-parallel ranks.

    optimizer = ZeroRedundancyOptimizer(model.parameters(), torch.optim.AdamW, lr=3e-4)
    model(x, y)[1].backward()   # no DDP wrapper: each rank keeps its own gradients
    optimizer.step()            # reduce-scatter them, update this rank's shard, all-gather it

With plain data parallelism every rank keeps the whole optimizer state: for Adam, two tensors per
parameter, twice the parameters' own memory. ZeRO-1 (Rajbhandari et al., "ZeRO: Memory
Optimizations Toward Training Trillion Parameter Models", SC 2020) lays the parameters end to end
and gives each of the K ranks 1/K of them (minidp.flat: by elements, padded evenly, so any model
balances); each rank's optimizer holds the state of its shard only. A step is the two halves of a
ring all-reduce with an update in between: a reduce-scatter hands each rank the averaged gradient
of its own shard, the rank updates that shard, and an all-gather hands every rank every updated
shard. Exactly the bytes of DDP's all-reduce, and the same update as the unsharded optimizer.

Two ways to use it:

    average_gradients=True    (the default) the model is NOT wrapped in DDP: backward leaves each
                              rank's own gradients and step() averages them in its reduce-scatter.
                              p.grad keeps this rank's own gradient, so clip_grad_norm_ on the
                              parameters would clip that, not the average: call reduce_gradients()
                              first, and clip the pieces in param_groups by their global norm
                              (minidp.clipping.clip_grad_norm_), as minidp.train does.
    average_gradients=False   the model IS wrapped in DDP, so every gradient is already averaged;
                              step() only all-gathers: DDP's bytes and half again, as torch's
                              ZeroRedundancyOptimizer, which broadcasts each owner's parameters
                              after DDP's all-reduce.

The API mirrors torch.distributed.optim.ZeroRedundancyOptimizer: the wrapped optimizer's class and
keyword arguments, `consolidate_state_dict(to)` then `state_dict()` for a checkpoint, which is in
the unsharded optimizer's format. The wrapped optimizer must act element by element (SGD, Adam,
AdamW, ...), as every sharded optimizer assumes: its state is cut along with the parameters.
"""

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from minidp.events import Event
from minidp.flat import (
    FlatLayout,
    Piece,
    all_gather,
    cut_state,
    gather_state,
    pack,
    reduce_scatter,
    unpack,
)


def _piece(p: Tensor, a: int, b: int) -> Tensor:
    """Elements [a, b) of p, for the optimizer: a view, which it updates in place (a 0-dim p's
    only piece is p); for a parameter of another memory layout, which cannot be viewed flat, a
    copy, refreshed before each step."""
    if p.dim() == 0:
        return p.detach()
    if p.is_contiguous():
        return p.detach().view(-1)[a:b]
    return p.detach().reshape(-1)[a:b].clone()


class _Flat:
    """The parameters of one dtype and device, laid end to end; this rank's pieces of them."""

    def __init__(self, params: list[Tensor], rank: int, world_size: int):
        self.params = params
        self.layout = FlatLayout([p.numel() for p in params], world_size)
        self.pieces: list[Piece] = self.layout.pieces(rank)
        self.views = [_piece(params[i], a, b) for i, a, b, _ in self.pieces]


class ZeroRedundancyOptimizer:
    """Any element-wise torch optimizer, with its state sharded across the ranks of `group`."""

    def __init__(
        self,
        params,
        optimizer_class: type[torch.optim.Optimizer],
        group=None,
        average_gradients: bool = True,
        **defaults,
    ):
        self.group, self.average_gradients = group, average_gradients
        self.rank, self.world_size = dist.get_rank(group), dist.get_world_size(group)
        self.events: list[Event] | None = None  # set to [] to record each collective
        self._reduced = False  # reduce_gradients() has run since the last step
        groups = list(params)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        # Every parameter in a fixed global order, so that all ranks agree on who holds what.
        self.all_groups = [{**g, "params": list(g["params"])} for g in groups]
        self.all_params = [p for g in self.all_groups for p in g["params"]]
        src = 0 if group is None else dist.get_global_rank(group, 0)
        with torch.no_grad():  # replicas start equal, as DDP would make them
            for p in self.all_params:
                dist.broadcast(p, src=src, group=group)
        # One flat vector per dtype and device (a reduce-scatter sums one dtype), in a fixed order.
        kinds = sorted({(p.dtype, p.device) for p in self.all_params}, key=str)
        self.flats = [
            _Flat(
                [p for p in self.all_params if (p.dtype, p.device) == k], self.rank, self.world_size
            )
            for k in kinds
        ]
        index = {p: i for i, p in enumerate(self.all_params)}  # tensors hash by identity
        group_of = {p: g for g, group_ in enumerate(self.all_groups) for p in group_["params"]}
        mine: list[list[Tensor]] = [[] for _ in self.all_groups]
        self.source: dict[Tensor, tuple[int, int, int]] = {}  # piece -> parameter index, range
        for flat in self.flats:
            for (i, a, b, _), view in zip(flat.pieces, flat.views, strict=True):
                mine[group_of[flat.params[i]]].append(view)
                self.source[view] = (index[flat.params[i]], a, b)
        # Empty groups are kept (a rank may hold nothing of a group) so group indices line up.
        self.optim = optimizer_class(
            [{**g, "params": m} for g, m in zip(self.all_groups, mine, strict=True)], **defaults
        )

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The local optimizer's groups: set `lr` here as on any optimizer (same on every rank)."""
        return self.optim.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._reduced = False
        for flat in self.flats:  # pieces that reduce_gradients() gave a gradient
            for view in flat.views:
                view.grad = None
        for p in self.all_params:  # every gradient, not only this rank's shard
            if set_to_none:
                p.grad = None
            elif p.grad is not None:  # as torch.optim does; a DDP bucket's view cannot detach_
                if p.grad.grad_fn is not None:
                    p.grad.detach_()
                else:
                    p.grad.requires_grad_(False)
                p.grad.zero_()

    @torch.no_grad()
    def step(self, closure=None) -> None:
        """Average this rank's shard of the gradients, update it, and share it: afterwards every
        rank has every updated parameter."""
        if closure is not None:
            raise NotImplementedError("closures would run the model once per rank's shard")
        if not self._reduced:
            self._shard_gradients()
        self._reduced = False
        for flat in self.flats:
            for (i, a, b, _), view in zip(flat.pieces, flat.views, strict=True):
                if not flat.params[i].is_contiguous():  # a copy: bring it up to date
                    view.copy_(flat.params[i].reshape(-1)[a:b])
        self.optim.step()
        works = []
        for u, flat in enumerate(self.flats):
            p0 = flat.params[0]
            send = torch.zeros(flat.layout.shard_numel, dtype=p0.dtype, device=p0.device)
            for (_, a, b, at), view in zip(flat.pieces, flat.views, strict=True):
                send[at : at + b - a] = view.reshape(-1)
                view.grad = None  # the shard's gradient has served
            full = torch.empty(flat.layout.padded_numel, dtype=send.dtype, device=send.device)
            works.append(all_gather(full, send, self.group, self.events, u))
        for flat, work in zip(self.flats, works, strict=True):
            full = work.wait()
            for p, offset in zip(flat.params, flat.layout.offsets, strict=True):
                p.copy_(full[offset : offset + p.numel()].view(p.shape))

    @torch.no_grad()
    def reduce_gradients(self) -> None:
        """Give this rank's pieces (the tensors in param_groups) their averaged gradients now,
        once per step, rather than in step(): for what must see the averaged gradient before
        the update, such as clipping it by its global norm."""
        self._shard_gradients()
        self._reduced = True

    def _shard_gradients(self) -> None:
        """Give each piece the averaged gradient of its range: reduce-scattered, or cut out of
        gradients that DDP has already averaged."""
        if not self.average_gradients:
            for flat in self.flats:
                for (i, a, b, _), view in zip(flat.pieces, flat.views, strict=True):
                    grad = flat.params[i].grad
                    view.grad = None if grad is None else grad.reshape(-1)[a:b].view(view.shape)
            return
        pending = []
        for u, flat in enumerate(self.flats):
            grads = [p.grad for p in flat.params]
            buffer = pack(flat.layout, grads, flat.params[0].dtype)
            pending.append((reduce_scatter(buffer, self.group, self.events, u), grads))
        for flat, (work, grads) in zip(self.flats, pending, strict=True):
            out = work.wait()
            had = [g is not None for g in grads]
            unpack(flat.layout, out, flat.pieces, flat.views, had, self.world_size)

    # ---- checkpoints: the full state, in the unsharded optimizer's own format

    def local_state_numel(self) -> int:
        """Elements of optimizer state this rank holds (its memory cost, in numbers)."""
        return sum(
            t.numel() for s in self.optim.state.values() for t in s.values() if torch.is_tensor(t)
        )

    def consolidate_state_dict(self, to: int = 0) -> None:
        """Gather every shard's state on rank `to` (a collective: call it on every rank)."""
        shapes = {i: p.shape for i, p in enumerate(self.all_params)}
        state = gather_state(self.source, self.optim.state, shapes, self.group, to)
        self._consolidated = None
        if state is not None:
            self._consolidated = {"state": state, "param_groups": self._full_groups()}

    def _full_groups(self) -> list[dict]:
        """The param_groups of the unsharded optimizer: hyperparameters, and global indices."""
        groups, start = [], 0
        for g, local in zip(self.all_groups, self.optim.param_groups, strict=True):
            hyper = {k: v for k, v in local.items() if k != "params"}
            groups.append({**hyper, "params": list(range(start, start + len(g["params"])))})
            start += len(g["params"])
        return groups

    def state_dict(self) -> dict:
        """The consolidated state (on the rank it was gathered to), as the unsharded optimizer's."""
        if getattr(self, "_consolidated", None) is None:
            raise RuntimeError("call consolidate_state_dict(to=rank) on every rank first")
        return self._consolidated

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a full (unsharded-format) state dict: each rank keeps its own shard of it."""
        local_groups, state, k = [], {}, 0
        for local, full in zip(self.optim.param_groups, state_dict["param_groups"], strict=True):
            hyper = {key: v for key, v in full.items() if key != "params"}
            local_groups.append({**hyper, "params": list(range(k, k + len(local["params"])))})
            for view in local["params"]:
                i, a, b = self.source[view]
                if i in state_dict["state"]:
                    full = state_dict["state"][i]
                    state[k] = cut_state(full, self.all_params[i].shape, a, b, view.shape)
                k += 1
        self.optim.load_state_dict({"state": state, "param_groups": local_groups})

"""ZeRO stage 1: shard the optimizer's state across data-parallel ranks.

    optimizer = ZeroRedundancyOptimizer(model.parameters(), torch.optim.AdamW, lr=3e-4)
    loss.backward()          # with DDP: every rank holds the full averaged gradient
    optimizer.step()         # each rank updates its shard, then the shards are broadcast

With plain data parallelism every rank keeps the whole optimizer state: for Adam, two fp32
tensors per parameter, twice the parameters' own memory. ZeRO-1 (Rajbhandari et al., "ZeRO:
Memory Optimizations Toward Training Trillion Parameter Models", SC 2020) gives each of the p
ranks one shard of the parameters to update, so each holds 1/p of that state; after its step a
rank broadcasts its updated parameters, and every replica is whole and equal again.

The API mirrors torch.distributed.optim.ZeroRedundancyOptimizer: the wrapped optimizer's class
and keyword arguments, `consolidate_state_dict(to)` then `state_dict()` for a checkpoint.
"""

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def partition(sizes: list[int], world_size: int) -> list[int]:
    """The owning rank of each tensor of `sizes` bytes: largest first, to the least-loaded rank."""
    owner, load = [0] * len(sizes), [0] * world_size
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        rank = min(range(world_size), key=lambda r: load[r])
        owner[i] = rank
        load[rank] += sizes[i]
    return owner


class ZeroRedundancyOptimizer:
    """Any torch optimizer, with its state sharded across the ranks of `group`."""

    def __init__(
        self, params, optimizer_class: type[torch.optim.Optimizer], group=None, **defaults
    ):
        self.group = group
        self.rank, self.world_size = dist.get_rank(group), dist.get_world_size(group)
        groups = list(params)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        # Every parameter in a fixed global order, so that all ranks agree on who owns what.
        self.all_groups = [{**g, "params": list(g["params"])} for g in groups]
        self.all_params = [p for g in self.all_groups for p in g["params"]]
        owner = partition([p.numel() * p.element_size() for p in self.all_params], self.world_size)
        self.owner = dict(zip(self.all_params, owner, strict=True))  # tensors hash by identity
        mine = [
            {**g, "params": [p for p in g["params"] if self.owner[p] == self.rank]}
            for g in self.all_groups
        ]
        # Empty groups are kept (a rank may own nothing of a group) so group indices line up.
        self.optim = optimizer_class(mine, **defaults)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The local optimizer's groups: set `lr` here as on any optimizer (same on every rank)."""
        return self.optim.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
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
        """Update this rank's shard, then share it: afterwards every rank has every parameter."""
        if closure is not None:
            raise NotImplementedError("closures would run the model once per rank's shard")
        self.optim.step()
        for rank in range(self.world_size):
            # One broadcast per owner and kind of tensor (dtype, device), of its parameters
            # flattened, rather than one per tensor.
            owned = [p for p in self.all_params if self.owner[p] == rank]
            kinds = sorted({(p.dtype, p.device) for p in owned}, key=str)
            for dtype, device in kinds:
                same = [p for p in owned if (p.dtype, p.device) == (dtype, device)]
                if rank == self.rank:
                    flat = torch.cat([p.reshape(-1) for p in same])
                else:
                    flat = torch.empty(sum(p.numel() for p in same), dtype=dtype, device=device)
                src = rank if self.group is None else dist.get_global_rank(self.group, rank)
                dist.broadcast(flat, src=src, group=self.group)
                if rank != self.rank:
                    _copy_into(same, flat)

    # ---- checkpoints: the full state, in the unsharded optimizer's own format

    def local_state_numel(self) -> int:
        """Elements of optimizer state this rank holds (its memory cost, in numbers)."""
        return sum(
            t.numel() for s in self.optim.state.values() for t in s.values() if torch.is_tensor(t)
        )

    def consolidate_state_dict(self, to: int = 0) -> None:
        """Gather every shard's state on rank `to` (a collective: call it on every rank)."""
        local = self.optim.state_dict()
        index = {id(p): i for i, p in enumerate(self.all_params)}
        mine = [p for g in self.optim.param_groups for p in g["params"]]
        # Re-key the local state by each parameter's global index, on the CPU: gathered as they
        # are, GPU tensors would be rebuilt on rank `to` on their sender's device index.
        shard = {
            index[id(p)]: {
                n: v.cpu() if torch.is_tensor(v) else v for n, v in local["state"][k].items()
            }
            for k, p in enumerate(mine)
            if k in local["state"]
        }
        shards: list = [None] * self.world_size if self.rank == to else None
        dst = to if self.group is None else dist.get_global_rank(self.group, to)
        dist.gather_object(shard, shards, dst=dst, group=self.group)
        self._consolidated = None
        if self.rank == to:
            state = {k: v for s in shards for k, v in s.items()}
            groups, start = [], 0
            for g, local_group in zip(self.all_groups, local["param_groups"], strict=True):
                hyper = {k: v for k, v in local_group.items() if k != "params"}
                groups.append({**hyper, "params": list(range(start, start + len(g["params"])))})
                start += len(g["params"])
            self._consolidated = {"state": dict(sorted(state.items())), "param_groups": groups}

    def state_dict(self) -> dict:
        """The consolidated state (on the rank it was gathered to), as the unsharded optimizer's."""
        if getattr(self, "_consolidated", None) is None:
            raise RuntimeError("call consolidate_state_dict(to=rank) on every rank first")
        return self._consolidated

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a full (unsharded-format) state dict: each rank keeps its own shard of it."""
        index = {id(p): i for i, p in enumerate(self.all_params)}
        mine = [p for g in self.optim.param_groups for p in g["params"]]
        local_index = {id(p): k for k, p in enumerate(mine)}
        local_groups = []
        for g, full in zip(self.optim.param_groups, state_dict["param_groups"], strict=True):
            hyper = {k: v for k, v in full.items() if k != "params"}
            local_groups.append({**hyper, "params": [local_index[id(p)] for p in g["params"]]})
        state = {
            k: state_dict["state"][index[id(p)]]
            for k, p in enumerate(mine)
            if index[id(p)] in state_dict["state"]
        }
        self.optim.load_state_dict({"state": state, "param_groups": local_groups})


def _copy_into(params: list[Tensor], flat: Tensor) -> None:
    offset = 0
    for p in params:
        p.copy_(flat[offset : offset + p.numel()].view_as(p))
        offset += p.numel()

"""The trainer's sharding choice: what each rank holds of the model (--shard), whose classes do it
(--impl), what forward and backward compute in (--compute-dtype); the optimizer over what each
rank holds; clipping by the norm of the whole gradient, however it is spread (minidp.clipping);
and the state, whole, so that a checkpoint of any mode and world size resumes under any other.

    sharded = shard(raw, c, env)      # every rank; raw built from the same seed, on env.device
    with sharded.no_sync():           # every micro-step but the last
        with sharded.autocast:
            loss = sharded.model(x, y)[1]
        loss.backward()
    sharded.clip_grad_norm_(1.0)
    sharded.optimizer.step()
    model_state, optimizer_state = sharded.full_state()     # a collective
    sharded.load_full_state(model_state, optimizer_state)   # the same state on every rank

           --impl minidp                               --impl torch
    none   our DistributedDataParallel                 torch's DistributedDataParallel
    zero1  our ZeroRedundancyOptimizer, no DDP: one    torch's ZeroRedundancyOptimizer under its
           reduce-scatter, one all-gather per step     DDP: an all-reduce, then a broadcast
    fsdp   our FullyShardedDataParallel                torch's fully_shard (FSDP2)

Under fsdp every transformer block is a unit, and so is the GPT itself: its own parameters (the
embeddings, the output head tied to the token embedding, the last norm) are sharded as one more
unit. A tied parameter stays whole in one unit because all its holders lie inside the GPT's.
With a compute dtype other than fp32, none and zero1 run forward under autocast; fsdp casts
each unit's gathered weights instead (ours: compute_dtype; torch's: MixedPrecisionPolicy), and
reduces gradients in float32. Weights, gradients and optimizer state stay float32 throughout.

The state is in one process's format (--shard none, one rank): the GPT's state_dict under its own
names, and the state_dict of the optimizer over decay_groups(raw), indexed in that order.
"""

from contextlib import nullcontext

import torch
import torch.distributed as dist
import torch.nn as nn
from torch import Tensor
from torch.distributed.optim import ZeroRedundancyOptimizer as TorchZeRO

from minidp.clipping import clip_grad_norm_
from minidp.config import TrainConfig, compute_dtype
from minidp.ddp import DistributedDataParallel
from minidp.environment import DistEnv
from minidp.flat import cut_state, gather_state
from minidp.fsdp import FullyShardedDataParallel
from minidp.model import GPT, Block
from minidp.zero import ZeroRedundancyOptimizer

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def decay_groups(raw: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices (weights, embeddings), not on biases and norms (nanoGPT's rule;
    FSDP's shards keep their parameter's number of dimensions, so the rule holds for them)."""
    params = [p for p in raw.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


class Sharded:
    """--shard none: every rank holds all of the model under a DDP. The base of the other modes,
    which override what they do differently."""

    def __init__(self, model: nn.Module, raw: GPT, optimizer, autocast=None):
        self.model = model  # what forward runs through: a wrapper, or raw itself
        self.raw = raw  # the GPT, for sampling and for its parameters
        self.optimizer = optimizer
        self.autocast = autocast or nullcontext()

    def no_sync(self):
        """Around every micro-step but the last: DDP's no_sync(). Without a DDP, gradients
        accumulate where they are: on each rank until ZeRO's step averages them, or in FSDP's
        shards, reduce-scattered after each micro-step (a sharded model has nowhere else)."""
        return self.model.no_sync() if hasattr(self.model, "no_sync") else nullcontext()

    def clip_grad_norm_(self, max_norm: float) -> Tensor:
        """Scale the averaged gradient to an L2 norm of at most max_norm; the norm before."""
        # Every rank holds the whole averaged gradient: the same clipping on every rank.
        return torch.nn.utils.clip_grad_norm_(self.raw.parameters(), max_norm)

    def full_state(self) -> tuple[dict, dict | None]:
        """The model's and the optimizer's state_dicts, whole, in one process's format: a
        collective; the optimizer's may be on global rank 0 only (None elsewhere). Tensors may
        be the live parameters themselves, as state_dict()'s are."""
        return self.raw.state_dict(), self.optimizer.state_dict()

    def load_full_state(self, model: dict, optimizer: dict) -> None:
        """Load full_state()'s two dicts, given to every rank; each keeps what it holds."""
        self.raw.load_state_dict(model)
        self.optimizer.load_state_dict(optimizer)


class ZeRO1(Sharded):
    """--shard zero1: the optimizer's state sharded. Ours needs no DDP (its step reduce-scatters
    the gradients); torch's runs under torch's DDP, whose gradients arrive averaged."""

    def clip_grad_norm_(self, max_norm: float) -> Tensor:
        if not isinstance(self.optimizer, ZeroRedundancyOptimizer):
            return super().clip_grad_norm_(max_norm)
        self.optimizer.reduce_gradients()  # each rank's pieces of the averaged gradient
        pieces = [p for group in self.optimizer.param_groups for p in group["params"]]
        return clip_grad_norm_(pieces, [], max_norm, self.raw.wte.weight.device)

    def full_state(self) -> tuple[dict, dict | None]:
        self.optimizer.consolidate_state_dict(to=0)  # every shard's state, gathered on rank 0
        main = dist.get_rank() == 0
        return self.raw.state_dict(), self.optimizer.state_dict() if main else None


class FSDP(Sharded):
    """--shard fsdp --impl minidp: our FullyShardedDataParallel; the optimizer steps the shards,
    each a piece of one parameter, so its state is in pieces too."""

    def clip_grad_norm_(self, max_norm: float) -> Tensor:
        shards = [s for unit in self.model.units for s in unit.shards]
        device = self.raw.wte.weight.device
        return clip_grad_norm_(shards, self.model.replicated, max_norm, device)

    def _pieces(self, sending: bool) -> tuple[dict, dict]:
        """{tensor the optimizer steps: (its index, start, stop) in the whole parameter} and
        {index: the whole parameter's shape}. A replicated parameter is all of itself, sent
        by rank 0 alone."""
        order = [p for group in self.optimizer.param_groups for p in group["params"]]
        index = {p: i for i, p in enumerate(order)}
        pieces, shapes = {}, {}
        for unit in self.model.units:
            for shard, full, (a, b, _) in zip(unit.shards, unit.full, unit.ranges, strict=True):
                if shard in index:
                    shapes[index[shard]] = full.shape
                    if b > a:  # a parameter none of whose elements this rank holds: nothing
                        pieces[shard] = (index[shard], a, b)
        for p in self.model.replicated:
            if p in index:
                shapes[index[p]] = p.shape
                if not sending or dist.get_rank() == 0:
                    pieces[p] = (index[p], 0, p.numel())
        return pieces, shapes

    def full_state(self) -> tuple[dict, dict | None]:
        model = self.model.full_state_dict()
        pieces, shapes = self._pieces(sending=True)
        state = gather_state(pieces, self.optimizer.state, shapes, None, 0)
        if state is None:  # not rank 0
            return model, None
        return model, {"state": state, "param_groups": self.optimizer.state_dict()["param_groups"]}

    def load_full_state(self, model: dict, optimizer: dict) -> None:
        self.model.load_full_state_dict(model)
        pieces, shapes = self._pieces(sending=False)
        whole = optimizer["state"]
        state = {
            i: cut_state(whole[i], shapes[i], a, b, piece.shape)
            for piece, (i, a, b) in pieces.items()
            if i in whole
        }
        self.optimizer.load_state_dict({"state": state, "param_groups": optimizer["param_groups"]})


class TorchFSDP(Sharded):
    """--shard fsdp --impl torch: torch's fully_shard. Parameters, gradients and optimizer state
    are DTensors (torch.distributed.tensor), sharded along their first dimension; torch's
    clip_grad_norm_ reduces their norms over the ranks itself."""

    @torch.no_grad()
    def full_state(self) -> tuple[dict, dict | None]:
        # Each DTensor made whole once (a collective), in the same order on every rank.
        whole = {p: _whole(p) for p in self.raw.parameters()}  # a tied weight once
        model = self.raw.state_dict()
        for name, p in self.raw.named_parameters(remove_duplicate=False):
            model[name] = whole[p]
        saved = self.optimizer.state_dict()
        state = {i: {k: _whole(v) for k, v in s.items()} for i, s in saved["state"].items()}
        return model, {"state": state, "param_groups": saved["param_groups"]}

    @torch.no_grad()
    def load_full_state(self, model: dict, optimizer: dict) -> None:
        for name, p in self.raw.named_parameters():
            p.copy_(_local(model[name], p))
        for name, b in self.raw.named_buffers():
            b.copy_(model[name])
        order = [p for group in self.optimizer.param_groups for p in group["params"]]
        state = {
            i: {
                k: _local(v, order[i]) if torch.is_tensor(v) and v.shape == order[i].shape else v
                for k, v in s.items()
            }
            for i, s in optimizer["state"].items()
        }
        self.optimizer.load_state_dict({"state": state, "param_groups": optimizer["param_groups"]})


def _whole(t):
    """A DTensor gathered whole (a collective), as a plain tensor; anything else as it is."""
    return t.full_tensor().detach() if hasattr(t, "full_tensor") else t


def _local(whole: Tensor, like: Tensor) -> Tensor:
    """`whole` cut as the DTensor `like` is: this rank's piece, without communication."""
    from torch.distributed.tensor import distribute_tensor  # torch >= 2.5

    whole = whole.to(like.device, like.dtype)
    return distribute_tensor(whole, like.device_mesh, like.placements, src_data_rank=None)


def _is_unit(module: nn.Module) -> bool:
    return isinstance(module, GPT | Block)


def _fully_shard(raw: GPT, env: DistEnv, dtype: torch.dtype | None) -> GPT:
    """raw under torch's fully_shard, with units as ours: each block, then the GPT."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard  # torch >= 2.6

    mesh = init_device_mesh(env.device.type, (env.world_size,))
    # Gradients reduced in float32, as ours are: K bf16 addends would lose bits.
    reduce = None if dtype is None else torch.float32
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=reduce)
    # Every unit resharded after its forward, the root too (torch keeps the root's whole by
    # default): an evaluation or a sample, with no backward after it, would leave it whole.
    for module in [*raw.blocks, raw]:
        fully_shard(module, mesh=mesh, mp_policy=policy, reshard_after_forward=True)
    return raw


def shard(
    raw: GPT, c: TrainConfig, env: DistEnv, optimizer: tuple[type, dict] | None = None
) -> Sharded:
    """raw, built from the same seed on every rank and on env.device, spread over the ranks as
    c says, and its optimizer (`optimizer`: a class and its arguments; AdamW by default) over
    decay_groups(raw), stepping what this rank holds."""
    dtype = DTYPES[compute_dtype(c, env.device.type)]
    adamw = {"lr": c.lr, "betas": (0.9, 0.95), "fused": env.device.type == "cuda"}  # one kernel
    cls, kwargs = optimizer or (torch.optim.AdamW, adamw)
    if c.shard == "fsdp":
        cast = None if dtype == torch.float32 else dtype
        if c.impl == "torch":
            model = _fully_shard(raw, env, cast)
        else:
            model = FullyShardedDataParallel(raw, units=_is_unit, compute_dtype=cast)
        optim = cls(decay_groups(raw, c.weight_decay), **kwargs)  # over the shards, once wrapped
        return (TorchFSDP if c.impl == "torch" else FSDP)(model, raw, optim)
    autocast = None if dtype == torch.float32 else torch.autocast(env.device.type, dtype)
    groups = decay_groups(raw, c.weight_decay)
    if c.shard == "zero1" and c.impl == "minidp":  # no DDP: the optimizer averages gradients
        return ZeRO1(raw, raw, ZeroRedundancyOptimizer(groups, cls, **kwargs), autocast)
    wrap = (
        torch.nn.parallel.DistributedDataParallel if c.impl == "torch" else DistributedDataParallel
    )
    ids = [env.local_rank] if env.device.type == "cuda" else None  # one call for both DDPs
    model = wrap(raw, device_ids=ids, bucket_cap_mb=c.bucket_cap_mb, gradient_as_bucket_view=True)
    if c.shard == "zero1":
        return ZeRO1(model, raw, TorchZeRO(groups, cls, **kwargs), autocast)
    return Sharded(model, raw, cls(groups, **kwargs), autocast)

"""Every DDP variant and ZeRO-1 against torch's DDP and one process trained on the whole batch.

The claim of the course: K workers, each with B/K examples, averaging gradients, take exactly
the step one worker takes with B examples. Each test trains the same model from the same start
twice, on K ranks and in one process, and compares the parameters after every step. torch's
DistributedDataParallel and ours are built by the same keyword call (ours may add their own
`all_reduce=` and `buckets=`), and held to the same reference.
"""

import copy
import gc
import statistics
import weakref

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

import minidp
from minidp.collectives import ring_all_reduce
from minidp.ddp import AfterBackwardDDP, DistributedDataParallel, PerParameterDDP
from minidp.events import Event
from minidp.host_reads import HostReads
from minidp.model import GPT, GPTConfig
from minidp.zero import ZeroRedundancyOptimizer

pytestmark = pytest.mark.usefixtures("no_orphans")

STEPS, BATCH = 5, 12  # 12 divides among 1, 2 and 3 ranks, and into 2 micro-batches each
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5}


def _halves(module: nn.Module) -> list[list[int]]:
    """Buckets of our own choosing: the later half of the parameters, then the earlier half."""
    n = sum(1 for p in module.parameters() if p.requires_grad)
    halves = [list(range(n - 1, n // 2 - 1, -1)), list(range(n // 2 - 1, -1, -1))]
    return [half for half in halves if half]


# name: (class, arguments of ours only). Everything else is the call shared with torch's DDP.
WRAPPERS = {
    "torch": (nn.parallel.DistributedDataParallel, {}),
    "bucketed": (DistributedDataParallel, {}),
    "bucketed_halves": (DistributedDataParallel, {"buckets": _halves}),
    "bucketed_ring": (DistributedDataParallel, {"all_reduce": ring_all_reduce}),  # no overlap
    "per_parameter": (PerParameterDDP, {}),
    "after_backward": (AfterBackwardDDP, {}),
    "after_backward_ring": (AfterBackwardDDP, {"all_reduce": ring_all_reduce}),
}
OURS = [name for name in WRAPPERS if name != "torch"]


def wrap(name: str, module: nn.Module, **call) -> nn.Module:
    """torch's DDP or one of ours around module, built by the same keyword call."""
    cls, ours_only = WRAPPERS[name]
    extra = {key: value(module) if key == "buckets" else value for key, value in ours_only.items()}
    return cls(module, **call, **extra)


OPTIMIZERS = {  # class and keyword arguments
    "sgd": (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}),
    "adamw": (torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.1}),
}


class Toy(nn.Module):
    """Tied weights, a module used twice, a frozen layer, and a layer used on even steps only."""

    def __init__(self):
        super().__init__()
        self.encode = nn.Linear(6, 8)
        self.shared = nn.Linear(8, 8)  # applied twice: its gradient sums both uses
        self.frozen = nn.Linear(8, 8).requires_grad_(False)
        self.sometimes = nn.Linear(8, 8)
        self.decode = nn.Linear(8, 8)
        self.decode.weight = self.shared.weight  # tied across two modules
        self.head = nn.Linear(8, 3)

    def forward(self, x, step):
        h = torch.tanh(self.shared(torch.tanh(self.encode(x))))
        h = torch.tanh(self.shared(torch.tanh(self.frozen(h))))
        if step % 2 == 0:
            h = torch.tanh(self.sometimes(h))
        return self.head(torch.tanh(self.decode(h)))


def _toy_loss(model, step, rows):
    g = torch.Generator().manual_seed(step)
    x, y = torch.randn(BATCH, 6, generator=g), torch.randn(BATCH, 3, generator=g)
    dtype = next(model.parameters()).dtype
    return F.mse_loss(model(x[rows].to(dtype), step), y[rows].to(dtype))


def _gpt():
    return GPT(GPTConfig(block_size=16, n_layer=2, n_head=2, n_embd=32))


def _gpt_loss(model, step, rows):
    g = torch.Generator().manual_seed(step)
    idx = torch.randint(256, (BATCH, 17), generator=g)
    return model(idx[rows, :-1], idx[rows, 1:])[1]


MODELS = {"toy": (Toy, _toy_loss), "gpt": (_gpt, _gpt_loss)}
# The call each model needs, the same for torch's DDP and ours: the toy leaves a layer unused
# on odd steps, and tiny buckets make several of them.
CALLS = {
    "toy": dict(bucket_cap_mb=0.0005, find_unused_parameters=True),
    "gpt": dict(bucket_cap_mb=0.005),
}


def _train(model, optimizer, loss_fn, rows_per_step, micro_batches, no_sync=None, steps=STEPS):
    """Run `steps` steps; yield the flat parameters after each. Loss is scaled per micro-batch."""
    for step in range(steps):
        optimizer.zero_grad()
        rows = rows_per_step
        chunks = torch.arange(rows.start, rows.stop).chunk(micro_batches)
        for i, chunk in enumerate(chunks):
            last = i == len(chunks) - 1
            with no_sync() if (no_sync and not last) else _nothing():
                (loss_fn(model, step, chunk) / micro_batches).backward()
        optimizer.step()
        yield torch.cat([p.detach().reshape(-1) for p in model.parameters()])


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _compare(
    model_name, optimizer_name, dtype, wrapper, micro_batches=1, zero=False, steps=5, **call
):
    """Max |parameter difference| to the single-process run, and across ranks, over all steps."""
    rank, world = dist.get_rank(), dist.get_world_size()
    make_model, loss_fn = MODELS[model_name]
    torch.manual_seed(0)
    reference = make_model().to(dtype)
    torch.manual_seed(rank)  # every rank starts different: the broadcast must fix that
    model = wrap(wrapper, make_model().to(dtype), **{**CALLS[model_name], **call})
    cls, kwargs = OPTIMIZERS[optimizer_name]
    if zero:
        optimizer = ZeroRedundancyOptimizer(model.parameters(), cls, **kwargs)
    else:
        optimizer = cls(model.parameters(), **kwargs)
    per_rank = BATCH // world
    mine = slice(rank * per_rank, (rank + 1) * per_rank)
    ours = _train(model, optimizer, loss_fn, mine, micro_batches, model.no_sync, steps)
    ref_opt = cls(reference.parameters(), **kwargs)
    theirs = _train(reference, ref_opt, loss_fn, slice(0, BATCH), 1, steps=steps)
    to_reference, across_ranks = 0.0, 0.0
    for a, b in zip(ours, theirs, strict=True):
        to_reference = max(to_reference, (a - b).abs().max().item())
        first = a.clone()
        dist.broadcast(first, 0)
        across_ranks = max(across_ranks, (a - first).abs().max().item())
    return to_reference, across_ranks


def _all_variants(model_name, optimizer_name, dtype, **call):
    return {w: _compare(model_name, optimizer_name, dtype, w, **call) for w in WRAPPERS}


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("model_name", ["toy", "gpt"])
@pytest.mark.parametrize("optimizer_name", ["sgd", "adamw"])
def test_every_variant_equals_one_large_batch(world_size, model_name, optimizer_name):
    results = minidp.launch(_all_variants, world_size, model_name, optimizer_name, torch.float64)
    for wrapper, (to_reference, across_ranks) in results[0].items():
        assert to_reference <= 1e-12, f"{wrapper}: {to_reference:.2e} from the single process"
        assert across_ranks == 0.0, f"{wrapper}: replicas differ by {across_ranks:.2e}"


@pytest.mark.parametrize(
    "call",
    [
        {},  # torch's defaults: 25 MB buckets (one, here), gradients copied out of the buckets
        {"gradient_as_bucket_view": True},
        {"gradient_as_bucket_view": True, "bucket_cap_mb": 0.001, "broadcast_buffers": False},
        {"find_unused_parameters": True},  # allowed where nothing is unused
    ],
    ids=["defaults", "views", "views-small-buckets", "find-unused"],
)
def test_every_variant_equals_one_large_batch_whatever_the_call(call):
    results = minidp.launch(_all_variants, 2, "gpt", "sgd", torch.float64, **call)
    for wrapper, (to_reference, across_ranks) in results[0].items():
        assert to_reference <= 1e-12, f"{wrapper}: {to_reference:.2e} from the single process"
        assert across_ranks == 0.0, f"{wrapper}: replicas differ by {across_ranks:.2e}"


def _float32(model_name):
    return {w: _compare(model_name, "sgd", torch.float32, w, steps=20) for w in WRAPPERS}


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("model_name", ["toy", "gpt"])
def test_float32_within_tolerance(world_size, model_name):
    # SGD: Adam divides each gradient by its running RMS, so float32 rounding in a near-zero
    # gradient can move a parameter by up to lr; torch's own DDP then differs by ~3e-5 too.
    results = minidp.launch(_float32, world_size, model_name)[0]
    for wrapper, (to_reference, across_ranks) in results.items():
        assert to_reference <= 1e-5, f"{wrapper}: {to_reference:.2e} from the single process"
        assert across_ranks == 0.0, wrapper


def _accumulation(model_name):
    return {w: _compare(model_name, "adamw", torch.float64, w, micro_batches=2) for w in WRAPPERS}


@pytest.mark.parametrize("model_name", ["toy", "gpt"])
def test_no_sync_accumulation_equals_one_large_batch(model_name):
    for wrapper, (to_reference, across_ranks) in minidp.launch(_accumulation, 2, model_name)[
        0
    ].items():
        assert to_reference <= 1e-12, wrapper
        assert across_ranks == 0.0, wrapper


def _zero(model_name, optimizer_name):
    return _compare(model_name, optimizer_name, torch.float64, "bucketed", zero=True)


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("model_name", ["toy", "gpt"])
@pytest.mark.parametrize("optimizer_name", ["sgd", "adamw"])
def test_zero1_equals_the_unsharded_optimizer(world_size, model_name, optimizer_name):
    for to_reference, across_ranks in minidp.launch(_zero, world_size, model_name, optimizer_name):
        assert to_reference <= 1e-12
        assert across_ranks == 0.0


def _zero_state_and_checkpoint():
    """Shard sizes, and a consolidated state that equals the unsharded optimizer's and reloads."""
    rank = dist.get_rank()
    torch.manual_seed(0)
    reference = _gpt().double()
    torch.manual_seed(0)
    model = DistributedDataParallel(_gpt().double())
    ref_opt = torch.optim.AdamW(reference.parameters(), lr=0.01)
    optimizer = ZeroRedundancyOptimizer(model.parameters(), torch.optim.AdamW, lr=0.01)
    per_rank = BATCH // dist.get_world_size()
    mine = slice(rank * per_rank, (rank + 1) * per_rank)
    list(_train(model, optimizer, _gpt_loss, mine, 1))
    list(_train(reference, ref_opt, _gpt_loss, slice(0, BATCH), 1))
    held = torch.tensor([optimizer.local_state_numel()])
    everyone = [torch.zeros_like(held) for _ in range(dist.get_world_size())]
    dist.all_gather(everyone, held)
    optimizer.consolidate_state_dict(to=0)
    state = [optimizer.state_dict() if rank == 0 else None]
    dist.broadcast_object_list(state, src=0)
    reference_state = copy.deepcopy(ref_opt.state_dict())  # before the next step changes it
    # A fresh sharded optimizer loads the full state; one more step must match the reference's.
    fresh = ZeroRedundancyOptimizer(model.parameters(), torch.optim.AdamW, lr=0.01)
    fresh.load_state_dict(copy.deepcopy(state[0]))  # it steps on, and would update state[0]
    next(_train(model, fresh, _gpt_loss, mine, 1, steps=1))
    next(_train(reference, ref_opt, _gpt_loss, slice(0, BATCH), 1, steps=1))
    pairs = zip(model.parameters(), reference.parameters(), strict=True)
    after = max((a - b).abs().max().item() for a, b in pairs)
    return [h.item() for h in everyone], state[0], reference_state, after


def test_zero1_shards_state_and_checkpoints_in_the_unsharded_format():
    shards, state, reference, after = minidp.launch(_zero_state_and_checkpoint, 2)[0]
    full = sum(t.numel() for s in reference["state"].values() for t in s.values() if t.dim())
    scalar_steps = len(reference["state"])  # AdamW keeps one 'step' scalar per parameter
    # All of it, held once; ZeRO shards by element, so the one parameter cut between the two
    # ranks has a step counter on each.
    assert full + scalar_steps <= sum(shards) <= full + scalar_steps + 1
    assert max(shards) < 0.6 * sum(shards)  # and split roughly evenly
    assert state["param_groups"] == reference["param_groups"]
    assert state["state"].keys() == reference["state"].keys()
    for key, ref in reference["state"].items():
        for name, value in ref.items():
            torch.testing.assert_close(state["state"][key][name], value, rtol=0, atol=1e-12)
    assert after <= 1e-12


def _freed_after_use():
    """A DDP that was used and dropped is freed, with its buffers (its hooks hold it weakly),
    and leaves no hook behind: the model trains on alone, with its own gradients."""
    model = _gpt()
    refs = []
    for name in OURS:
        ddp = wrap(name, model)
        _gpt_loss(ddp, 0, slice(0, BATCH)).backward()
        refs.append(weakref.ref(ddp))
        del ddp
    gc.collect()
    return [r() is None for r in refs], _local_gradients_only(model)


def _local_gradients_only(model) -> bool:
    """Whether a backward on this rank's own rows leaves this rank's own gradients: nothing
    averaged them with the other ranks' (which differ)."""
    rows = slice(dist.get_rank() * 2, dist.get_rank() * 2 + 2)
    model.zero_grad(set_to_none=True)
    _gpt_loss(model, 0, rows).backward()
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    with torch.no_grad():  # the same gradients from a copy that no hook can reach
        alone = copy.deepcopy(model)
    _gpt_loss(alone, 0, rows).backward()
    pairs = zip(got, (p.grad for p in alone.parameters()), strict=True)
    return all(torch.equal(a, b) for a, b in pairs)


def test_a_dropped_ddp_is_freed_and_its_hooks_do_nothing():
    for freed, local in minidp.launch(_freed_after_use, 2):
        assert freed == [True] * len(OURS)
        assert local


def _after_remove_hooks(name):
    torch.manual_seed(0)
    model = _gpt()
    ddp = wrap(name, model)
    _gpt_loss(ddp, 0, slice(0, BATCH)).backward()  # synchronised, once
    ddp.remove_hooks()
    ddp.events = []
    local = _local_gradients_only(model)
    return local, ddp.events


@pytest.mark.parametrize("name", OURS)
def test_removed_hooks_do_nothing(name):
    for local, events in minidp.launch(_after_remove_hooks, 2, name):
        assert local and events == []


class _Strided(nn.Module):
    """A parameter stored transposed: not contiguous, like a channels_last convolution's."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3, 6).t())  # (6, 3), strides (1, 6)

    def forward(self, x, step):
        return torch.tanh(x @ self.weight)


def _strided_loss(model, step, rows):
    g = torch.Generator().manual_seed(step)
    x, y = torch.randn(BATCH, 6, generator=g), torch.randn(BATCH, 3, generator=g)
    return F.mse_loss(model(x[rows].double(), step), y[rows].double())


MODELS["strided"] = (_Strided, _strided_loss)
CALLS["strided"] = {}


def _any_layout():
    return {w: _compare("strided", "adamw", torch.float64, w) for w in WRAPPERS} | {
        "zero": _compare("strided", "adamw", torch.float64, "bucketed", zero=True)
    }


def test_a_parameter_of_any_memory_layout():
    for wrapper, (to_reference, across) in minidp.launch(_any_layout, 2)[0].items():
        assert to_reference <= 1e-12, wrapper
        assert across == 0.0, wrapper


def _buffers_follow_rank_zero():
    """BatchNorm's running statistics (buffers that forward updates) are rank 0's on every
    replica after the next forward, as with torch's DDP; and `buffers()` is nn.Module's."""
    same = {}
    for wrapper in WRAPPERS:
        torch.manual_seed(0)
        ddp = wrap(wrapper, nn.Sequential(nn.Linear(6, 6), nn.BatchNorm1d(6)).double())
        torch.manual_seed(dist.get_rank())  # each rank's own data: its own running statistics
        ddp(torch.randn(8, 6).double()).sum().backward()
        ddp.eval()  # a forward now only broadcasts rank 0's statistics, without updating them
        ddp(torch.randn(8, 6).double())
        mean = ddp.module[1].running_mean
        first = mean.clone()
        dist.broadcast(first, 0)
        same[wrapper] = (len(list(ddp.buffers())) == 3, torch.equal(mean, first))
    return same


def test_buffers_follow_rank_zero():
    for rank_results in minidp.launch(_buffers_follow_rank_zero, 2):  # rank 1's view counts
        for wrapper, (has_buffers, equal) in rank_results.items():
            assert has_buffers, wrapper
            assert equal, wrapper


class _Fails(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("out of memory (pretend)")


class _FailsAtTheStart(nn.Module):
    """Can fail in backward at its input end, which backward reaches last: after the output
    layer's gradients are ready (and their hooks have run)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x, fail: bool):
        h = self.a(x)
        return self.b(torch.tanh(_Fails.apply(h) if fail else h))


def _after_a_failed_backward(wrapper):
    """A backward that raises (a skipped batch) must not leave the DDP unable to synchronise."""
    torch.manual_seed(0)
    ddp = wrap(wrapper, _FailsAtTheStart().double())
    torch.manual_seed(dist.get_rank())  # each rank's own data
    try:
        ddp(torch.randn(4, 6).double(), fail=True).sum().backward()
    except RuntimeError:
        pass
    ddp.zero_grad()
    ddp(torch.randn(4, 6).double(), fail=False).sum().backward()
    grads = torch.cat([p.grad.reshape(-1) for p in ddp.parameters()])
    first = grads.clone()
    dist.broadcast(first, 0)
    return (grads - first).abs().max().item()


# torch's DDP refuses the next forward instead ("Expected to have finished reduction...").
@pytest.mark.parametrize("wrapper", OURS)
def test_a_failed_backward_does_not_stop_synchronisation(wrapper):
    assert minidp.launch(_after_a_failed_backward, 2, wrapper) == [0.0, 0.0]


class _Mixed(nn.Module):
    """Parameters of two dtypes, so that a rank owns shards of both."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 6).double()
        self.b = nn.Linear(6, 3).float()

    def forward(self, x, step):
        return self.b(torch.tanh(self.a(x)).float()).double()


def _zero_mixed_and_zeroed_views():
    """ZeRO-1 over mixed dtypes, with gradients zeroed in place (our DDP's bucket views)."""
    rank = dist.get_rank()
    torch.manual_seed(0)
    reference = _Mixed()
    torch.manual_seed(0)
    model = DistributedDataParallel(_Mixed(), bucket_cap_mb=0.0001, gradient_as_bucket_view=True)
    ref_opt = torch.optim.AdamW(reference.parameters(), lr=0.01)
    optimizer = ZeroRedundancyOptimizer(model.parameters(), torch.optim.AdamW, lr=0.01)
    diff = 0.0
    for step in range(4):
        for net, opt, rows in [(model, optimizer, slice(rank * 6, rank * 6 + 6)),
                               (reference, ref_opt, slice(0, BATCH))]:  # fmt: skip
            opt.zero_grad(set_to_none=False)
            _toy_like_loss(net, step, rows).backward()
            opt.step()
        pairs = zip(model.parameters(), reference.parameters(), strict=True)
        diff = max(diff, max((a.double() - b.double()).abs().max().item() for a, b in pairs))
    return diff


def _toy_like_loss(model, step, rows):
    g = torch.Generator().manual_seed(step)
    x, y = torch.randn(BATCH, 6, generator=g).double(), torch.randn(BATCH, 3, generator=g)
    return F.mse_loss(model(x[rows], step), y[rows].double())


def test_zero1_with_mixed_dtypes_and_gradients_zeroed_in_place():
    assert max(minidp.launch(_zero_mixed_and_zeroed_views, 2)) <= 1e-6


# ---- unused parameters, with and without find_unused_parameters


class _SomeRanks(nn.Module):
    """A layer that each step's `use` decides about, per rank."""

    def __init__(self):
        super().__init__()
        self.a, self.extra, self.head = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x, use: bool):
        h = torch.tanh(self.a(x))
        return self.head(torch.tanh(self.extra(h)) if use else h)


# Per step, which ranks use `extra`: all, rank 0 only, none.
USES = [lambda rank: True, lambda rank: rank == 0, lambda rank: False]


def _unused_gradients(name):
    """Per step and parameter: (has a gradient, |difference| to the one-process gradient), where
    the one process averages each rank's loss computed as that rank computed it."""
    rank, world = dist.get_rank(), dist.get_world_size()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4 * world, 6, generator=g).double(), torch.randn(4 * world, 3, generator=g)
    torch.manual_seed(0)
    reference = _SomeRanks().double()
    ddp = wrap(name, copy.deepcopy(reference), find_unused_parameters=True)
    steps = []
    for uses in USES:
        ddp.zero_grad(set_to_none=True)
        reference.zero_grad(set_to_none=True)
        mine = slice(4 * rank, 4 * rank + 4)
        F.mse_loss(ddp(x[mine], uses(rank)), y[mine].double()).backward()
        for r in range(world):
            rows = slice(4 * r, 4 * r + 4)
            (F.mse_loss(reference(x[rows], uses(r)), y[rows].double()) / world).backward()
        steps.append(
            [
                (
                    p.grad is not None,
                    0.0 if q.grad is None else (p.grad - q.grad).abs().max().item(),
                )
                for p, q in zip(ddp.module.parameters(), reference.parameters(), strict=True)
            ]
        )
    return steps


@pytest.mark.parametrize("name", WRAPPERS)
def test_unused_parameters_are_averaged_where_some_rank_used_them_and_left_none_otherwise(name):
    results = minidp.launch(_unused_gradients, 2, name)
    for rank, steps in enumerate(results):
        for step, grads in enumerate(steps):
            has = [has for has, _ in grads]
            # a, extra (weight, bias), head: extra has a gradient where some rank used it
            expected = [True, True, step < 2, step < 2, True, True]
            assert has == expected, f"rank {rank}, step {step}"
            assert max(diff for _, diff in grads) <= 1e-12, f"rank {rank}, step {step}"


def _unused_without_the_flag(name):
    """The error, as text: after a step that leaves `extra` unused on every rank."""
    torch.manual_seed(0)
    ddp = wrap(name, _SomeRanks().double())
    x = torch.randn(4, 6).double()
    try:
        for use in (True, False, True):  # torch's DDP says so at the forward after the step
            ddp(x, use).sum().backward()
    except RuntimeError as e:
        return str(e)
    return "no error"


@pytest.mark.parametrize("name", WRAPPERS)
def test_an_unused_parameter_without_find_unused_parameters_is_a_clear_error(name):
    for message in minidp.launch(_unused_without_the_flag, 2, name):
        assert "find_unused_parameters=True" in message
        if name != "torch":  # which names torch's DDP gives depends on TORCH_DISTRIBUTED_DEBUG
            assert "extra.weight" in message and "extra.bias" in message
            assert "head.weight" not in message


# ---- reentrant activation checkpointing


class _Checkpointed(nn.Module):
    """Every layer in a reentrant checkpoint: each runs a backward of its own inside the
    outer one, and the first gradient of all is ready inside such an inner backward."""

    def __init__(self, shared: bool):
        super().__init__()
        self.first = nn.Linear(6, 6)
        self.second = self.first if shared else nn.Linear(6, 6)

    def forward(self, x):
        for layer in (self.first, self.second):
            x = checkpoint(lambda t, layer=layer: torch.tanh(layer(t)), x, use_reentrant=True)
        return x


def _checkpointed(name, shared, find_unused_parameters):
    rank, world = dist.get_rank(), dist.get_world_size()
    g = torch.Generator().manual_seed(0)
    # An input that requires grad: a reentrant checkpoint gives none to its parameters otherwise.
    x = torch.randn(4 * world, 6, generator=g).double().requires_grad_()
    torch.manual_seed(0)
    reference = _Checkpointed(shared).double()
    ddp = wrap(name, copy.deepcopy(reference), find_unused_parameters=find_unused_parameters)
    reference(x).pow(2).mean().backward()
    try:
        for _ in range(2):  # the same twice: a second step must synchronise as well
            ddp.zero_grad()
            ddp(x[4 * rank : 4 * rank + 4]).pow(2).mean().backward()
    except RuntimeError as e:
        return str(e)
    pairs = zip(ddp.module.parameters(), reference.parameters(), strict=True)
    return max((p.grad - q.grad).abs().max().item() for p, q in pairs)


@pytest.mark.parametrize("name", WRAPPERS)
def test_reentrant_checkpointing_of_distinct_layers_averages_once_at_the_very_end(name):
    for difference in minidp.launch(_checkpointed, 2, name, False, False):
        assert isinstance(difference, float), difference  # else the error it raised
        assert difference <= 1e-12


# torch's DDP detects it only with find_unused_parameters=True; with False it returns gradients
# 0.2 away from one process's (measured on torch 2.13).
@pytest.mark.parametrize(
    ("name", "find_unused"), [(name, True) for name in WRAPPERS] + [(n, False) for n in OURS]
)
def test_a_parameter_ready_twice_in_one_backward_raises(name, find_unused):
    for message in minidp.launch(_checkpointed, 2, name, True, find_unused):
        assert isinstance(message, str), f"no error; gradients {message:.2g} from one process"
        if name == "torch":
            assert "mark a variable ready only once" in message
        else:
            assert "first.weight" in message or "first.bias" in message
            assert "twice" in message and "use_reentrant=False" in message


# ---- host reads


def _deep_toy():
    """8 layers, each of its own bucket: the toy on which the DDP once read 16 values per step."""
    return nn.Sequential(*(nn.Linear(16, 16) for _ in range(8)))


def _reads_per_step(name, find_unused_parameters):
    torch.manual_seed(0)
    layer_mb = (16 * 16 + 16) * 4 / 2**20
    ddp = wrap(name, _deep_toy(), bucket_cap_mb=layer_mb, **find_unused_parameters)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
    x = torch.randn(4, 16)
    reads = []
    for step in range(3):
        with HostReads() as counted:
            loss = ddp(x).pow(2).mean()
            with ddp.no_sync() if step == 1 else _nothing():  # one accumulating backward
                loss.backward()
            if step == 1:
                ddp(x).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        reads.append(counted.counts)
    return reads, len(ddp.buckets) if name != "torch" else None


@pytest.mark.parametrize("name", WRAPPERS)
def test_no_host_reads_in_forward_and_backward(name):
    reads, buckets = minidp.launch(_reads_per_step, 2, name, {})[0]
    assert reads == [{}, {}, {}]
    if name == "bucketed":
        assert buckets == 8  # where the DDP once read 2 values per bucket


@pytest.mark.parametrize("name", OURS)
def test_at_most_one_host_read_per_step_with_find_unused_parameters(name):
    reads, _ = minidp.launch(_reads_per_step, 2, name, {"find_unused_parameters": True})[0]
    assert [sum(step.values()) for step in reads] == [1, 1, 1]


def test_the_host_read_counter_sees_reads_in_backward_hooks():
    """What the DDP once did per bucket (flags sent as a list, read back with tolist), here in
    a hook per layer of the 8-layer toy: 16 reads, and item() and bool() are counted too."""
    model = _deep_toy()

    def read(p):
        torch.tensor([float(p.grad is not None)]).tolist()

    for layer in model:
        layer.weight.register_post_accumulate_grad_hook(read)
    with HostReads() as counted:
        model(torch.randn(2, 16)).sum().backward()
    assert counted.counts == {"tensor from Python data": 8, "tolist": 8}
    with HostReads() as counted:
        bool(model[0].weight.sum() > 0), model[0].bias[0].item()
    assert counted.total == 2


# ---- arguments


def _bad_arguments():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2).double())
    said = {}
    for label, kwargs in {
        "repeated": {"buckets": [[3, 2], [2, 1, 0]]},
        "missing": {"buckets": [[3, 2, 1]]},
        "mixed dtypes": {"buckets": [[3, 2, 1, 0]]},
        "device_ids on the CPU": {"device_ids": [0]},
    }.items():
        try:
            DistributedDataParallel(model, **kwargs)
        except ValueError as e:
            said[label] = str(e)
    ddp = DistributedDataParallel(model.float(), buckets=[[3], [2], [1, 0]])
    ddp.events = []
    ddp(torch.randn(2, 4)).sum().backward()
    launched = [(e.index, e.kind) for e in ddp.events if e.kind in ("launch", "backward end")]
    return said, ddp.buckets, launched


def test_bad_arguments_are_one_clear_line_and_good_buckets_are_used():
    said, buckets, launched = minidp.launch(_bad_arguments, 1)[0]
    assert buckets == [[3], [2], [1, 0]]  # given buckets are kept, in launch order
    assert launched == [(0, "launch"), (1, "launch"), (2, "launch"), (-1, "backward end")]
    assert "exactly once" in said["repeated"] and "[2]" in said["repeated"]
    assert "missing: [0]" in said["missing"]
    assert "mixes dtypes" in said["mixed dtypes"]
    assert "leave it None for CPU modules" in said["device_ids on the CPU"]
    assert all("\n" not in message for message in said.values())


# ---- the timeline, under torch.compile


def _first_launch_in_backward():
    """How far into backward (0 to 1) the first bucket's all-reduce started (the median over
    steps), for the trainer's model and our DDP as train.build makes them with --compile."""
    from minidp.config import TrainConfig
    from minidp.environment import read_env
    from minidp.train import build

    try:
        torch.compile(lambda t: t + 1)(torch.ones(1))
    except Exception as e:  # no C++ compiler, or a platform inductor does not support
        return f"torch.compile is unavailable here: {type(e).__name__}: {e}"
    c = TrainConfig(
        n_layer=4,
        n_head=2,
        n_embd=192,
        block_size=64,
        batch_size=8,
        bucket_cap_mb=1.0,
        compile=True,
    )
    sharded = build(c, read_env())
    model, optimizer = sharded.model, sharded.optimizer
    x, y = torch.randint(256, (2, 8, 64), generator=torch.Generator().manual_seed(0))
    fractions = []
    for _ in range(5):  # the first step compiles
        model.events = []
        loss = model(x, y)[1]
        model.events.append(Event("backward"))
        loss.backward()
        at = {e.kind: e.start for e in reversed(model.events)}  # the first of each kind
        fractions.append((at["launch"] - at["backward"]) / (at["backward end"] - at["backward"]))
        optimizer.zero_grad()
    return statistics.median(fractions[1:])


def test_buckets_launch_during_backward_under_compile():
    """With each block compiled on its own, backward hands over a block's gradients as soon
    as that block is done, and the first bucket starts within the first half of backward
    (about a quarter in, with 4 blocks). With the model compiled whole, as train.build once
    did, it started 0.9 of the way in, when all the computing was done."""
    fraction = minidp.launch(_first_launch_in_backward, 1, timeout=600)[0]
    if isinstance(fraction, str):
        pytest.skip(fraction)
    assert fraction < 0.6

"""Every DDP variant and ZeRO-1 against one process trained on the concatenated batch.

The claim of the course: K workers, each with B/K examples, averaging gradients, take exactly
the step one worker takes with B examples. Each test trains the same model from the same start
twice, on K ranks and in one process, and compares the parameters after every step.
"""

import copy

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

import minidp
from minidp.collectives import ring_all_reduce
from minidp.ddp import AfterBackwardDDP, DistributedDataParallel, PerParameterDDP
from minidp.model import GPT, GPTConfig
from minidp.zero import ZeroRedundancyOptimizer

STEPS, BATCH = 5, 12  # 12 divides among 2 and 3 ranks, and into 2 micro-batches each
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5}

WRAPPERS = {
    "torch": lambda m: nn.parallel.DistributedDataParallel(
        m,
        find_unused_parameters=isinstance(m, Toy),  # torch needs telling; ours does not
    ),
    "after_backward": AfterBackwardDDP,
    "after_backward_ring": lambda m: AfterBackwardDDP(m, all_reduce=ring_all_reduce),
    "per_parameter": PerParameterDDP,
    "bucketed": lambda m: DistributedDataParallel(m, bucket_cap_mb=0.0005),  # several buckets
    "bucketed_one_bucket": DistributedDataParallel,
}
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


def _compare(model_name, optimizer_name, dtype, wrapper, micro_batches=1, zero=False, steps=5):
    """Max |parameter difference| to the single-process run, and across ranks, over all steps."""
    rank, world = dist.get_rank(), dist.get_world_size()
    make_model, loss_fn = MODELS[model_name]
    torch.manual_seed(0)
    reference = make_model().to(dtype)
    torch.manual_seed(rank)  # every rank starts different: the broadcast must fix that
    model = WRAPPERS[wrapper](make_model().to(dtype))
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


def _all_variants(model_name, optimizer_name, dtype):
    return {w: _compare(model_name, optimizer_name, dtype, w) for w in WRAPPERS}


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("model_name", ["toy", "gpt"])
@pytest.mark.parametrize("optimizer_name", ["sgd", "adamw"])
def test_every_variant_equals_one_large_batch(world_size, model_name, optimizer_name):
    results = minidp.launch(_all_variants, world_size, model_name, optimizer_name, torch.float64)
    for wrapper, (to_reference, across_ranks) in results[0].items():
        assert to_reference <= 1e-12, f"{wrapper}: {to_reference:.2e} from the single process"
        assert across_ranks == 0.0, f"{wrapper}: replicas differ by {across_ranks:.2e}"


def _float32_gpt():
    return {w: _compare("gpt", "sgd", torch.float32, w, steps=20) for w in ["torch", "bucketed"]}


def test_float32_gpt_within_tolerance():
    # SGD: Adam divides each gradient by its running RMS, so float32 rounding in a near-zero
    # gradient can move a parameter by up to lr; torch's own DDP then differs by ~3e-5 too.
    for wrapper, (to_reference, across_ranks) in minidp.launch(_float32_gpt, 2)[0].items():
        assert to_reference <= 1e-5, wrapper
        assert across_ranks == 0.0, wrapper


def _accumulation(model_name):
    names = ["torch", "after_backward", "per_parameter", "bucketed"]
    return {w: _compare(model_name, "adamw", torch.float64, w, micro_batches=2) for w in names}


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
    """A DDP that was used and dropped is freed, with its buffers (its hooks hold it weakly)."""
    import gc
    import weakref

    model = _gpt()
    refs = []
    for wrap in [AfterBackwardDDP, PerParameterDDP, DistributedDataParallel]:
        ddp = wrap(model)
        _gpt_loss(ddp, 0, slice(0, BATCH)).backward()
        refs.append(weakref.ref(ddp))
        del ddp
    gc.collect()
    # The model trains on without the freed wrappers: its own gradients, no communication.
    model.zero_grad()
    _gpt_loss(model, 0, slice(0, BATCH)).backward()
    return [r() is None for r in refs]


def test_a_dropped_ddp_is_freed():
    assert minidp.launch(_freed_after_use, 2) == [[True, True, True]] * 2


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
        ddp = WRAPPERS[wrapper](nn.Sequential(nn.Linear(6, 6), nn.BatchNorm1d(6)).double())
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
    ddp = WRAPPERS[wrapper](_FailsAtTheStart().double())
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
@pytest.mark.parametrize("wrapper", ["after_backward", "per_parameter", "bucketed"])
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
    model = DistributedDataParallel(_Mixed(), bucket_cap_mb=0.0001)
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

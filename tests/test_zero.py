"""ZeroRedundancyOptimizer against the unsharded torch optimizer, with and without DDP.

The same model from the same start, trained on K ranks with ZeRO (each rank's share of the
batch) and in one process with the plain optimizer (the whole batch): the parameters after
every step, and the consolidated optimizer state, must be the same. Its traffic is counted in
tests/test_fsdp.py, next to FSDP's.
"""

import copy

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
from test_fsdp import BATCH, MODELS, OPTIMIZERS, _gpt, _gpt_loss, _step

import minidp

pytestmark = pytest.mark.usefixtures("no_orphans")


def _compare(model_name, optimizer_name, with_ddp, dtype=torch.float64, steps=4):
    """Max |parameter difference| to one process; 0 if every rank holds the same parameters."""
    rank, K = dist.get_rank(), dist.get_world_size()
    make, loss_fn, _ = MODELS[model_name]
    torch.manual_seed(0)
    reference = make().to(dtype)
    torch.manual_seed(rank)  # every rank starts different: ZeRO (or DDP) must fix that
    model = make().to(dtype)
    if with_ddp:
        # The toy has parameters no rank uses: DDP must be told, as torch's must.
        model = minidp.DistributedDataParallel(model, find_unused_parameters=True)
    cls, kwargs = OPTIMIZERS[optimizer_name]
    zero = minidp.ZeroRedundancyOptimizer(
        model.parameters(), cls, average_gradients=not with_ddp, **kwargs
    )
    plain = cls(reference.parameters(), **kwargs)
    rows, worst, spread = slice(rank * BATCH // K, (rank + 1) * BATCH // K), 0.0, 0.0
    for step in range(steps):
        _step(model, zero, loss_fn, step, rows, 1)
        _step(reference, plain, loss_fn, step, slice(0, BATCH), 1)
        ours = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
        worst = max(
            worst,
            (ours - torch.nn.utils.parameters_to_vector(reference.parameters())).abs().max().item(),
        )
        first = ours.clone()
        dist.broadcast(first, 0)
        spread = max(spread, (ours - first).abs().max().item())
    return worst, spread


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("model_name", ["toy", "gpt"])
@pytest.mark.parametrize("optimizer_name", ["sgd", "adamw"])
def test_zero_equals_the_unsharded_optimizer(world_size, model_name, optimizer_name):
    for worst, spread in minidp.launch(_compare, world_size, model_name, optimizer_name, False):
        assert worst <= 1e-12
        assert spread == 0.0


@pytest.mark.parametrize("world_size", [2, 3])
def test_zero_under_ddp_takes_the_averaged_gradients(world_size):
    for worst, spread in minidp.launch(_compare, world_size, "toy", "adamw", True):
        assert worst <= 1e-12
        assert spread == 0.0


def _state_and_checkpoint():
    """Elements of state per rank; the consolidated state; the reference's; and the step
    after a fresh ZeRO at this world size loaded that state."""
    rank, K = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    reference, model = _gpt().double(), _gpt().double()
    model.load_state_dict(reference.state_dict())
    plain = torch.optim.AdamW(reference.parameters(), lr=0.01)
    zero = minidp.ZeroRedundancyOptimizer(model.parameters(), torch.optim.AdamW, lr=0.01)
    rows = slice(rank * BATCH // K, (rank + 1) * BATCH // K)
    for step in range(2):
        _step(model, zero, _gpt_loss, step, rows, 1)
        _step(reference, plain, _gpt_loss, step, slice(0, BATCH), 1)
    elementwise = sum(t.numel() for s in zero.optim.state.values() for t in s.values() if t.dim())
    zero.consolidate_state_dict(to=0)
    state = [zero.state_dict() if rank == 0 else None]
    dist.broadcast_object_list(state, src=0)
    return elementwise, state[0], copy.deepcopy(plain.state_dict())


def _resume(state):
    """A fresh ZeRO at this world size loads a full state; its next step, and the reference's."""
    rank, K = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    reference, model = _gpt().double(), _gpt().double()
    model.load_state_dict(reference.state_dict())
    plain = torch.optim.AdamW(reference.parameters(), lr=0.01)
    plain.load_state_dict(copy.deepcopy(state))
    zero = minidp.ZeroRedundancyOptimizer(model.parameters(), torch.optim.AdamW, lr=0.01)
    zero.load_state_dict(copy.deepcopy(state))
    _step(model, zero, _gpt_loss, 2, slice(rank * BATCH // K, (rank + 1) * BATCH // K), 1)
    _step(reference, plain, _gpt_loss, 2, slice(0, BATCH), 1)
    pairs = zip(model.parameters(), reference.parameters(), strict=True)
    return max((a - b).abs().max().item() for a, b in pairs)


def test_zero_shards_state_evenly_and_checkpoints_in_the_unsharded_format():
    results = minidp.launch(_state_and_checkpoint, 3)
    params = sum(p.numel() for p in _gpt().parameters())
    shard = -(-params // 3)  # ceil: every rank holds this many elements, the last one fewer
    assert [n for n, _, _ in results] == [2 * shard, 2 * shard, 2 * (params - 2 * shard)]
    _, state, reference = results[0]
    assert state["param_groups"] == reference["param_groups"]
    assert state["state"].keys() == reference["state"].keys()
    for key, ref in reference["state"].items():
        for name, value in ref.items():
            torch.testing.assert_close(state["state"][key][name], value, rtol=0, atol=1e-12)
    # The unsharded format resumes at another world size, and in a plain optimizer.
    assert max(minidp.launch(_resume, 2, state)) <= 1e-12


class _Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 6).double()
        self.b = nn.Linear(6, 3).float()

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)).float()).double()


def _mixed_dtypes():
    """Two flat vectors (float64, float32), gradients zeroed in place between steps."""
    rank = dist.get_rank()
    torch.manual_seed(0)
    reference, model = _Mixed(), _Mixed()
    model.load_state_dict(reference.state_dict())
    plain = torch.optim.AdamW(reference.parameters(), lr=0.01)
    zero = minidp.ZeroRedundancyOptimizer(model.parameters(), torch.optim.AdamW, lr=0.01)
    x = torch.randn(BATCH, 6, generator=torch.Generator().manual_seed(1)).double()
    for _ in range(3):
        for net, opt, rows in [
            (model, zero, slice(rank * 6, rank * 6 + 6)),
            (reference, plain, slice(0, BATCH)),
        ]:
            opt.zero_grad(set_to_none=False)
            net(x[rows]).square().mean().backward()
            opt.step()
    pairs = zip(model.parameters(), reference.parameters(), strict=True)
    return max((a.double() - b.double()).abs().max().item() for a, b in pairs), len(zero.flats)


def test_zero_with_mixed_dtypes_and_gradients_zeroed_in_place():
    for worst, flats in minidp.launch(_mixed_dtypes, 2):
        assert flats == 2
        assert worst <= 1e-6

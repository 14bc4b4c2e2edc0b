"""The trainer's sharding choice (minidp.sharding): gradient clipping by the norm of a gradient
spread over the ranks equals torch's clip_grad_norm_ in one process; under --shard fsdp each
rank holds half of every unit (the tied embedding too); --compute-dtype resolves by device.
The trainer's runs in each mode are compared with one process in test_train.py."""

import pytest
import torch
import torch.distributed as dist

from minidp import launch
from minidp.clipping import clip_grad_norm_
from minidp.config import compute_dtype
from minidp.environment import read_env
from minidp.flat import FlatLayout
from minidp.train import TrainConfig, build

pytestmark = pytest.mark.usefixtures("no_orphans")

SHARDED = [(5, 3), (7,), (2, 2, 2)]  # 30 numbers: cut unevenly at 2 and 3 ranks
REPLICATED = [(4,), (3, 3)]  # whole on every rank


def _gradients() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=g, dtype=torch.float64) for s in SHARDED + REPLICATED]


def _with_grad(grad: torch.Tensor) -> torch.Tensor:
    p = torch.zeros_like(grad, requires_grad=True)
    p.grad = grad.clone()
    return p


def _clip_on_ranks(max_norm: float):
    """Each rank holds its pieces of the SHARDED gradients (as minidp.flat cuts them) and all of
    the REPLICATED ones; the norm and the clipped gradients it holds."""
    rank, K = dist.get_rank(), dist.get_world_size()
    grads, n = _gradients(), len(SHARDED)
    layout = FlatLayout([g.numel() for g in grads[:n]], K)
    pieces = [
        (i, a, b, _with_grad(grads[i].reshape(-1)[a:b])) for i, a, b, _ in layout.pieces(rank)
    ]
    replicated = [_with_grad(g) for g in grads[n:]]
    shards = [p for *_, p in pieces]
    norm = clip_grad_norm_(shards, replicated, max_norm, torch.device("cpu"))
    return norm, [(i, a, b, p.grad) for i, a, b, p in pieces], [p.grad for p in replicated]


@pytest.mark.parametrize("max_norm", [1.0, 100.0], ids=["clipped", "under-the-limit"])
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_distributed_clip_equals_clip_grad_norm_in_one_process(world_size, max_norm):
    # A shard's own norm, a sum over ranks that counts the replicated gradients K times, or
    # a rank that scales by another factor would each show here.
    whole = [_with_grad(g) for g in _gradients()]
    expected = torch.nn.utils.clip_grad_norm_(whole, max_norm)
    n = len(SHARDED)
    for norm, pieces, replicated in launch(_clip_on_ranks, world_size, max_norm):
        torch.testing.assert_close(norm, expected, rtol=1e-12, atol=0)
        for i, a, b, grad in pieces:
            want = whole[i].grad.reshape(-1)[a:b]
            torch.testing.assert_close(grad, want, rtol=1e-12, atol=1e-15)
        for grad, p in zip(replicated, whole[n:], strict=True):
            torch.testing.assert_close(grad, p.grad, rtol=1e-12, atol=1e-15)
    assert (expected > max_norm) == (max_norm == 1.0)  # the two cases are what they say


def _held(c: TrainConfig) -> dict:
    """What this rank holds of the model under c: elements, and whether the head is tied."""
    sharded = build(c, read_env())
    local = lambda p: p.to_local() if hasattr(p, "to_local") else p  # noqa: E731 (torch's DTensor)
    raw = sharded.raw
    return {
        "numel": sum(local(p).numel() for p in raw.parameters()),
        "wte": local(raw.wte.weight).numel(),
        "tied": raw.wte.weight is raw.lm_head.weight,
    }


@pytest.mark.parametrize("impl", ["minidp", "torch"])
def test_fsdp_shards_every_block_and_the_embeddings(impl):
    c = TrainConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, shard="fsdp", impl=impl)
    whole = launch(_held, 1, TrainConfig(n_layer=2, n_head=2, n_embd=32, block_size=32))[0]
    ranks = launch(_held, 2, c)
    assert sum(held["wte"] for held in ranks) == whole["wte"]  # the embedding is cut too
    for held in ranks:
        assert held["tied"] and held["wte"] < whole["wte"]  # one matrix embeds and scores
        # Half of everything, give or take a unit's padding (ours) or a row (torch's).
        assert abs(held["numel"] - whole["numel"] / 2) <= 3 * 32


def test_compute_dtype_auto_is_bf16_on_gpus_and_fp32_elsewhere():
    auto, chosen = TrainConfig(), TrainConfig(compute_dtype="bf16")
    assert [compute_dtype(auto, "cuda"), compute_dtype(auto, "cpu")] == ["bf16", "fp32"]
    assert [compute_dtype(chosen, "cuda"), compute_dtype(chosen, "cpu")] == ["bf16", "bf16"]

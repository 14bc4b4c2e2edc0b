"""The memory calculator against hand computations, the papers' own figures, and real models."""

import pytest
import torch
import torch.distributed as dist
from torch.nn.attention import SDPBackend, sdpa_kernel

from minidp import memory
from minidp.launch import launch
from minidp.memory import GB, MODELS, ModelSpec, Setup, per_gpu, state_bytes
from minidp.model import GPT, GPTConfig
from minidp.zero import ZeroRedundancyOptimizer


@pytest.mark.parametrize("shape", [(2, 32, 16), (4, 64, 64), (3, 96, 128)])
def test_gpt_params_counts_minidps_gpt(shape):
    n_layer, n_embd, block_size = shape
    gpt = GPT(GPTConfig(block_size, 256, n_layer, 4, n_embd))
    assert memory.gpt_params(n_layer, n_embd, 256, block_size) == gpt.num_params(False)


def test_gpt2_sizes_are_the_published_ones():
    # Hugging Face's counts of the released GPT-2 checkpoints (tied embeddings).
    expected = {"GPT-2 small": 124_439_808, "GPT-2 medium": 354_823_168,
                "GPT-2 large": 774_030_080, "GPT-2 XL": 1_557_611_200}  # fmt: skip
    assert {name: MODELS[name].params for name in expected} == expected


def test_zero_paper_figure_1():
    # 7.5B parameters, 64 data-parallel GPUs, K = 12: 120, 31.4, 16.6 and 1.9 GB per GPU.
    totals = [sum(state_bytes(7.5e9, "bf16 mixed", stage, 64).values()) / GB for stage in range(4)]
    assert [round(t, 1) for t in totals] == [120.0, 31.4, 16.6, 1.9]


def test_fp32_adam_is_16_bytes_per_parameter_too():
    assert state_bytes(1000, "fp32") == {"weights": 4000, "gradients": 4000, "optimizer": 8000}


def test_zero_stage_is_checked():
    with pytest.raises(ValueError, match="stages 0"):
        state_bytes(10, zero_stage=4)


def test_optimizer_state_of_a_real_adamw():
    gpt = GPT(GPTConfig(32, 256, 2, 2, 32))
    optimizer = torch.optim.AdamW(gpt.parameters())
    gpt(torch.zeros(1, 8, dtype=torch.long), torch.zeros(1, 8, dtype=torch.long))[1].backward()
    optimizer.step()
    # exp_avg and exp_avg_sq per parameter; the step counters are one number per tensor.
    measured = sum(
        t.numel() * t.element_size()
        for s in optimizer.state.values()
        for t in s.values()
        if t.dim()
    )
    assert measured == state_bytes(gpt.num_params(False), "fp32")["optimizer"]


def _zero_state(config: GPTConfig) -> tuple[int, int]:
    torch.manual_seed(0)
    gpt = GPT(config)
    optimizer = ZeroRedundancyOptimizer(gpt.parameters(), torch.optim.AdamW, lr=1e-3)
    gpt(torch.zeros(1, 8, dtype=torch.long), torch.zeros(1, 8, dtype=torch.long))[1].backward()
    optimizer.step()
    counters = sum(1 for s in optimizer.optim.state.values() for t in s.values() if not t.dim())
    return optimizer.local_state_numel() - counters, dist.get_rank()


def test_zero1_holds_a_world_size_share_of_the_state():
    config = GPTConfig(32, 256, 4, 2, 64)
    params = GPT(config).num_params(False)
    numels = [numel for numel, _ in launch(_zero_state, 2, config)]
    assert sum(numels) == 2 * params  # every element of state lives on exactly one rank
    predicted = state_bytes(params, "fp32", zero_stage=1, dp=2)["optimizer"]
    for numel in numels:  # cut by elements: even, but for the padding of an odd count
        assert abs(4 * numel - predicted) <= 8


def test_activations_by_hand():
    # GPT-3 175B's shape (Brown et al. 2020): s = 2048, h = 12288, a = 96, L = 96.
    spec = ModelSpec("gpt3", 175_000_000_000, 96, 12288, 96, 50257, 2048)
    sbh, as_h = 2048 * 12288, 96 * 2048 / 12288  # as/h = 16
    assert memory.layer_activation_bytes(spec, 1) == sbh * (34 + 5 * as_h)
    assert memory.layer_activation_bytes(spec, 2, tp=8) == 2 * sbh * (34 + 5 * as_h) / 8
    assert memory.layer_activation_bytes(spec, 1, recompute="attention") == 34 * sbh
    assert memory.layer_activation_bytes(spec, 1, recompute="full") == 2 * sbh
    assert memory.layer_activation_bytes(spec, 1, dropout=False) == sbh * (32 + 2 * as_h)
    # Tensor parallelism without sequence parallelism: sbh(10 + 24/t + 5as/(ht)), their table 2.
    alone = memory.layer_activation_bytes(spec, 1, tp=8, sequence_parallel=False)
    assert alone == pytest.approx(sbh * (10 + 24 / 8 + 5 * as_h / 8))
    full = memory.layer_activation_bytes(spec, 1, tp=8, recompute="full", sequence_parallel=False)
    assert full == 2 * sbh  # each GPU keeps the whole input of the layer


def saved_bytes(config: GPTConfig, batch: int) -> int:
    """Bytes autograd keeps for backward (each storage once), the parameters aside."""
    torch.manual_seed(0)
    gpt = GPT(config)
    storages: dict[int, int] = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    x = torch.randint(256, (batch, config.block_size))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        gpt(x, x)
    params = {p.untyped_storage().data_ptr() for p in gpt.parameters()}
    return sum(n for ptr, n in storages.items() if ptr not in params)


@pytest.mark.parametrize(
    "backend, recompute",
    [(SDPBackend.FLASH_ATTENTION, "attention"), (SDPBackend.MATH, "none")],
    ids=["flash", "math"],
)
def test_activations_of_a_real_layer(backend, recompute):
    h, a, s, b = 64, 4, 64, 4
    spec = ModelSpec("tiny", 0, 2, h, a, 256, s)
    with sdpa_kernel(backend):  # flash attention keeps no s x s scores; the plain one does
        shallow, deep = (saved_bytes(GPTConfig(s, 256, n, a, h), b) for n in (2, 4))
    per_layer = (deep - shallow) / 2
    predicted = memory.layer_activation_bytes(spec, b, 4, recompute=recompute, dropout=False)
    assert per_layer == pytest.approx(predicted, rel=0.02)


def test_per_gpu_splits_and_shards():
    spec = MODELS["Llama 2 70B"]
    alone = per_gpu(spec, Setup(gpus=1))
    split = per_gpu(spec, Setup(gpus=64, zero_stage=1, tensor_parallel=8, pipeline_parallel=2))
    assert (
        split["weights"] == alone["weights"] / 16 and split["gradients"] == alone["gradients"] / 16
    )
    assert split["optimizer"] == alone["optimizer"] / 64  # tp * pp, then ZeRO over dp = 4
    layers = spec.n_layer * memory.layer_activation_bytes(spec, 1, tp=8)
    assert split["activations"] == layers  # the first stage: L layers' worth, whatever pp


def test_fits_and_bad_splits():
    spec = MODELS["GPT-2 small"]
    assert memory.fits(spec, Setup(gpus=1), memory.GPUS["RTX 4090 24GB"])
    assert not memory.fits(MODELS["Llama 2 7B"], Setup(gpus=1), memory.GPUS["H200 141GB"])
    assert memory.fits(MODELS["Llama 2 7B"], Setup(gpus=8, zero_stage=3, recompute="full"), 80 * GB)
    with pytest.raises(ValueError, match="do not split"):
        per_gpu(spec, Setup(gpus=6, tensor_parallel=4))


def test_table_lists_every_model():
    lines = memory.table(list(MODELS.values()), Setup(gpus=1)).splitlines()
    assert len(lines) == 1 + len(MODELS) and lines[1].startswith("GPT-2 small")

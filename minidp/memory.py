"""What training a transformer costs in memory, per GPU: weights, gradients, optimizer state,
activations, under data parallelism with ZeRO, tensor and pipeline parallelism.

    spec = MODELS["Llama 2 7B"]
    per_gpu(spec, Setup(gpus=8, zero_stage=1))       # {"weights": bytes, ..., "activations": ...}
    fits(spec, Setup(gpus=8, zero_stage=3), GPUS["H100 80GB"])

Model states follow the ZeRO paper (Rajbhandari et al., "ZeRO: Memory Optimizations Toward
Training Trillion Parameter Models", SC 2020, section 3.1): mixed-precision Adam keeps 2Ψ bytes of
16-bit weights, 2Ψ of 16-bit gradients and KΨ of optimizer state, K = 12 (fp32 master weights,
momentum and variance) for Ψ parameters; ZeRO stage 1, 2, 3 shard the optimizer state, then the
gradients, then the weights over the data-parallel ranks. Activations follow Korthikanti et al.,
"Reducing Activation Recomputation in Large Transformer Models" (MLSys 2023), section 4: per
layer sbh(34 + 5as/h) bytes with 16-bit values, for s tokens of context, b sequences, h the
width and a the attention heads. With tensor parallelism (tp > 1) the activations assume
sequence parallelism unless Setup(sequence_parallel=False): tensor parallelism alone leaves 10 of
those 34 sbh whole on every GPU. Everything is in bytes; GB below means 10^9 bytes.
"""

from dataclasses import dataclass

GB = 1e9


@dataclass(frozen=True)
class ModelSpec:
    name: str
    params: int  # Ψ, every parameter counted once
    n_layer: int  # L
    n_embd: int  # h, the width of the residual stream
    n_head: int  # a
    vocab_size: int  # V
    seq_len: int  # s, the context length it was trained with


def gpt_params(n_layer: int, n_embd: int, vocab_size: int, block_size: int) -> int:
    """Parameters of a GPT-2-shaped model with tied embeddings: 12Lh² + 13Lh + (V + T)h + 2h.

    Per block: attention 4h² + 4h (q, k, v and the output projection, with biases), MLP 8h² + 5h
    (h -> 4h -> h, with biases), two layer norms 4h; then token and position embeddings and the
    final layer norm.
    """
    L, h = n_layer, n_embd
    return 12 * L * h * h + 13 * L * h + (vocab_size + block_size) * h + 2 * h


def _gpt2(name: str, n_layer: int, n_embd: int, n_head: int) -> ModelSpec:
    # GPT-2 (Radford et al. 2019): a vocabulary of 50257 tokens, 1024 tokens of context.
    params = gpt_params(n_layer, n_embd, 50257, 1024)
    return ModelSpec(name, params, n_layer, n_embd, n_head, 50257, 1024)


# Llama 2 (Touvron et al. 2023) counts from its released checkpoints; its MLP (SwiGLU, 2.7h wide
# in three matrices) and grouped-query attention differ from GPT's, so the activation formula,
# derived for GPT, is an estimate for it.
MODELS = {
    spec.name: spec
    for spec in [
        _gpt2("GPT-2 small", 12, 768, 12),
        _gpt2("GPT-2 medium", 24, 1024, 16),
        _gpt2("GPT-2 large", 36, 1280, 20),
        _gpt2("GPT-2 XL", 48, 1600, 25),
        ModelSpec("Llama 2 7B", 6_738_415_616, 32, 4096, 32, 32000, 4096),
        ModelSpec("Llama 2 70B", 68_976_648_192, 80, 8192, 64, 32000, 4096),
    ]
}

# Memory as sold, in GB; a little goes to the CUDA context and to fragmentation.
GPUS = {
    "RTX 4090 24GB": 24 * GB,
    "A100 40GB": 40 * GB,
    "A100 80GB": 80 * GB,
    "H100 80GB": 80 * GB,
    "H200 141GB": 141 * GB,
}

# Bytes per parameter of (weights, gradients, optimizer state) when training with Adam.
PRECISIONS = {
    "fp32": (4, 4, 8),  # fp32 weights and gradients; Adam's momentum and variance (K = 8)
    "bf16 mixed": (2, 2, 12),  # 16-bit weights and gradients; fp32 master copy, m, v (K = 12)
}
RECOMPUTE = ("none", "attention", "full")


def state_bytes(params: int, precision: str = "bf16 mixed", zero_stage: int = 0, dp: int = 1):
    """Bytes per GPU of weights, gradients and optimizer state, ZeRO stage 0-3 over dp ranks."""
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"ZeRO has stages 0 (off) to 3, not {zero_stage}")
    w, g, k = PRECISIONS[precision]
    return {
        "weights": w * params / (dp if zero_stage >= 3 else 1),
        "gradients": g * params / (dp if zero_stage >= 2 else 1),
        "optimizer": k * params / (dp if zero_stage >= 1 else 1),
    }


def layer_activation_bytes(
    spec: ModelSpec,
    micro_batch: int,
    value_bytes: int = 2,
    tp: int = 1,
    recompute: str = "none",
    dropout: bool = True,
    sequence_parallel: bool = True,
) -> float:
    """Bytes one transformer layer keeps for backward: Korthikanti et al.'s sbh(34 + 5as/h).

    Per layer, in values: 16 sbh from the matmul and norm inputs, GELU's input and the like, and
    a s² b attention probabilities (twice with dropout: before and after it); plus 1-byte
    dropout masks, 2 sbh + a s² b. With 2-byte values that is 34 sbh + 5 a s² b. recompute
    "attention" (selective recomputation, or flash attention) recomputes the s² terms in
    backward instead of keeping them; "full" keeps only the layer's input. Tensor parallelism
    alone divides what lies inside attention and the MLP by tp; the layer norms' inputs, the
    inputs of the first matrix products and the last two dropout masks, 10 sbh with dropout,
    stay whole on every GPU: sbh(10 + 24/tp + 5as/(h tp)) (their table 2). With sequence
    parallelism, which splits those along the sequence, everything is divided by tp.
    """
    if recompute not in RECOMPUTE:
        raise ValueError(f"recompute is one of {RECOMPUTE}, not {recompute!r}")
    s, b, h, a = spec.seq_len, micro_batch, spec.n_embd, spec.n_head
    split = sequence_parallel or tp == 1
    if recompute == "full":
        return value_bytes * s * b * h / (tp if split else 1)
    scores = 0 if recompute == "attention" else a * s * s * b  # (b, a, s, s) values
    values = 16 * s * b * h + (2 if dropout else 1) * scores
    masks = 2 * s * b * h + scores if dropout else 0
    total = value_bytes * values + masks
    whole = 0 if split else value_bytes * 4 * s * b * h + (2 * s * b * h if dropout else 0)
    return whole + (total - whole) / tp


@dataclass(frozen=True)
class Setup:
    """How a model is trained: on how many GPUs, split how, in what precision."""

    gpus: int = 8  # the world size, tp * pp * dp
    zero_stage: int = 0
    precision: str = "bf16 mixed"
    tensor_parallel: int = 1  # tp: each layer's matrices split over this many GPUs
    pipeline_parallel: int = 1  # pp: the layers split into this many stages
    micro_batch: int = 1  # sequences per GPU per forward pass
    recompute: str = "none"
    sequence_parallel: bool = True  # with tp > 1, as Megatron-LM runs it: activations / tp

    @property
    def data_parallel(self) -> int:
        """dp: the replicas, each tp * pp GPUs; ZeRO shards over these."""
        if self.gpus % (self.tensor_parallel * self.pipeline_parallel):
            raise ValueError(
                f"{self.gpus} GPUs do not split into tensor {self.tensor_parallel} x "
                f"pipeline {self.pipeline_parallel} groups"
            )
        return self.gpus // (self.tensor_parallel * self.pipeline_parallel)


def per_gpu(spec: ModelSpec, setup: Setup) -> dict[str, float]:
    """Bytes on the busiest GPU (the first pipeline stage): model states and activations."""
    tp, pp, dp = setup.tensor_parallel, setup.pipeline_parallel, setup.data_parallel
    # Tensor and pipeline parallelism split the parameters; ZeRO then shards over the dp replicas.
    memory = state_bytes(spec.params / (tp * pp), setup.precision, setup.zero_stage, dp)
    value_bytes, sp = PRECISIONS[setup.precision][0], setup.sequence_parallel
    layer = layer_activation_bytes(
        spec, setup.micro_batch, value_bytes, tp, setup.recompute, sequence_parallel=sp
    )
    # With a 1F1B pipeline the first stage keeps pp micro-batches in flight through its L/pp
    # layers: L layers' worth, whatever pp (Korthikanti et al., section 4).
    activations = spec.n_layer * layer
    if pp == 1:  # embeddings, last norm and output logits, (4sbh/t)(1 + V/h) at 16 bits
        sbh = spec.seq_len * setup.micro_batch * spec.n_embd
        logits = 2 * value_bytes * sbh * spec.vocab_size / spec.n_embd / tp  # split by vocabulary
        activations += logits + 2 * value_bytes * sbh / (tp if sp else 1)
    return {**memory, "activations": activations}


def fits(spec: ModelSpec, setup: Setup, gpu_bytes: float) -> bool:
    """Whether the busiest GPU's memory holds it all (before the CUDA context and fragmentation)."""
    return sum(per_gpu(spec, setup).values()) <= gpu_bytes


def table(specs: list[ModelSpec], setup: Setup) -> str:
    """One line per model: parameters and each part of the memory per GPU, in GB."""
    lines = [
        f"{'model':<14}{'params':>9}{'weights':>9}{'grads':>9}{'optim':>9}{'activ':>9}"
        f"{'total':>9}  GB per GPU"
    ]
    for spec in specs:
        parts = per_gpu(spec, setup)
        cells = "".join(f"{v / GB:9.1f}" for v in [*parts.values(), sum(parts.values())])
        lines.append(f"{spec.name:<14}{spec.params / 1e9:8.2f}B{cells}")
    return "\n".join(lines)

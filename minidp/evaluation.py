"""What the trainer asks of its model between steps: a validation loss and a text sample.

    val = evaluate(model, val_tokens, config, env, autocast)   # every rank: the same number
    text = sample(raw_model, prompt, config, env)               # every rank: bytes decoded to text

The validation loss is measured on the same held-out batches every time (their own stream of
batches, seeded with seed + 1), each rank taking its rows as in training, so that successive
values differ only because the model changed. The sample starts from a fixed prompt with a fixed
generator, so samples before and after training differ only because the model learned. Every
rank samples, with the same generator, the same text: a sharded model's forward is a collective.
"""

import torch
import torch.distributed as dist

from minidp.config import TrainConfig
from minidp.data import decode, get_batch
from minidp.environment import DistEnv
from minidp.model import GPT


@torch.no_grad()
def evaluate(model, val: torch.Tensor, c: TrainConfig, env: DistEnv, autocast) -> float:
    """Mean loss over c.eval_batches fixed validation batches, averaged over the ranks."""
    model.eval()
    total = torch.zeros((), device=env.device)
    for i in range(c.eval_batches):  # seed + 1: a stream of its own, the same at every eval
        x, y = get_batch(val, i, c.seed + 1, c.batch_size, c.block_size, env.rank, env.world_size)
        with autocast:
            total += model(x.to(env.device), y.to(env.device))[1].float()
    dist.all_reduce(total)
    model.train()
    return total.item() / (c.eval_batches * env.world_size)


def sample(raw: GPT, prompt: torch.Tensor, c: TrainConfig, env: DistEnv) -> str:
    """A fixed prompt continued by c.sample_tokens sampled bytes (the same generator each time)."""
    g = torch.Generator(device=env.device).manual_seed(c.seed)
    idx = prompt.long().view(1, -1).to(env.device)
    raw.eval()
    out = raw.generate(idx, c.sample_tokens, temperature=0.8, top_k=50, generator=g)
    raw.train()
    return decode(out[0].tolist())

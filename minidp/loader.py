"""This rank's batches on its device, the next one already on its way while this one trains.

    batches = DeviceBatches(tokens, seed=0, batch_size=16, block_size=128, env=env)
    x, y = batches.get(step)       # (B/K, T) int64 each, on env.device
    batches.prefetch(step + 1)     # after the step's work is queued on the GPU

On a GPU the CPU only queues work, so while the GPU runs step s the CPU is free to build step
s + 1's rows (minidp.data.batch_rows) and to queue their copy. The copy is made from pinned
(page-locked) memory with non_blocking=True: from ordinary memory CUDA first copies into a pinned
buffer of its own, and the CPU waits. The rows travel as bytes, one per token, and become int64 on
the GPU: 8 times less to copy. On a CPU there is nothing to overlap, and get() builds the batch.
"""

from torch import Tensor

from minidp.data import batch_rows
from minidp.environment import DistEnv


class DeviceBatches:
    """(x, y) of each step for this rank, on its device; prefetch() one step ahead."""

    def __init__(self, tokens: Tensor, seed: int, batch_size: int, block_size: int, env: DistEnv):
        self.tokens, self.seed, self.env = tokens, seed, env
        self.batch_size, self.block_size = batch_size, block_size
        self.next: tuple[int, Tensor] | None = None  # (step, rows on the device)

    def _rows(self, step: int) -> Tensor:
        e = self.env
        rows = batch_rows(
            self.tokens, step, self.seed, self.batch_size, self.block_size, e.rank, e.world_size
        )  # (B/K, T+1), uint8
        if e.device.type == "cuda":  # pinned, so that the copy below does not wait
            return rows.pin_memory().to(e.device, non_blocking=True)
        return rows

    def prefetch(self, step: int) -> None:
        """Start building and copying step `step`'s batch."""
        self.next = (step, self._rows(step))

    def get(self, step: int) -> tuple[Tensor, Tensor]:
        """Step `step`'s inputs and targets, (B/K, T) int64 each, on this rank's device."""
        rows = self.next[1] if self.next and self.next[0] == step else self._rows(step)
        self.next = None
        rows = rows.long()  # on the device: 8 bytes per token only there
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()  # y is x shifted by one

"""Length-grouped batches laid out per optimizer step, resumable mid-epoch.

Every rank computes the same global schedule from ``(seed, epoch)``: micro-batches
of similar length (little padding), grouped into optimizer steps of
``world_size x accumulation`` micro-batches. Because the whole step is known in
advance, each micro-batch carries the number of target tokens in its *step*
across all ranks, which the loss divides by.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal


@dataclass
class MicroBatch:
    indices: list[int]
    step_targets: int


def micro_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int,
                  order: Literal["length_grouped", "random"] = "length_grouped", group_size: int = 64) -> list[list[int]]:
    """Shuffled micro-batches; ``length_grouped`` sorts within windows of ``group_size`` batches.

    >>> bs = micro_batches([5, 50, 6, 49, 7, 48, 8, 47], 2, seed=0, epoch=0)
    >>> sorted(sorted([5, 50, 6, 49, 7, 48, 8, 47][i] for i in b) for b in bs)
    [[5, 6], [7, 8], [47, 48], [49, 50]]
    """
    rng = random.Random(seed * 100_003 + epoch)
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    if order == "length_grouped":
        window = batch_size * group_size
        grouped = []
        for s in range(0, len(idx), window):
            grouped += sorted(idx[s:s + window], key=lambda i: -lengths[i])
        idx = grouped
    elif order != "random":
        raise ValueError(f"order must be 'length_grouped' or 'random', got {order!r}")
    batches = [idx[s:s + batch_size] for s in range(0, len(idx), batch_size)]
    rng.shuffle(batches)
    return batches


def step_schedule(batches: list[list[int]], n_targets: Sequence[int], world_size: int,
                  accumulation: int) -> list[list[MicroBatch]]:
    """Per-rank micro-batch lists; each micro-batch knows its whole step's target count.

    Step ``k`` takes ``world_size * accumulation`` consecutive micro-batches; rank ``r``
    gets slot ``a * world_size + r``. If the count does not divide evenly by
    ``world_size``, the first micro-batches are repeated (as ``DistributedSampler`` does)
    so every rank runs the same number of forward passes.

    >>> sched = step_schedule([[0], [1], [2]], [1, 2, 4], world_size=2, accumulation=1)
    >>> [[(m.indices, m.step_targets) for m in r] for r in sched]
    [[([0], 3), ([2], 5)], [([1], 3), ([0], 5)]]
    """
    batches = list(batches)
    if not batches:
        return [[] for _ in range(world_size)]
    n_real = len(batches)
    while len(batches) % world_size:
        batches.append(batches[(len(batches) - n_real) % n_real])
    per_step = world_size * accumulation
    ranks: list[list[MicroBatch]] = [[] for _ in range(world_size)]
    for s in range(0, len(batches), per_step):
        step = batches[s:s + per_step]
        total = sum(n_targets[i] for b in step for i in b)
        for slot, b in enumerate(step):
            ranks[slot % world_size].append(MicroBatch(b, total))
    return ranks


class StepBatchSampler:
    """A batch sampler yielding ``(indices, step_targets)`` for one rank; resumable.

    ``set_epoch`` is called by Lightning at each epoch; ``skip`` (set on resume) drops
    the micro-batches of the current epoch that were already trained on.
    """

    def __init__(self, lengths: Sequence[int], n_targets: Sequence[int], batch_size: int, accumulation: int = 1,
                 world_size: int = 1, rank: int = 0, seed: int = 42,
                 order: Literal["length_grouped", "random"] = "length_grouped"):
        self.lengths, self.n_targets = list(lengths), list(n_targets)
        self.batch_size, self.accumulation = batch_size, accumulation
        self.world_size, self.rank, self.seed, self.order = world_size, rank, seed, order
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.skip = 0
        self.epoch = epoch

    def schedule(self) -> list[MicroBatch]:
        batches = micro_batches(self.lengths, self.batch_size, self.seed, self.epoch, self.order)
        return step_schedule(batches, self.n_targets, self.world_size, self.accumulation)[self.rank]

    def __iter__(self) -> Iterator[tuple[list[int], int]]:
        sched = self.schedule()[self.skip:]
        self.skip = 0
        for mb in sched:
            yield mb.indices, mb.step_targets

    def __len__(self) -> int:
        n = -(-len(self.lengths) // self.batch_size)
        return -(-n // self.world_size)

    def pad_fraction(self) -> float:
        """Share of pad tokens over this rank's epoch when padding to the longest in each batch."""
        real = padded = 0
        for mb in self.schedule():
            lens = [self.lengths[i] for i in mb.indices]
            real += sum(lens)
            padded += max(lens) * len(lens)
        return 1 - real / padded if padded else 0.0

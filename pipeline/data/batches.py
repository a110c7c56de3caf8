"""Per-worker batch sources: a shard of in-memory tensors, or a shard of a streamed data set.

Every worker of a data-parallel run must take the same number of training steps per epoch
(DDP synchronizes each backward pass), so both sources fix `steps_per_epoch` up front.
"""
from __future__ import annotations

import itertools
from typing import Iterator

import torch

from pipeline.data.tensors import ImageTensors

Batch = tuple[torch.Tensor, torch.Tensor]


class TensorBatches:
    """Batches of one worker's shard of an in-memory split; the whole split moves to the device once."""

    def __init__(self, data: ImageTensors, rank: int, world_size: int, batch_size: int,
                 device: torch.device, seed: int = 0):
        self.images = data.images.to(device)
        self.labels = data.labels.to(device)
        self.rank, self.world_size, self.seed = rank, world_size, seed
        per_worker = len(data) // world_size
        self.batch_size = min(batch_size, max(per_worker, 1))
        self.steps_per_epoch = max(per_worker // self.batch_size, 1)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """A fresh seeded permutation each epoch (the same on every worker), sharded by rank, last partial batch dropped."""
        order = torch.randperm(len(self.labels), generator=torch.Generator().manual_seed(self.seed * 1000 + epoch))
        mine = order[self.rank::self.world_size].to(self.images.device)
        for step in range(self.steps_per_epoch):
            index = mine[step * self.batch_size:(step + 1) * self.batch_size]
            yield self.images[index], self.labels[index]

    def in_order(self, batch_size: int) -> Iterator[Batch]:
        """This worker's shard for evaluation: every image once, no shuffling."""
        index = torch.arange(self.rank, len(self.labels), self.world_size, device=self.images.device)
        for chunk in index.split(batch_size):
            yield self.images[chunk], self.labels[chunk]


class StreamBatches:
    """Batches of one worker's part of a sharded data set streamed through `datasets`.

    Every k-th record of the training split (k = 1 / val_fraction) forms the validation split,
    the rest trains, so selection never sees the test split.
    """

    def __init__(self, source: str, split: str, columns: tuple[str, str], in_chans: int, image_size: int,
                 rank: int, world_size: int, batch_size: int, device: torch.device, num_rows: int,
                 seed: int = 0, keep=None):
        self.args = dict(source=source, split=split, image_column=columns[0], label_column=columns[1],
                         in_chans=in_chans, image_size=image_size, rank=rank, world_size=world_size, keep=keep)
        self.batch_size, self.device, self.seed = batch_size, device, seed
        self.steps_per_epoch = max(num_rows // (world_size * batch_size), 1)

    def _stream(self, epoch: int, shuffle: bool, batch_size: int) -> Iterator[Batch]:
        from pipeline.data.huggingface import stream_batches

        for images, labels in stream_batches(**self.args, batch_size=batch_size, epoch=epoch,
                                             seed=self.seed, shuffle=shuffle):
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        # Shards rarely split evenly: cycle through this worker's part so every worker takes the same steps.
        passes = (self._stream(epoch * 1000 + i, True, self.batch_size) for i in itertools.count())
        return itertools.islice(itertools.chain.from_iterable(passes), self.steps_per_epoch)

    def in_order(self, batch_size: int) -> Iterator[Batch]:
        return self._stream(0, False, batch_size)

"""Per-worker batch sources: a shard of in-memory tensors, or a share of a data set streamed through Ray Data.

Every worker of a data-parallel run must take the same number of training steps per epoch
(DDP synchronizes each backward pass), so both sources fix `steps_per_epoch` up front.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
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


class StreamedBatches:
    """Batches of one worker's share of a streamed split (`pipeline.data.stream`): read, decoded and transformed
    in Ray Data's CPU tasks across the cluster, prefetched, pinned on a GPU and moved without blocking.

    Training: each epoch deals out a permutation of the pieces seeded by (seed, epoch); every worker gets
    rows // world_size rows (the remainder, fewer than world_size rows, is dropped that epoch), shuffled
    again in a local buffer; the last batch may be partial, the same size on every worker. Evaluation
    (`in_order`): the split in file order, cut into one contiguous part per worker, every row once.
    """

    def __init__(self, split, keep, transforms: dict, rank: int, world_size: int, batch_size: int,
                 device: torch.device, seed: int = 0, prefetch_batches: int = 4, train_cpus: float = 0):
        from pipeline.data.stream import kept_counts

        self.split, self.keep, self.transforms = split, keep, transforms
        self.rank, self.world_size, self.device, self.seed = rank, world_size, device, seed
        self.prefetch_batches, self.train_cpus = prefetch_batches, train_cpus
        self.counts = kept_counts(split, keep)
        self.num_rows = sum(self.counts)
        per_worker = self.num_rows // world_size
        self.dropped_per_epoch = self.num_rows - per_worker * world_size
        self.batch_size = min(batch_size, max(per_worker, 1))
        self.steps_per_epoch = max(-(-per_worker // self.batch_size), 1)

    def _dataset(self, runs, epoch: int, train: bool):
        import ray.data
        from ray.data import ExecutionResources

        from pipeline.data.stream import decode_batch

        items = [{"piece": p, "skip": s, "take": t, "epoch": epoch} for p, s, t in runs]
        dataset = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
        dataset = dataset.map_batches(
            decode_batch, batch_size=1, num_cpus=1,
            fn_kwargs={"split": self.split, "transform": self.transforms["train" if train else "eval"],
                       "in_chans": self.transforms["eval"]["in_chans"], "keep": self.keep, "seed": self.seed})
        options = dataset.context.execution_options
        options.preserve_order = not train  # evaluation in file order
        if self.train_cpus:  # the Train workers' CPUs are not Ray Data's to plan with
            options.exclude_resources = ExecutionResources(cpu=self.train_cpus)
        return dataset

    def _batches(self, dataset, batch_size: int, shuffle_seed: int | None) -> Iterator[dict[str, torch.Tensor]]:
        for batch in dataset.iter_torch_batches(
                batch_size=batch_size, prefetch_batches=self.prefetch_batches, device="cpu",
                pin_memory=self.device.type == "cuda", drop_last=False,
                local_shuffle_buffer_size=max(4 * batch_size, 512) if shuffle_seed is not None else None,
                local_shuffle_seed=shuffle_seed):
            yield {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def epoch_rows(self, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        """This worker's training batches of an epoch as {image, label, id}."""
        from pipeline.data.stream import assign, epoch_order

        order = epoch_order(len(self.counts), self.seed, epoch)
        runs = assign(self.counts, order, self.rank, self.world_size, equal=True)
        seed = int(np.random.default_rng([self.seed, epoch, self.rank]).integers(2**31))
        return self._batches(self._dataset(runs, epoch, train=True), self.batch_size, seed)

    def rows_in_order(self, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        from pipeline.data.stream import assign

        runs = assign(self.counts, list(range(len(self.counts))), self.rank, self.world_size, equal=False)
        return self._batches(self._dataset(runs, 0, train=False), batch_size, None)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        return ((b["image"], b["label"]) for b in self.epoch_rows(epoch))

    def in_order(self, batch_size: int) -> Iterator[Batch]:
        return ((b["image"], b["label"]) for b in self.rows_in_order(batch_size))

"""The Ray Train trainer of every run: `TorchTrainer` without Ray Train's Ray Data set-up.

Our loops read in-memory tensors, or stream through Ray Data pipelines each worker builds itself
(`pipeline.data.stream`), so no run hands Ray Train a `datasets=` argument. Ray Train 2.60 still sets up
Ray Data for every run: a `DatasetManager` actor, one more Python process importing Ray Data (about 1.5 s of
CPU with its start) while the workers start, and a round trip to every worker for Ray Data's context. No
public option leaves it out, so the trainer drops that one callback when it has no data sets to manage, and
keeps Ray's full set otherwise.
"""
from __future__ import annotations

from ray.train.torch import TorchTrainer
from ray.train.v2._internal.callbacks.datasets import DatasetsCallback


class Trainer(TorchTrainer):
    def _create_default_callbacks(self):
        callbacks = super()._create_default_callbacks()
        if self.datasets:
            return callbacks
        return [callback for callback in callbacks if not isinstance(callback, DatasetsCallback)]

"""The worker's side of the typed recipe, without Ray: the learning rate it gets, where Mixup is applied, and
that nothing a worker imports knows the spec's schema."""
import dataclasses
import subprocess
import sys

import pytest
import torch

from pipeline.spec.sections import TrainConfig
from pipeline.training.config import Mixing
from pipeline.training.learning_rate import LearningRate
from pipeline.training.mixing import Mixer
from pipeline.training.recipe import resolve_recipe


def test_the_worker_gets_the_lr_scaled_to_the_global_batch():
    recipe = resolve_recipe(TrainConfig(optimizer="momentum", lr=0.1, lr_base_size=256, batch_size=128), 4)
    model = torch.nn.Linear(4, 2)
    schedule = LearningRate(model, dataclasses.replace(recipe.optim, warmup_epochs=0), recipe.epochs, 10)
    assert recipe.optim.global_batch == 512 and schedule.optimizer.defaults["lr"] == pytest.approx(0.2)


def test_plateau_steps_per_epoch_on_validation_top1():
    recipe = resolve_recipe(TrainConfig(scheduler="plateau", warmup_epochs=0, epochs=40), 1)
    schedule = LearningRate(torch.nn.Linear(4, 2), recipe.optim, recipe.epochs, updates_per_epoch=5)
    start = schedule.lr
    for update in range(1, 50):
        schedule.after_update(update)  # a per-update step leaves a per-epoch schedule alone
    assert schedule.lr == start
    for epoch in range(1, 20):  # validation top-1 stops improving: the lr drops after timm's patience
        schedule.after_epoch(epoch, 50.0)
    assert schedule.lr < start


def test_mixup_mixes_the_inputs_and_the_targets():
    torch.manual_seed(0)
    inputs, labels = torch.rand(8, 1, 4, 4), torch.arange(8) % 4
    mixer = Mixer(Mixing(mixup=1.0, cutmix=0.0, prob=1.0, switch_prob=0.5), label_smoothing=0.0, num_classes=4)
    mixed, targets = mixer(inputs.clone(), labels)
    assert not torch.equal(mixed, inputs) and targets.shape == (8, 4)
    assert (targets > 0).sum(1).min() == 2  # each target is a blend of two labels
    plain = Mixer(None, label_smoothing=0.1, num_classes=4)
    assert plain(inputs, labels)[1] is labels and plain.criterion.label_smoothing == 0.1


def test_no_module_a_worker_imports_imports_the_spec():
    code = ("import sys, pipeline.training.loop, pipeline.clip.loop, pipeline.data.batches, pipeline.data.stream, "
            "pipeline.data.transforms, models._factory, pipeline.tracking.system_metrics; "
            "print([m for m in sys.modules if m.startswith('pipeline.spec')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

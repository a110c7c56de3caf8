"""Every small-image architecture trains for one step on 2 data-parallel Ray Train CPU workers.

One TorchTrainer run (one worker group) walks the zoo, as `experiments/fashion_mnist_zoo.yaml` lists
it (names and kwargs), at Fashion-MNIST's 28x28x1: a DDP step each on tiny random batches, through
`ray.train.torch.prepare_model` and the training loss of pipeline.training, as the pipeline trains them.
"""
import json
import math
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models.catalogue import small_image_models
from pipeline.spec.loading import load_spec

ROOT = Path(__file__).resolve().parents[1]
ZOO_SPEC = ROOT / "experiments" / "fashion_mnist_zoo.yaml"


def one_step_per_model(config):
    """Per worker: one DDP training step of each model; rank 0 returns every rank's results in a checkpoint."""
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    from models._factory import build_model
    from pipeline.training.evaluation import classification_loss
    from pipeline.training.harness import unwrap

    torch.set_num_threads(1)
    rank = ray.train.get_context().get_world_rank()
    results = {}
    for name, kwargs in config["entries"]:
        torch.manual_seed(0)
        model = build_model(name, 10, 1, **kwargs)
        model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={
            "find_unused_parameters": bool(getattr(model, "has_unused_parameters", False))})
        before = [p.detach().clone() for p in unwrap(model).parameters()]
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        generator = torch.Generator().manual_seed(rank)  # each worker its own shard
        images = torch.randn(2, 1, 28, 28, generator=generator)
        labels = torch.randint(0, 10, (2,), generator=generator)
        model.train()
        loss, _ = classification_loss(model, model(images), labels, torch.nn.CrossEntropyLoss())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        after = [p.detach() for p in unwrap(model).parameters()]
        results[name] = {"loss": loss.item(), "tensors": len(before),
                         "changed": sum(not torch.equal(b, a) for b, a in zip(before, after)),
                         "checksum": sum(a.double().sum().item() for a in after)}
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, results)
    checkpoint = None
    if rank == 0:
        directory = tempfile.mkdtemp()
        Path(directory, "results.json").write_text(json.dumps(gathered))
        checkpoint = ray.train.Checkpoint.from_directory(directory)
    ray.train.report({"models": len(results)}, checkpoint=checkpoint)


def test_zoo_spec_covers_every_small_image_model():
    spec = load_spec(ZOO_SPEC)
    assert sorted(entry.name for entry in spec.models) == sorted(small_image_models())
    # per-family recipes: not one setting for all
    assert len({spec.train_config(entry).lr for entry in spec.models}) >= 4
    assert {spec.train_config(entry).optimizer for entry in spec.models} == {"sgd", "adamw"}


def test_every_small_image_model_takes_a_ddp_step_on_two_workers(ray_cluster, tmp_path):
    from ray import cloudpickle
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import a test module
    entries = [(entry.name, entry.kwargs) for entry in load_spec(ZOO_SPEC).models]
    trainer = TorchTrainer(one_step_per_model, train_loop_config={"entries": entries},
                           scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
                           torch_config=TorchConfig(backend="gloo"),
                           run_config=RunConfig(name="zoo-step", storage_path=str(tmp_path / "ray")))
    result = trainer.fit()
    assert result.error is None
    with result.checkpoint.as_directory() as directory:
        ranks = json.loads(Path(directory, "results.json").read_text())
    assert len(ranks) == 2
    for name, _ in entries:
        first, second = ranks[0][name], ranks[1][name]
        for worker in (first, second):
            assert math.isfinite(worker["loss"]), name
            assert worker["changed"] > 0, f"{name}: no weight changed"
        # DDP averaged the gradients: both replicas hold the same weights after the step
        assert first["checksum"] == pytest.approx(second["checksum"], rel=1e-6, abs=1e-6), name


def test_googlenet_aux_losses_enter_training_with_weight_point_three():
    import timm

    from pipeline.training.evaluation import classification_loss

    torch.manual_seed(0)
    model = timm.create_model("googlenet_v1_cifar", num_classes=10, in_chans=1)
    images, labels = torch.randn(2, 1, 28, 28), torch.tensor([3, 7])
    outputs = model.train()(images)
    main, aux1, aux2 = outputs
    loss, logits = classification_loss(model, outputs, labels, torch.nn.CrossEntropyLoss())
    expected = F.cross_entropy(main, labels) + 0.3 * (F.cross_entropy(aux1, labels) + F.cross_entropy(aux2, labels))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert loss.item() > F.cross_entropy(main, labels).item()  # the auxiliary terms are in
    assert torch.equal(logits, main)
    with torch.no_grad():
        evaluated = model.eval()(images)
    assert isinstance(evaluated, torch.Tensor) and evaluated.shape == (2, 10)  # heads off in evaluation

"""Training throughput of every small-image architecture of the zoo, measured side by side.

One process, the same batch, optimizer and CPU threads for every model: a warm-up step, then
`steps` timed steps of forward, loss (auxiliary heads included), backward and update. Images are
random tensors of the Fashion-MNIST shape: the speed of a step does not depend on the pixels.
"""
from __future__ import annotations

import time

import torch
from rich.console import Console
from rich.table import Table

from pipeline.errors import PipelineError


def train_step_rate(name: str, batch_size: int, steps: int, image_size: int, in_chans: int,
                    num_classes: int = 10) -> float:
    """Images per second of `steps` training steps after one warm-up step."""
    from models._factory import build_model
    from pipeline.training.evaluation import classification_loss

    torch.manual_seed(0)
    model = build_model(name, num_classes, in_chans).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    criterion = torch.nn.CrossEntropyLoss()
    images = torch.randn(batch_size, in_chans, image_size, image_size)
    labels = torch.randint(0, num_classes, (batch_size,))

    def step():
        loss, _ = classification_loss(model, model(images), labels, criterion)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up: allocations, lazy initialisation
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return batch_size * steps / (time.perf_counter() - started)


def run_zoo_benchmark(names: list[str] | None, batch_size: int, steps: int, image_size: int, in_chans: int,
                      threads: int, console: Console) -> dict[str, float]:
    from models._factory import model_complexity
    from models.catalogue import family_of, small_image_models

    names = names or small_image_models()
    known = set(small_image_models())
    for name in names:
        if name not in known:
            raise PipelineError(f"'{name}' is not a small-image model of the zoo: `pipeline models` lists them")
    torch.set_num_threads(threads)
    console.print(f"training throughput, batch {batch_size} of {image_size}x{image_size}x{in_chans}, "
                  f"{steps} timed steps after a warm-up step, {threads} CPU thread(s), one process")
    table = Table(title="Training throughput of the zoo (small-image variants)")
    for column in ("model", "family", "params (M)", "MMACs/image", "images/s"):
        table.add_column(column, justify="left" if column in ("model", "family") else "right")
    rates = {}
    for name in names:
        cost = model_complexity(name, 10, in_chans, image_size)
        rates[name] = train_step_rate(name, batch_size, steps, image_size, in_chans)
        console.print(f"{name}: {rates[name]:,.1f} images/s")
        table.add_row(name, family_of(name), f"{cost['param_count']:.3f}", f"{cost['gmacs'] * 1e3:,.1f}",
                      f"{rates[name]:,.1f}")
    console.print(table)
    return rates

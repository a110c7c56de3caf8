"""`pipeline benchmark train`: the same training as a plain loop and through Ray Train, side by side."""
from __future__ import annotations

import os
import time

import torch
from rich.console import Console
from rich.table import Table


def plain_loop(model_name: str, splits, batch_size: int, epochs: int, threads: int, lr: float) -> list[float]:
    """Images/s of each epoch of a textbook PyTorch loop."""
    from timm.optim import create_optimizer_v2

    from models._factory import build_model
    from pipeline.data.augment import Augment
    from pipeline.data.batches import TensorBatches

    torch.set_num_threads(threads)
    data = splits.train
    model = build_model(model_name, data.num_classes, data.in_chans)
    optimizer = create_optimizer_v2(model, opt="adamw", lr=lr, weight_decay=0.05)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    augment = Augment(data.mean, data.std, data.hflip, 2, torch.device("cpu"))
    batches = TensorBatches(data, 0, 1, batch_size, torch.device("cpu"))
    rates = []
    model.train()
    for epoch in range(epochs):
        started, seen = time.perf_counter(), 0
        for images, labels in batches.epoch(epoch):
            loss = criterion(model(augment.train(images)), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(labels)
        rates.append(seen / (time.perf_counter() - started))
    return rates


def ray_train_path(spec, splits, console: Console) -> dict[str, float]:
    """The pipeline's own path (one Ray Train worker), with its fixed start-up costs."""
    from pipeline.engine.cluster import init_ray
    from pipeline.engine.context import RunContext
    from pipeline.training.harness import fit, read_state
    from pipeline.training.loop import train_loop_per_worker
    from pipeline.training.recipe import worker_config

    started = time.time()
    init_ray()
    ray_ready = time.time()
    entry = spec.models[0]
    config, _ = worker_config(RunContext(spec), entry, spec.train, spec.data, spec.resources.threads, entry.name)
    first_step = []
    fit_started = time.time()
    result = fit(train_loop_per_worker, config, spec.resources, os.path.abspath(spec.storage_path), f"benchmark-{int(started)}",
                 on_event=lambda event: first_step.append(event["time"]) if event["kind"] == "first_step" else None)
    if result.error:
        raise result.error
    history = read_state(result.checkpoint)["history"]
    return {"rates": [h["samples_per_sec"] for h in history], "ray_init_s": ray_ready - started,
            "first_step_s": (first_step[0] if first_step else fit_started) - fit_started}


def run_benchmark(model: str, data_name: str, batch_size: int, steps: int, epochs: int, threads: int,
                  console: Console) -> None:
    from pipeline.data import load_splits
    from pipeline.spec.loading import parse_spec

    spec = parse_spec({
        "name": "benchmark", "models": [model], "stages": ["train"],
        "data": {"name": data_name, "limit_train": batch_size * steps, "augment": True, "max_shift": 2},
        "train": {"epochs": epochs, "batch_size": batch_size, "lr": 1e-3, "warmup_epochs": 0},
        "resources": {"num_workers": 1, "cpus_per_worker": threads, "threads_per_worker": threads},
        "storage_path": ".pipeline/benchmark"})
    splits = load_splits(spec.data)
    console.print(f"{model}, {data_name}: {steps} steps of batch {batch_size} per epoch, {epochs} epochs, "
                  f"{threads} CPU thread(s); steady state = epochs after the first")
    plain = plain_loop(model, splits, batch_size, epochs, threads, 1e-3)
    ray_path = ray_train_path(spec, splits, console)
    steady_plain = sum(plain[1:]) / len(plain[1:])
    steady_ray = sum(ray_path["rates"][1:]) / len(ray_path["rates"][1:])
    table = Table(title="Training throughput, side by side")
    table.add_column("path")
    table.add_column("steady images/s", justify="right")
    table.add_column("per epoch", justify="left")
    table.add_row("plain PyTorch loop", f"{steady_plain:,.0f}", ", ".join(f"{r:,.0f}" for r in plain))
    table.add_row("pipeline (Ray Train, 1 worker)", f"{steady_ray:,.0f}",
                  ", ".join(f"{r:,.0f}" for r in ray_path["rates"]))
    console.print(table)
    console.print(f"ratio pipeline / plain: [bold]{steady_ray / steady_plain:.3f}[/] (target >= 0.95)")
    console.print(f"fixed start-up cost: Ray start {ray_path['ray_init_s']:.1f} s, "
                  f"workers up to first step {ray_path['first_step_s']:.1f} s")

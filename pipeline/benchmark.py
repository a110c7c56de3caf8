"""Overhead of the pipeline's Ray Train path against a plain single-process PyTorch loop.

Both train the same model on the same in-memory data, batch size and CPU threads, with the same
augmentation and optimizer; throughput is measured after a warm-up epoch, side by side in one run.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table


def plain_loop(model_name: str, splits, batch_size: int, epochs: int, threads: int, lr: float) -> list[float]:
    """Images/s of each epoch of a textbook PyTorch loop."""
    from timm.optim import create_optimizer_v2

    from pipeline.complexity import build_model
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
    from pipeline.cluster import init_ray
    from pipeline.context import RunContext
    from pipeline.stages.train import worker_config
    from pipeline.train import fit, read_state

    started = time.time()
    init_ray()
    ray_ready = time.time()
    entry = spec.models[0]
    config, _ = worker_config(RunContext(spec), entry, spec.train, spec.data, spec.resources.threads, entry.name)
    first_step = []
    fit_started = time.time()
    result = fit(config, spec.resources, os.path.abspath(spec.storage_path), f"benchmark-{int(started)}",
                 on_event=lambda event: first_step.append(event["time"]) if event["kind"] == "first_step" else None)
    if result.error:
        raise result.error
    history = read_state(result.checkpoint)["history"]
    return {"rates": [h["samples_per_sec"] for h in history], "ray_init_s": ray_ready - started,
            "first_step_s": (first_step[0] if first_step else fit_started) - fit_started}


def run_benchmark(model: str, data_name: str, batch_size: int, steps: int, epochs: int, threads: int,
                  console: Console) -> None:
    from pipeline.config import parse_spec
    from pipeline.data import load_splits

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


def run_tracking_benchmark(model: str, data_name: str, batch_size: int, steps: int, epochs: int, threads: int,
                           repeats: int, console: Console) -> dict[str, float]:
    """Training-step time of the pipeline's path with MLflow logging off, on, and on with system metrics
    (each node's CPU, memory and GPU use sampled on the workers), interleaved `repeats` times.

    Rank 0 sends its events through the relay; this process writes one `log_batch` request per epoch (and
    one per system-metrics report); this measures what that costs the steps: per mode, the median over
    repeats of each run's median steady-state step time, with the spread (min to max, standard deviation).
    """
    import dataclasses
    import statistics

    from pipeline.cluster import init_ray
    from pipeline.config import parse_spec
    from pipeline.context import RunContext
    from pipeline.relay import RunWriter
    from pipeline.stages.train import worker_config
    from pipeline.tracking import Tracker
    from pipeline.train import fit, read_state

    spec = parse_spec({
        "name": "benchmark", "models": [model], "stages": ["train"],
        "data": {"name": data_name, "limit_train": batch_size * steps, "val_fraction": 0.0},
        "train": {"epochs": epochs, "batch_size": batch_size, "lr": 1e-3, "warmup_epochs": 0},
        "resources": {"num_workers": 1, "cpus_per_worker": threads, "threads_per_worker": threads,
                      "max_failures": 0},
        "storage_path": ".pipeline/benchmark"})
    init_ray()
    config, _ = worker_config(RunContext(spec), spec.models[0], spec.train, spec.data, threads, model)
    tracker = Tracker(f"sqlite:///{os.path.abspath('.pipeline/benchmark/mlflow.db')}")
    os.makedirs(".pipeline/benchmark", exist_ok=True)
    experiment = tracker.experiment_id("benchmark-tracking")
    modes = ("off", "on", "system")
    console.print(f"{model}, {data_name}: {steps} steps of batch {batch_size} per epoch, {epochs} epochs, "
                  f"{threads} CPU thread(s), {repeats} x (tracking off, on, on + system metrics), order rotated")
    step_ms: dict[str, list[float]] = {mode: [] for mode in modes}
    for repeat in range(repeats):
        for mode in modes[repeat % 3:] + modes[:repeat % 3]:  # rotate to cancel order effects
            run_id = tracker.start_run(experiment, f"{model}-{mode}", tags={"stage": "benchmark"}) \
                if mode != "off" else None
            result = fit(dataclasses.replace(config, system_metrics=mode == "system"), spec.resources,
                         os.path.abspath(spec.storage_path), f"benchmark-tracking-{int(time.time())}-{repeat}-{mode}",
                         on_event=RunWriter(tracker, run_id) if run_id else None)
            if result.error:
                raise result.error
            if run_id:
                tracker.finish(run_id)
            history = read_state(result.checkpoint)["history"]
            rates = [h["samples_per_sec"] for h in history[1:]]  # the first epoch is warm-up
            step_ms[mode].append(1000 * batch_size / statistics.median(rates))
    medians = {mode: statistics.median(values) for mode, values in step_ms.items()}
    table = Table(title="Training-step time: MLflow tracking off, on, on + system metrics (steady-state epochs)")
    for column, justify in (("tracking", "left"), ("median ms/step", "right"), ("min-max", "right"),
                            ("stdev", "right"), ("per repeat", "left")):
        table.add_column(column, justify=justify)
    labels = {"off": "off", "on": "on (per-epoch log_batch)", "system": "on + system metrics"}
    for mode, values in step_ms.items():
        table.add_row(labels[mode], f"{medians[mode]:.2f}", f"{min(values):.2f}-{max(values):.2f}",
                      f"{statistics.stdev(values):.2f}" if len(values) > 1 else "-",
                      ", ".join(f"{v:.2f}" for v in values))
    console.print(table)
    ratio = medians["off"] / medians["on"]
    system_cost = medians["system"] / medians["on"] - 1
    noise = (max(step_ms["on"]) - min(step_ms["on"])) / medians["on"]
    console.print(f"ratio (step time off / on): [bold]{ratio:.3f}[/] (target >= 0.98)")
    console.print(f"system metrics: [bold]{100 * system_cost:+.1f}%[/] step time against tracking on; the spread "
                  f"of tracking on alone across repeats is {100 * noise:.1f}%"
                  + (" (the cost is within it)" if abs(system_cost) <= noise else ""))
    from pipeline.system_metrics import SAMPLE_EVERY_S, sample_cost_us

    costs = sample_cost_us()
    per_sample = statistics.median(costs)
    console.print(f"one sample of the node's monitors: {per_sample:.0f} us of CPU (median of {len(costs)} rounds, "
                  f"{min(costs):.0f}-{max(costs):.0f} us), {100 * per_sample / (SAMPLE_EVERY_S * 1e6):.4f}% of a core "
                  f"at one sample per {SAMPLE_EVERY_S:g} s")
    return {"off_ms": medians["off"], "on_ms": medians["on"], "system_ms": medians["system"], "ratio": ratio,
            "system_cost": system_cost, "noise": noise, "per_repeat": step_ms, "sample_us": per_sample}


def run_sweep_benchmark(model: str, samples: int, epochs: int, limit_train: int, console: Console) -> dict:
    """A fixed Fashion-MNIST search with ASHA and without early stopping, side by side: best validation
    error, compute (trial-epochs, wall time) and Tune + Train's per-trial start-up (trial start to first step)."""
    import statistics
    import tempfile

    from mlflow import MlflowClient

    from pipeline import workflow
    from pipeline.config import parse_spec

    folder = tempfile.mkdtemp(prefix="sweep-benchmark-")
    rows = {}
    for scheduler in ("none", "asha"):
        spec = parse_spec({
            "name": f"sweep-benchmark-{scheduler}", "models": [model], "stages": ["sweep"],
            "data": {"name": "fashion_mnist", "limit_train": limit_train, "val_fraction": 0.05},
            "train": {"epochs": epochs, "batch_size": 128, "warmup_epochs": 0},
            "sweep": {"space": {"lr": {"type": "loguniform", "low": 1e-4, "high": 0.1},
                                "weight_decay": {"type": "uniform", "low": 0.0, "high": 0.1}},
                      "num_samples": samples, "search": "random", "scheduler": scheduler, "metric": "val_top1",
                      "max_concurrent_trials": 2},
            "tracking": {"uri": f"sqlite:///{folder}/mlflow.db", "experiment": f"sweep-benchmark-{scheduler}"},
            "storage_path": f"{folder}/checkpoints"})
        started = time.time()
        context = workflow.run(spec, console)
        wall = time.time() - started
        outcome = context.outputs["sweep"][model]["outcome"]
        client = MlflowClient(spec.tracking.uri)
        trials = client.search_runs([context.experiment_id], "tags.stage = 'trial'")
        startup = [t.data.metrics["startup_s"] for t in trials if "startup_s" in t.data.metrics]
        rows[scheduler] = {"best_val_err": 100 - outcome.best_metrics["val_top1"], "trial_epochs": outcome.trial_epochs,
                           "wall_s": wall, "startup_s": statistics.median(startup) if startup else float("nan"),
                           "stopped": sum(t.data.tags.get("end") == "stopped_early" for t in trials)}
    table = Table(title=f"{model} on Fashion-MNIST ({limit_train} training images), {samples} random configs "
                        f"of lr and weight decay, {epochs} epochs max, 2 concurrent trials of 1 worker")
    for column in ("scheduler", "best val top-1 error %", "trial-epochs", "stopped early", "wall time s",
                   "median trial start to first step s"):
        table.add_column(column, justify="right")
    for name, row in rows.items():
        table.add_row("ASHA" if name == "asha" else "none (FIFO)", f"{row['best_val_err']:.2f}", str(row["trial_epochs"]),
                      str(row["stopped"]), f"{row['wall_s']:.0f}", f"{row['startup_s']:.1f}")
    console.print(table)
    return rows


WORKFLOW_MODELS = ["lenet5", "resnet20", "plain20", "se_resnet20", "squeezenet1_1_cifar", "squeezenet1_0_cifar"]


def _workflow_spec(name: str, folder: str, models: list, workers: int, bound: int | None, size: int,
                   epochs: int) -> dict:
    return {"name": name, "data": {"name": "synthetic", "synthetic_size": size, "val_fraction": 0.2},
            "models": models, "train": {"epochs": epochs, "batch_size": 64, "lr": 0.003, "warmup_epochs": 0},
            "resources": {"num_workers": workers, "cpus_per_worker": 1, "threads_per_worker": 1, "max_failures": 0},
            "max_concurrent_units": bound, "stages": ["train"],
            "tracking": {"uri": f"sqlite:///{folder}/mlflow.db", "experiment": name},
            "storage_path": f"{folder}/checkpoints"}


class ProcessMemory:
    """Peak count and resident memory of Ray Train's per-run helper actors, sampled from /proc."""

    NAMES = (b"PlacementGroupCleaner", b"TrainController")

    def __init__(self):
        import threading

        self.peak: dict[str, tuple[int, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self):
        from pathlib import Path

        while not self._stop.wait(0.5):
            found: dict[str, list[float]] = {}
            for proc in Path("/proc").iterdir():
                if not proc.name.isdigit():
                    continue
                try:
                    cmdline = (proc / "cmdline").read_bytes()
                    name = next((n.decode() for n in self.NAMES if n in cmdline), None)
                    if name:
                        rss = int((proc / "statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
                        found.setdefault(name, []).append(rss)
                except OSError:
                    continue
            for name, sizes in found.items():
                count, total = self.peak.get(name, (0, 0.0))
                self.peak[name] = (max(count, len(sizes)), max(total, sum(sizes)))


def _unit_times(uri: str, experiment: str) -> list[dict[str, float]]:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id], "tags.unit != '' and attributes.status = 'FINISHED'")
    return [{"start": r.info.start_time / 1000, "end": r.info.end_time / 1000, **r.data.metrics} for r in runs]


def run_workflow_benchmark(console: Console, size: int = 1200, epochs: int = 2, slots: int = 6,
                           tiny_units: int = 12, parts: str = "all") -> None:
    """The modes side by side (`parts` all or modes), then the simulated cluster (all or cluster)."""
    import tempfile

    folder = tempfile.mkdtemp(prefix="pipeline-benchmark-workflow-")
    if parts in ("all", "modes"):
        run_modes_benchmark(console, size, epochs, folder)
    if parts in ("all", "cluster"):
        run_slots_benchmark(console, slots, tiny_units, folder)


def run_modes_benchmark(console: Console, size: int, epochs: int, folder: str):
    """One 6-model spec run one unit at a time (2 workers each) and concurrently (1 worker each, as many
    at once as fit), its cached re-run, and the fixed cost per unit with its parts."""
    import io
    import statistics
    import subprocess
    import sys

    import ray
    import yaml

    from pipeline import workflow
    from pipeline.cluster import init_ray
    from pipeline.config import parse_spec
    from pipeline.relay import STARTUP_PARTS

    quiet = Console(file=io.StringIO())
    modes = {"one at a time, 2 workers each": _workflow_spec("bench-sequential", folder, WORKFLOW_MODELS, 2, 1,
                                                              size, epochs),
             "concurrent, 1 worker each": _workflow_spec("bench-concurrent", folder, WORKFLOW_MODELS, 1, None,
                                                         size, epochs)}
    console.print(f"{len(WORKFLOW_MODELS)} models ({', '.join(WORKFLOW_MODELS)}), synthetic {size} images, "
                  f"{epochs} epochs; local Ray with 2 CPUs; store in {folder}")
    init_ray(num_cpus=2)
    rows = {}
    with ProcessMemory() as memory:
        for mode, tree in modes.items():
            started = time.time()
            context = workflow.run(parse_spec(tree), quiet)
            if context.failures:
                raise RuntimeError(f"{mode}: units failed: {context.failures}")
            units = _unit_times(tree["tracking"]["uri"], tree["name"])
            rows[mode] = {"wall_s": time.time() - started, "units": units}
    ray.shutdown()
    spec_path = os.path.join(folder, "concurrent.yaml")
    with open(spec_path, "w") as handle:
        yaml.safe_dump(modes["concurrent, 1 worker each"], handle)
    started = time.time()
    cached = subprocess.run([sys.executable, "-m", "pipeline", "run", spec_path], capture_output=True, text=True,
                            cwd=folder)
    cached_s = time.time() - started
    if cached.returncode != 0 or "reused 6 cached unit(s)" not in cached.stdout:
        raise RuntimeError(f"the cached re-run did not reuse every unit: {cached.stdout[-2000:]}{cached.stderr[-2000:]}")

    table = Table(title="One spec, two ways (wall time of the whole workflow; per unit: Ray Train start to first step)")
    for column in ("mode", "wall s", "unit start-up s (median)", *(k.removeprefix("startup_").removesuffix("_s")
                                                                  for k, _, _ in STARTUP_PARTS)):
        table.add_column(column, justify="right")
    for mode, row in rows.items():
        medians = {key: statistics.median(u.get(key, float("nan")) for u in row["units"])
                   for key in ("startup_s", *(k for k, _, _ in STARTUP_PARTS))}
        table.add_row(mode, f"{row['wall_s']:.0f}", f"{medians['startup_s']:.1f}",
                      *(f"{medians[k]:.1f}" for k, _, _ in STARTUP_PARTS))
    console.print(table)
    sequential, concurrent = (rows[m]["wall_s"] for m in modes)
    console.print(f"concurrent / one at a time: [bold]{concurrent / sequential:.2f}[/] of the wall time; "
                  f"cached re-run of the same spec (the whole `pipeline run` command): [bold]{cached_s:.1f} s[/]")
    for name, (count, rss) in memory.peak.items():
        console.print(f"Ray Train's {name} actors: at most {count} at once, {rss:,.0f} MB resident together")
    return rows, cached_s


def run_slots_benchmark(console: Console, slots: int, tiny_units: int, folder: str) -> float:
    """Tiny units on a simulated cluster of two nodes that declare `slots` logical CPUs between them, run by
    `pipeline run` as a user runs it against a cluster (RAY_ADDRESS and the cluster's token)."""
    import subprocess
    import sys

    import yaml

    from pipeline.cluster import LocalCluster

    tiny = _workflow_spec("bench-slots", folder, [{"name": "lenet5", "train": {"seed": i}} for i in range(tiny_units)],
                          1, None, 200, 1)
    tiny["tracking"]["uri"] = f"sqlite:///{folder}/slots.db"
    spec_path = os.path.join(folder, "slots.yaml")
    with open(spec_path, "w") as handle:
        yaml.safe_dump(tiny, handle)
    with LocalCluster([{"num_cpus": slots // 2}, {"num_cpus": slots - slots // 2}]) as cluster:
        started = time.time()
        result = subprocess.run([sys.executable, "-m", "pipeline", "run", spec_path], capture_output=True, text=True,
                                cwd=folder, env={**cluster.env, "RAY_ADDRESS": cluster.gcs})
        wall = time.time() - started
    if result.returncode != 0:
        raise RuntimeError(f"simulated cluster: {result.stdout[-2000:]}{result.stderr[-2000:]}")
    units = _unit_times(tiny["tracking"]["uri"], tiny["name"])
    first, last = min(u["start"] for u in units), max(u["end"] for u in units)
    busy = sum(u["end"] - u["start"] for u in units) / (slots * (last - first))
    ideal = sum(u["end"] - u["start"] for u in units) / slots
    console.print(f"simulated cluster, {slots} slots on 2 nodes, {tiny_units} tiny units: slot-time kept busy "
                  f"[bold]{busy:.2f}[/] (goal >= 0.9) between the first unit's start and the last one's end; "
                  f"wall {last - first:.0f} s against the ideal {ideal:.0f} s (ratio {(last - first) / ideal:.2f}); "
                  f"the whole command {wall:.0f} s")
    return busy


# --- pipeline benchmark data ------------------------------------------------------------------------------

def _legacy_stream(source: str, split: str, image_size: int, batch_size: int):
    """The streaming path this product had before Ray Data, kept here only to measure it: `datasets` streams
    the parquet shards and the training process decodes each image with PIL and resizes it, one at a time."""
    import datasets
    import numpy as np

    files = sorted(str(p) for p in Path(source).glob(f"**/{split}-*.parquet"))
    dataset = datasets.load_dataset("parquet", data_files={split: files}, split=split, streaming=True)
    dataset = dataset.shuffle(seed=0, buffer_size=1000)
    for batch in dataset.iter(batch_size=batch_size):
        arrays = [np.asarray(image.convert("RGB").resize((image_size, image_size)), dtype=np.uint8)
                  for image in batch["image"]]
        yield torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2), torch.as_tensor(batch["label"])


class _PieceDataset(torch.utils.data.IterableDataset):
    """A plain DataLoader's view of the same shards: each loader worker reads whole pieces, decodes with the same
    decoder and applies the same timm transform (the usual webdataset-style loader)."""

    def __init__(self, split, transform: dict):
        self.split, self.transform = split, transform

    def __iter__(self):
        from pipeline.data.stream import decode_image, read_piece
        from pipeline.data.transforms import build_transform
        import numpy as np

        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        tf, pil = build_transform(self.transform)
        for piece in range(worker, len(self.split.pieces), workers):
            read = read_piece(self.split, piece, np.arange(self.split.counts[piece]))
            for blob, label, where in zip(read["bytes"], read["label"], read["where"]):
                yield tf(decode_image(blob, 3, where, self.split.image_column, pil=pil)), label


def _decode_rates(split, count: int = 200) -> dict[str, float]:
    """Decode-only images/s on one thread: PIL against libjpeg-turbo through torchvision.io.decode_jpeg, the
    same JPEGs, alternated three times (best of each)."""
    import io

    import numpy as np
    from PIL import Image

    from pipeline.data.stream import decode_image, read_piece

    blobs = []
    for piece in range(len(split.pieces)):
        blobs += read_piece(split, piece, np.arange(split.counts[piece]))["bytes"]
        if len(blobs) >= count:
            break
    decoders = {"PIL": lambda blob: np.asarray(Image.open(io.BytesIO(blob)).convert("RGB")),
                "decode_jpeg": lambda blob: decode_image(blob, 3, "", "image")}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    best = {name: 0.0 for name in decoders}
    for _ in range(3):
        for name, decode in decoders.items():
            started = time.perf_counter()
            for blob in blobs[:count]:
                decode(blob)
            best[name] = max(best[name], len(blobs[:count]) / (time.perf_counter() - started))
    torch.set_num_threads(threads)
    return best


def _rate(batches, warmup: int = 2) -> tuple[float, int]:
    """Images/s of an iterator of (images, labels) batches, timed after `warmup` batches."""
    seen, started = 0, None
    for index, (images, _) in enumerate(batches):
        if index == warmup:
            started, seen = time.perf_counter(), 0
        seen += len(images)
    return (seen / (time.perf_counter() - started) if started else 0.0), seen


def run_data_benchmark(console: Console, images: int = 3000, size: tuple[int, int] = (400, 350),
                       image_size: int = 224, batch_size: int = 64, cores: int | None = None,
                       folder: str | None = None, model_images: int = 640) -> dict[str, float]:
    """Images/s of the old streaming path, the Ray Data path and a plain DataLoader on the same cores and the
    same synthetic JPEG shards; then the share of a ResNet-18's step time spent waiting for data."""
    import tempfile

    from pipeline.cluster import init_ray
    from pipeline.data.batches import StreamedBatches
    from pipeline.data.stream import describe, write_jpeg_shards
    from pipeline.data.transforms import resolve_transforms

    cores = cores or os.cpu_count() or 1
    root = Path(folder or tempfile.mkdtemp(prefix="data-benchmark-"))
    if not list(root.glob("data/train-*.parquet")):
        console.print(f"writing {images} JPEGs of {size[0]}x{size[1]} px in parquet shards to {root} ...")
        write_jpeg_shards(root, "train", images, max(1, images // 500), size, 100)
        write_jpeg_shards(root, "validation", max(64, images // 10), 1, size, 100)
    split = describe(str(root), "train")
    transforms = resolve_transforms("resnet50", {"interpolation": "bilinear"}, image_size, 3,
                                    (0.5,) * 3, (0.25,) * 3)
    console.print(f"{split.num_rows} images in {len(split.pieces)} pieces; train transform RandomResizedCrop "
                  f"{image_size} + flip; {cores} core(s); batch {batch_size}")
    results = {}
    decode = _decode_rates(split)
    console.print(f"decode only, 1 thread: PIL {decode['PIL']:,.0f} images/s, torchvision.io.decode_jpeg "
                  f"(libjpeg-turbo) {decode['decode_jpeg']:,.0f} images/s")
    results.update({f"decode_{k}": v for k, v in decode.items()})
    # The old path decodes in the consumer's own thread; it gets the cores as torch threads.
    torch.set_num_threads(cores)
    results["old"], _ = _rate(_legacy_stream(str(root), "train", image_size, batch_size))
    loader = torch.utils.data.DataLoader(_PieceDataset(split, transforms["train"]), batch_size=batch_size,
                                         num_workers=cores, persistent_workers=True, prefetch_factor=4)
    _rate(loader)  # first pass: worker start-up
    results["dataloader"], _ = _rate(loader)
    del loader
    init_ray(num_cpus=cores)
    stream = StreamedBatches(split, None, transforms, 0, 1, batch_size, torch.device("cpu"), prefetch_batches=4)
    _rate(stream.epoch(0))  # first epoch: Ray Data's worker processes start and import torch
    results["ray_data"], _ = _rate(stream.epoch(1))
    table = Table(title=f"Streaming {size[0]}x{size[1]} JPEGs to {image_size} px batches on {cores} core(s)")
    for column in ("path", "images/s", "images/s per core", "vs DataLoader"):
        table.add_column(column, justify="left" if column == "path" else "right")
    for name, key in (("before: datasets stream + PIL in the training thread", "old"),
                      (f"torch DataLoader, {cores} workers, same decode + transforms", "dataloader"),
                      ("Ray Data path (this product)", "ray_data")):
        table.add_row(name, f"{results[key]:,.0f}", f"{results[key] / cores:,.0f}",
                      f"{results[key] / results['dataloader']:.2f}")
    console.print(table)
    results["data_wait_frac"] = _data_wait(root, model_images, cores)
    console.print(f"ResNet-18 at 112 px, 1 Ray Train worker (1 CPU) fed by the Ray Data path on the other "
                  f"{cores - 1} core(s): [bold]{100 * results['data_wait_frac']:.1f}%[/] of step time waiting for "
                  "data (goal < 5% when decoding outpaces the model)")
    return results


def _data_wait(root: Path, images: int, cores: int) -> float:
    """data_wait_frac of the product's training loop (second epoch) for a ResNet-18 at 112 px on one CPU worker."""
    import tempfile

    from pipeline.config import parse_spec
    from pipeline.context import RunContext
    from pipeline.stages.train import worker_config
    from pipeline.train import fit, read_state

    spec = parse_spec({
        "name": "data-wait", "models": ["resnet18"], "stages": ["train"],
        "data": {"name": "huggingface", "path": str(root), "test_split": "validation", "streaming": True,
                 "image_size": 112, "val_fraction": 0.0},
        "train": {"epochs": 2, "batch_size": 32, "optimizer": "momentum", "lr": 0.1, "warmup_epochs": 0},
        "resources": {"num_workers": 1, "cpus_per_worker": 1, "max_failures": 0}})
    entry = spec.models[0]
    config, _ = worker_config(RunContext(spec), entry, spec.train, spec.data, 1, entry.name)
    train = config.stream["train"]
    keep = []  # the first pieces, about `images` images: the model, not the data, bounds the run's length
    for piece in train.pieces:
        if sum(p[-1] - p[-2] for p in keep) >= images:
            break
        keep.append(piece)
    config.stream["train"] = type(train)(train.name, train.kind, tuple(keep), train.image_column, train.label_column,
                                         train.classes)
    config.evaluate_test = False
    result = fit(config, spec.resources, tempfile.mkdtemp(prefix="data-wait-"), f"data-wait-{int(time.time())}")
    if result.error:
        raise result.error
    return read_state(result.checkpoint)["history"][-1]["data_wait_frac"]

"""`pipeline benchmark startup`: a whole short run, `pipeline run` against a plain PyTorch script of the same
work, each timed as a process from its start to its printed test accuracy, alternated over repeats; the
pipeline twice, with a Ray cluster of its own and joining the local cluster kept between commands.

The plain script (written here, not part of the product) trains the same model on the same in-memory
tensors with the same recipe (optimizer, learning rate, schedule, label smoothing, augmentation, batch) in one
process with as many CPU threads as the pipeline's workers have together, with no DataLoader. The
pipeline's fixed cost is split into its parts from what the run recorded: imports, preflight and Ray's start
(process start to the workflow run), the unit's set-up (to its Train run), Ray Train's start to the first
step (`startup_s`), training (`train_time_s`), and the rest (test evaluation, model, records, shutdown).
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

PLAIN_SCRIPT = '''
import sys, time
started = time.time()
import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from models._factory import build_model
from pipeline.data import load_splits
from pipeline.data.augment import Augment
from pipeline.spec.loading import load_spec

spec = load_spec(sys.argv[1])
train = spec.train
torch.manual_seed(train.seed)
torch.set_num_threads(spec.resources.num_workers * spec.resources.threads)
splits = load_splits(spec.data)
data = splits.train
model = build_model(spec.models[0].name, data.num_classes, data.in_chans)
optimizer = create_optimizer_v2(model, opt=train.optimizer, lr=train.lr, weight_decay=train.weight_decay,
                                momentum=train.momentum)
batch = train.batch_size * spec.resources.num_workers
steps = -(-len(data) // batch)
scheduler, _ = create_scheduler_v2(optimizer, sched=train.scheduler, num_epochs=train.epochs,
                                   warmup_epochs=train.warmup_epochs, min_lr=train.min_lr,
                                   updates_per_epoch=steps, step_on_epochs=False)
criterion = torch.nn.CrossEntropyLoss(label_smoothing=train.label_smoothing)
augment = Augment(data.mean, data.std, data.hflip, spec.data.max_shift if spec.data.augment else 0,
                  torch.device("cpu"))
images, labels = data.images, data.labels
for epoch in range(train.epochs):
    model.train()
    order = torch.randperm(len(labels))
    for step in range(steps):
        index = order[step * batch:(step + 1) * batch]
        loss = criterion(model(augment.train(images[index])), labels[index].long())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step_update(epoch * steps + step + 1)
model.eval()
correct = 0
with torch.no_grad():
    for chunk in range(0, len(splits.test), 512):
        x = splits.test.images[chunk:chunk + 512]
        correct += (model(augment.eval(x)).argmax(1) == splits.test.labels[chunk:chunk + 512]).sum().item()
print(f"test top-1 {100 * correct / len(splits.test):.2f}% after {time.time() - started:.1f} s")
'''


def short_spec(model: str, epochs: int, limit_train: int, workers: int, folder: Path, threads: int = 1) -> dict:
    return {"name": "startup-benchmark", "data": {"name": "fashion_mnist", "limit_train": limit_train,
                                                   "val_fraction": 0.0},
            "models": [model], "train": {"epochs": epochs, "batch_size": 64, "optimizer": "sgd", "lr": 0.05,
                                          "weight_decay": 5e-4, "warmup_epochs": 0, "label_smoothing": 0.0},
            "resources": {"num_workers": workers, "cpus_per_worker": threads, "threads_per_worker": threads,
                          "max_failures": 0},
            "tracking": {"uri": f"sqlite:///{folder / 'mlflow.db'}", "experiment": "startup-benchmark",
                         "system_metrics": False},
            "storage_path": str(folder / "checkpoints"), "stages": ["train"]}


def machine_busy_s() -> float | None:
    """CPU-seconds this machine has spent busy since boot, all processes and cores together (Linux's /proc/stat);
    None elsewhere. Ray's worker processes are not a command's children, so the command's own rusage misses them."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except OSError:
        return None
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # less idle and iowait


def timed(command: list[str], cwd: Path, env: dict | None = None) -> tuple[float, float, str, float | None]:
    """(start, wall seconds, output, machine CPU-seconds busy meanwhile) of a process, from its start to its exit."""
    busy = machine_busy_s()
    started = time.time()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env)
    wall = time.time() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {(done.stderr or done.stdout).strip()[-500:]}")
    return started, wall, done.stdout, None if busy is None else machine_busy_s() - busy


def pipeline_parts(uri: str, started: float, ended: float) -> dict[str, float]:
    """The parts of the latest workflow run of the benchmark's experiment, from its records."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("startup-benchmark").experiment_id
    [workflow] = client.search_runs([experiment], "tags.stage = 'workflow'", max_results=1,
                                    order_by=["attributes.start_time DESC"])
    [unit] = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{workflow.info.run_id}'")
    metrics = unit.data.metrics
    before = workflow.info.start_time / 1000 - started
    setup = unit.info.start_time / 1000 - workflow.info.start_time / 1000
    train = metrics.get("train_time_s", 0.0)
    to_first_step = metrics.get("startup_s", 0.0)
    return {"imports, preflight, Ray start": before, "unit set-up": setup, "Train start to first step": to_first_step,
            "training": train, "after the last step": ended - started - before - setup - to_first_step - train}


def run_startup_benchmark(console: Console, model: str = "resnet18", epochs: int = 2, limit_train: int = 10000,
                          workers: int = 2, repeats: int = 3, threads: int = 1) -> dict[str, float]:
    project = Path(__file__).resolve().parents[2]
    folder = Path(tempfile.mkdtemp(prefix="startup-benchmark-"))
    spec_path = folder / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(short_spec(model, epochs, limit_train, workers, folder, threads)))
    script = folder / "plain.py"
    script.write_text(PLAIN_SCRIPT)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    console.print(f"{model}, {epochs} epochs on {limit_train:,} Fashion-MNIST images, {workers} worker(s) x {threads} "
                  f"thread(s) against one process with {workers * threads} threads; {repeats} alternated repeats")
    # Two ways to run the pipeline: a cluster of its own per command (no kept cluster), and joining the local
    # cluster kept between commands (pipeline/engine/warm_cluster.py), started before the first repeat.
    modes = {"pipeline run, a cluster of its own": {**os.environ, "PIPELINE_CLUSTER_IDLE_MINUTES": "0"},
             "pipeline run, kept cluster up": {**os.environ, "PIPELINE_CLUSTER_DIR": str(folder / "kept"),
                                               "PIPELINE_CLUSTER_IDLE_MINUTES": "30"}}
    kept = modes["pipeline run, kept cluster up"]
    timed([sys.executable, "-m", "pipeline", "cluster", "start", "--cpus", str(workers * threads)], project, kept)
    plain, walls, parts = [], {mode: [] for mode in modes}, {mode: [] for mode in modes}
    busy = {mode: [] for mode in ("plain", *modes)}  # the machine's CPU-seconds while each process ran
    try:
        for _ in range(repeats):
            _, wall, out, cpu = timed([sys.executable, str(script), str(spec_path)], project)
            plain.append(wall)
            busy["plain"].append(cpu)
            for mode, env in modes.items():
                start, wall, _, cpu = timed([sys.executable, "-m", "pipeline", "run", str(spec_path), "--rerun", "all"],
                                       project, env)
                walls[mode].append(wall)
                busy[mode].append(cpu)
                parts[mode].append(pipeline_parts(uri, start, start + wall))
    finally:
        timed([sys.executable, "-m", "pipeline", "cluster", "stop"], project, kept)
    table = Table(title="Whole process, start to printed test accuracy (parts: medians of repeats)")
    table.add_column("")
    for column in ("plain PyTorch script", *modes):
        table.add_column(column)
    spread = lambda values: " / ".join(f"{f(values):.1f}" for f in (min, statistics.median, max))  # noqa: E731
    table.add_row("wall s (min / median / max)", spread(plain), *(spread(walls[mode]) for mode in modes))
    for key in parts[next(iter(modes))][0]:
        table.add_row(f"  {key}", "", *(f"{statistics.median(p[key] for p in parts[mode]):.1f}" for mode in modes))
    if None not in busy["plain"]:  # how much of the wall time the cores were busy, all processes together
        cores = os.cpu_count() or 1
        table.add_row(f"machine CPU-s busy (share of {cores} cores)",
                      *(f"{statistics.median(b):.1f} ({statistics.median(b) / statistics.median(w) / cores:.0%})"
                        for b, w in zip(busy.values(), (plain, *walls.values()))))
    console.print(table)
    result = {"plain_s": statistics.median(plain)}
    for label, mode in zip(("cold", "kept"), modes):
        ratio = statistics.median(walls[mode]) / statistics.median(plain)
        fixed = statistics.median(p["imports, preflight, Ray start"] + p["unit set-up"] + p["Train start to first step"]
                                  + p["after the last step"] for p in parts[mode])
        console.print(f"{mode}: wall ratio pipeline / plain {ratio:.2f}x, fixed cost {fixed:.1f} s")
        result.update({f"{label}_ratio": ratio, f"{label}_fixed_s": fixed, f"{label}_s": statistics.median(walls[mode])})
    console.print(f"plain script's last line: {out.strip().splitlines()[-1]}")
    return result

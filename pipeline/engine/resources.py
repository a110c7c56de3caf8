"""What units ask of the cluster and whether it fits."""
from __future__ import annotations

import os

from pipeline.engine.units import Unit
from pipeline.errors import PipelineError


def demand(unit: Unit) -> dict[str, float]:
    """The CPUs and GPUs a unit's workers hold while it runs."""
    if unit.resources is None:
        return {}
    r, n = unit.resources, unit.resources.num_workers * unit.parallel
    return {"CPU": n * r.cpus_per_worker, **({"GPU": n * r.gpus_per_worker} if r.gpus_per_worker else {})}


def cluster_shape() -> tuple[list[dict[str, float]], dict[str, float]]:
    """The alive nodes' resources and the cluster's total."""
    import ray

    return [n["Resources"] for n in ray.nodes() if n.get("Alive")], ray.cluster_resources()


def misfit(unit: Unit, nodes: list[dict[str, float]], total: dict[str, float]) -> str | None:
    """Why a unit's workers cannot run on the cluster as it is (one worker on some node, all of them in the
    cluster's total), or None."""
    if unit.resources is None:
        return None
    r = unit.resources
    worker = {"CPU": r.cpus_per_worker, **({"GPU": r.gpus_per_worker} if r.gpus_per_worker else {})}
    need = {k: v * r.num_workers for k, v in worker.items()}  # one Train run (one trial of a sweep)
    if not any(all(node.get(k, 0) >= v for k, v in worker.items()) for node in nodes):
        largest = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0))) if nodes else {}
        return (f"one worker asks for {_describe(worker)} but the largest node has "
                f"{_describe({k: largest.get(k, 0) for k in worker})}")
    if any(total.get(k, 0) < v for k, v in need.items()):
        return (f"{r.num_workers} workers ask for {_describe(need)} but the cluster has "
                f"{_describe({k: total.get(k, 0) for k in need})}")
    return None


MISFIT_FIX = ("lower resources.num_workers / cpus_per_worker / gpus_per_worker for it "
              "(--set 'models.NAME.resources.num_workers=1'), or add nodes")


def check_fits(units: list[Unit], console) -> dict[str, float]:
    """Every unit's workers fit the cluster, or a one-line error before anything runs; returns the cluster's
    total resources. On a cluster this driver joined (RAY_ADDRESS), which an autoscaler may grow, a unit that
    does not fit is a warning, and it waits at most `resources.max_wait_s` for the nodes it needs."""
    nodes, total = cluster_shape()
    joined = bool(os.environ.get("RAY_ADDRESS"))
    for unit in units:
        if (problem := misfit(unit, nodes, total)) is None:
            continue
        if not joined:
            raise PipelineError(f"unit {unit.name}: {problem}: {MISFIT_FIX}")
        console.print(f"[yellow]warning:[/] unit {unit.name}: {problem}; it waits up to "
                      f"{unit.resources.max_wait_s:g} s for the cluster to grow")
    return total


def _describe(resources: dict[str, float]) -> str:
    return " + ".join(f"{v:g} {k}" for k, v in resources.items())

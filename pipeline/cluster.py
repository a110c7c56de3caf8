"""Connecting to Ray: a local cluster by default, or the cluster a Ray Job runs in."""
from __future__ import annotations

import logging
import os


def init_ray(verbose: bool = False, num_cpus: int | None = None) -> None:
    """Start (or join, inside a Ray Job: $RAY_ADDRESS) a Ray cluster; Ray's logs stay hidden unless verbose."""
    import ray

    if ray.is_initialized():
        return
    if not verbose:
        os.environ.setdefault("RAY_TRAIN_LOG_LEVEL", "WARNING")
        for name in ("ray", "ray.train", "ray.tune", "ray.data"):
            logging.getLogger(name).setLevel(logging.WARNING)
    local = not os.environ.get("RAY_ADDRESS")
    # The dashboard serves Ray's state API, which Ray Train's placement-group cleaner needs: without it a
    # Train run whose controller is killed (a sweep trial stopped by ASHA) keeps its CPUs until Ray exits.
    ray.init(num_cpus=num_cpus if local else None, include_dashboard=True if local else None,
             log_to_driver=verbose, logging_level=logging.INFO if verbose else logging.ERROR,
             configure_logging=True)

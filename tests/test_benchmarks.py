"""The startup benchmark's parts that need no run: its spec per layout, and the machine's busy CPU time."""
import os
import sys
import time

import pytest

from pipeline.benchmarks.startup import machine_busy_s, short_spec
from pipeline.spec.loading import parse_spec


def test_the_short_spec_gives_each_worker_its_threads_and_cpus(tmp_path):
    spec = parse_spec(short_spec("resnet18", 2, 10000, 1, tmp_path, threads=2))
    assert (spec.resources.num_workers, spec.resources.cpus_per_worker, spec.resources.threads) == (1, 2, 2)
    spec = parse_spec(short_spec("lenet5", 1, 2000, 2, tmp_path))
    assert (spec.resources.num_workers, spec.resources.cpus_per_worker, spec.resources.threads) == (2, 1, 1)
    assert spec.data.limit_train == 2000 and spec.train.epochs == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/stat is Linux's")
def test_the_machines_busy_time_counts_a_busy_loop():
    before, started = machine_busy_s(), time.process_time()
    deadline = time.time() + 0.5
    while time.time() < deadline:
        pass
    spun = time.process_time() - started
    # At least most of this process's own CPU time (other processes only add to it); no more than all the cores.
    assert spun * 0.8 <= machine_busy_s() - before <= 0.6 * (os.cpu_count() or 1) + 0.1

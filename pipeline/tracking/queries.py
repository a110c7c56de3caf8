"""Run lookups by tag and the closing of runs left RUNNING by a driver or trial that is gone."""
from __future__ import annotations


def find_runs(client, experiment_id: str, tags: dict[str, str], status: str | None = None, oldest_first: bool = False,
              max_results: int = 1000) -> list:
    """The experiment's runs carrying every tag of `tags` (and `status`), newest first unless `oldest_first`."""
    where = [f"tags.`{key}` = '{value}'" for key, value in tags.items()]
    if status:
        where.append(f"attributes.status = '{status}'")
    return client.search_runs([experiment_id], " and ".join(where), max_results=max_results,
                              order_by=[f"attributes.start_time {'ASC' if oldest_first else 'DESC'}"])


def kill_runs(client, runs: list) -> int:
    """Mark runs KILLED, tagged `end=killed` (their driver or trial process is gone); how many."""
    for run in runs:
        client.set_tag(run.info.run_id, "end", "killed")
        client.set_terminated(run.info.run_id, "KILLED")
    return len(runs)

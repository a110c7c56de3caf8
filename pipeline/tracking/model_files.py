"""A network's LoggedModel files, downloaded (ensembles, and fine-tuning from a logged model); apart from
`logged_models.py` so that reading a model needs none of the logging's imports."""
from __future__ import annotations

from pathlib import Path


def download_model_files(tracker, model_id: str, folder: Path) -> tuple[Path, Path]:
    """(weights, model.json) of a network's LoggedModel, downloaded into `folder`."""
    import mlflow.artifacts

    from pipeline.errors import PipelineError

    model = tracker.client.get_logged_model(model_id)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in ("model.pt", "model.json"):
        try:
            paths.append(Path(mlflow.artifacts.download_artifacts(
                artifact_uri=f"{model.artifact_location.rstrip('/')}/artifacts/{name}", dst_path=str(folder),
                tracking_uri=tracker.uri)))
        except Exception:
            raise PipelineError(f"model {model_id} has no {name}: give a model of a network trained by this "
                                "version") from None
    return paths[0], paths[1]

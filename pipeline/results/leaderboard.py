"""ILSVRC-style leaderboard from MLflow: each model's run chosen by validation error, ranked by test top-1 error.

The ranking reports; it selects nothing. What picks runs (ensemble members, the registered champion) reads
their validation error through `by_validation`, never the test figures shown here."""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from pipeline.errors import PipelineError

# timm's results-file columns first, then ours.
COLUMNS = ["model", "top1", "top1_err", "top5", "top5_err", "param_count", "gmacs", "train_samples_per_sec",
           "family", "year", "accelerator", "epochs", "seed", "wall_time_s", "run_id"]


FORMATS = ("table", "markdown", "csv")


# Runs that compete on the leaderboard (sweep trials do not: their best config is retrained).
LEADERBOARD_STAGES = ("train", "retrain", "zero_shot", "linear_probe", "ensemble")


METRICS = ("top1", "top1_err", "top5", "top5_err", "param_count", "gmacs", "train_samples_per_sec")


# Validation metrics of a run (the train stage's), and of a retrained sweep winner (its sweep's best trial's).
VALIDATION = ("val_top1_err", "best_val_top1_err", "best_epoch", "val_loss", "sweep_val_top1_err")


SELECTION_KINDS = ("train", "retrain")  # runs of one network, which selection chooses among


FOOTNOTE = ("Ranked by test top-1 error, for reporting only: nothing is selected on it. Each model's row, "
            "ensemble members and the registered champion are chosen by validation error (val_top1_err; a retrained "
            "sweep winner by its sweep's best, sweep_val_top1_err).")
LOCAL_UI = "http://127.0.0.1:5000"  # where `pipeline ui` serves a local store


def ui_url(tracking_uri: str) -> str:
    """Where the MLflow UI of a tracking store is: the server itself (no credentials in the link), or
    `pipeline ui` for a local store."""
    from pipeline.tracking.store import split_userinfo

    if not tracking_uri.startswith(("http://", "https://")):
        return LOCAL_UI
    return split_userinfo(tracking_uri)[0].rstrip("/")


@dataclass
class Leaderboard:
    experiment: str
    rows: list[dict]
    notes: list[str]
    experiment_id: str = ""
    ui_url: str = LOCAL_UI
    references: list[dict] = field(default_factory=list)  # published results shown beside ours
    runs: list[dict] = field(default_factory=list)  # every leaderboard run, not only each model's best

    @property
    def columns(self) -> list[str]:
        """COLUMNS, plus `kind` when not every row is a plain training run, `diverged` when a run did,
        `sweep` when a row has one and `init` when a row did not start from scratch."""
        columns = list(COLUMNS)
        if any(r.get("val_top1_err") is not None for r in self.rows):
            columns.insert(columns.index("top5_err") + 1, "val_top1_err")
        if any(r.get("diverged") for r in self.rows):
            columns.insert(1, "diverged")
        if self.references or any(r["kind"] != "train" for r in self.rows):
            columns.insert(1, "kind")
        if any(r.get("runs", 1) > 1 for r in self.rows):  # a recipe over several seeds: its spread and count
            columns[columns.index("top1_err") + 1:columns.index("top1_err") + 1] = ["top1_err_std", "runs"]
        if any(r.get("sweep_run_id") for r in self.rows):
            columns.append("sweep")
        if any(r.get("init", "scratch") != "scratch" for r in self.rows):  # where fine-tuned weights came from
            columns.insert(1, "init")
        if any(r.get("wise_ft") for r in self.rows):  # test top-1 of (1-a) zero-shot + a fine-tuned, per a
            columns.append("wise_ft")
        for column in ("per_class", "classes", "entry"):  # entries of one model on other data, each its own row
            if any(r.get(column) is not None for r in self.rows):
                columns.insert(1, column)
        return columns

    def run_url(self, run_id: str) -> str:
        return f"{self.ui_url}/#/experiments/{self.experiment_id}/runs/{run_id}"


def _number(text: str | None, kind=float):
    try:
        return kind(text) if text not in (None, "") else None
    except ValueError:
        return None


def _row(run) -> dict:
    metrics, tags, params = run.data.metrics, run.data.tags, run.data.params
    end = run.info.end_time or run.info.start_time
    return {
        "model": tags["model"],
        "kind": tags.get("stage", "train"),
        "diverged": metrics.get("diverged", 0) >= 1,  # logged by training when the loss is NaN or infinite
        **{key: metrics.get(key) for key in METRICS},
        **{key: metrics.get(key) for key in VALIDATION},
        "family": tags.get("family", ""),
        "year": _number(tags.get("paper_year"), int),
        "accelerator": tags.get("accelerator", ""),
        "epochs": int(metrics["epochs"]) if "epochs" in metrics else None,
        "seed": _number(params.get("seed"), int),
        "wall_time_s": (end - run.info.start_time) / 1000,
        "run_id": run.info.run_id,
        "sweep_run_id": tags.get("sweep_run_id"),
        "members": tags.get("members", ""),
        "dataset": tags.get("dataset", ""),
        "recipe": tags.get("recipe"),
        "init": tags.get("init", "scratch"),  # scratch, the hub tag, the weights file or the source model
        "augment": {"True": True, "False": False}.get(params.get("data.augment")),  # the budget of our run
        "limit_train": _number(params.get("data.limit_train"), int),
        "entry": tags.get("entry") or None,  # a model entry's own id
        "classes": params.get("data.classes") if params.get("data.classes") not in (None, "None") else None,
        "per_class": _number(params.get("data.per_class"), int),  # training images per class
        "freeze": params.get("freeze"),
        "wise_ft": _wise_ft(metrics),
        "_start": run.info.start_time,
    }


def _wise_ft(metrics: dict[str, float]) -> str | None:
    """`0.00:71.20 0.50:84.10 1.00:83.50`: a run's WiSE-FT test top-1 per mixing weight a, where it has them."""
    mixed = sorted((float(key[len("wise_ft_top1_a"):]), value) for key, value in metrics.items()
                   if key.startswith("wise_ft_top1_a"))
    return " ".join(f"{a:.2f}:{value:.2f}" for a, value in mixed) or None


AVERAGED = ("top1", "top1_err", "top5", "top5_err", "val_top1_err")


def seed_groups(rows: list[dict]) -> list[list[dict]]:
    """The runs one row stands for: a training run's recipe over its seeds (tag `recipe`; a seed run again
    counts once, its most recent run), any other run on its own."""
    groups: dict[tuple, dict[object, dict]] = {}
    for row in sorted(rows, key=lambda r: r["_start"]):
        key = (row["model"], row["kind"], row["recipe"]) if row.get("recipe") else (row["run_id"],)
        groups.setdefault(key, {})[row["seed"] if row.get("recipe") else row["run_id"]] = row
    return [list(group.values()) for group in groups.values()]


def averaged(group: list[dict]) -> dict:
    """One row for a recipe's runs: the mean of each figure with the spread of the test error (sample standard
    deviation) and the number of runs; its run is the most recent. A single run stays as it is."""
    row = dict(max(group, key=lambda r: r["_start"]))
    if len(group) == 1:
        return row
    for key in AVERAGED:
        values = [r[key] for r in group if r.get(key) is not None]
        row[key] = statistics.fmean(values) if len(values) == len(group) else None
    row["top1_err_std"] = statistics.stdev(r["top1_err"] for r in group)
    if all(r.get("top5_err") is not None for r in group):
        row["top5_err_std"] = statistics.stdev(r["top5_err"] for r in group)
    row.update(runs=len(group), seed=",".join(str(r["seed"]) for r in sorted(group, key=lambda r: r["seed"] or 0)),
               diverged=any(r.get("diverged") for r in group))
    return row


def row_identity(row: dict) -> tuple:
    """What makes two runs two leaderboard rows rather than two candidates for one: the model, where its weights
    started, an entry's own id, and the data it learned from (a subset of the classes, labels per class)."""
    return (row["model"], row.get("init", "scratch"), row.get("entry"), row.get("classes"), row.get("per_class"))


def row_label(row: dict) -> str:
    """How a row is named where one word must do (an ensemble member, a note): its entry's id, else its model."""
    return row.get("entry") or row["model"]


def best_per_model(rows: list[dict]) -> list[dict]:
    """Each model's row: its recipe with the lowest validation error (`selection_error`, averaged over the
    recipe's seeds; ties: validation loss, then the earlier run), never chosen by test error; a model without
    validated runs shows its most recent recipe. A recipe trained with several seeds shows the mean and
    standard deviation over them and their number, never its best seed. A diverged row comes after every
    sound one. The rows are then ranked by test error, for reporting."""
    def choice(r):
        validated = selection_error(r) is not None
        return (r.get("diverged", False), not validated, selection_error(r) or 0.0, r.get("val_loss") or 0.0,
                r["_start"] if validated else -r["_start"])

    best: dict[str, dict] = {}
    for row in sorted((averaged(group) for group in seed_groups(rows)), key=choice):
        best.setdefault(row_identity(row), row)  # fine-tuned and from scratch: two rows
    return sorted(best.values(), key=lambda r: (r.get("diverged", False), r["top1_err"], r["top5_err"], r["_start"],
                                                r["model"]))


def unvalidated_notes(best: list[dict], rows: list[dict]) -> list[str]:
    """A note for each shown row not chosen by validation (no validation metric: `data.val_fraction: 0`)."""
    notes = []
    for row in best:
        runs = sum(r["model"] == row["model"] for r in rows)
        if row["diverged"] or selection_error(row) is not None or (row["kind"] not in SELECTION_KINDS and runs == 1):
            continue
        shown = f"the most recent of its {runs} runs is shown" if runs > 1 else "its only run is shown"
        notes.append(f"{row['model']} (run {row['run_id']}) has no validation metric (trained with data.val_fraction"
                     f" 0): not chosen by validation ({shown}), and never an ensemble member or the champion; "
                     "set data.val_fraction > 0 to select by validation")
    return notes


def selection_error(row: dict) -> float | None:
    """The validation top-1 error a run is selected by: its last epoch's (the weights it keeps), or for a
    retrained sweep winner, which trains without a validation split, its sweep's best trial's."""
    return row.get("val_top1_err") if row.get("val_top1_err") is not None else row.get("sweep_val_top1_err")


def by_validation(board: "Leaderboard", kinds=SELECTION_KINDS) -> tuple[list[dict], list[str]]:
    """Each leaderboard row's run with the lowest validation error (a row: `row_identity`, so a fine-tuned
    entry and one from scratch of the same model are two candidates), ranked by it (ties: validation loss, then
    the earlier run); test metrics play no part. Notes on the rows passed over (diverged, or no validation
    metric)."""
    eligible, notes, passed = [], [], {}
    for row in board.runs or board.rows:
        if row["kind"] not in kinds:
            continue
        if row.get("diverged"):
            passed.setdefault(row_identity(row), f"{row_label(row)} (run {row['run_id']}) diverged: passed over")
        elif selection_error(row) is None:
            passed.setdefault(row_identity(row), f"{row_label(row)} (run {row['run_id']}) has no validation metric "
                                                 "(trained without a validation split): passed over")
        else:
            eligible.append(row)
    ranked = sorted(eligible, key=lambda r: (selection_error(r), r.get("val_loss") or 0.0, r["_start"]))
    best: dict[tuple, dict] = {}
    for row in ranked:
        best.setdefault(row_identity(row), row)
    notes = [note for identity, note in passed.items() if identity not in best]
    return list(best.values()), notes


def ilsvrc_references() -> list[dict]:
    """The lecture's ILSVRC winners (top-5 test error of the winning entry), from the published figures
    (models/references.yaml, table `ilsvrc-winners`)."""
    from models.catalogue import FAMILIES, family_of
    from pipeline.spec.reference import catalogue

    years = {f.name: f.year for f in FAMILIES}
    rows = [(family_of(row.model), row.number) for row in catalogue()["ilsvrc-winners"]]
    return [{"model": f"{family} (ILSVRC entry)", "kind": "reference", "family": family, "year": years.get(family),
             "top5_err": error, "top5": 100 - error} for family, error in sorted(rows, key=lambda r: years.get(r[0], 0))]


def _filter(family: str | None, tags: dict[str, str]) -> str:
    def quoted(value: str) -> str:
        return "'" + value.replace("'", "\\'") + "'"

    clauses = [f"tags.family = {quoted(family)}"] if family else []
    clauses += [f"tags.`{key}` = {quoted(value)}" for key, value in tags.items()]
    return " and ".join(clauses)


def parse_tag_filters(items: list[str] | None) -> dict[str, str]:
    """`--tag key=value` options as a dict; a malformed one is a one-line error."""
    tags = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise PipelineError(f"tag filter '{item}' is not KEY=VALUE: write e.g. --tag dataset=fashion_mnist")
        tags[key.strip()] = value.strip()
    return tags


def build(tracking_uri: str, experiment: str, family: str | None = None,
          tags: dict[str, str] | None = None, references: bool | None = None) -> Leaderboard:
    """The experiment's leaderboard; `references` adds the ILSVRC winners (default: for ImageNet)."""
    from mlflow import MlflowClient

    from pipeline.tracking.store import redact, sqlite_path

    db = sqlite_path(tracking_uri)
    if db is not None and not db.exists():
        raise PipelineError(f"no tracking store at {db}: run an experiment first (pipeline run experiments/quickstart.yaml)"
                            " or set --tracking-uri / MLFLOW_TRACKING_URI")
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = ", ".join(e.name for e in client.search_experiments() if e.name != "Default") or "none yet"
        raise PipelineError(f"no experiment '{experiment}' in {redact(tracking_uri)} (experiments: {names}): "
                            f"pass --experiment NAME")
    runs = client.search_runs([found.experiment_id], _filter(family, tags or {}), max_results=50000)
    rows, notes = [], []
    for run in runs:
        if "model" not in run.data.tags or run.data.tags.get("stage") not in LEADERBOARD_STAGES:
            continue
        if "top1_err" not in run.data.metrics or "top5_err" not in run.data.metrics:
            notes.append(f"run {run.info.run_id} ({run.data.tags['model']}, {run.info.status.lower()}) "
                         f"has no test metrics: left out")
            continue
        rows.append(_row(run))
    if not rows and not notes:
        if family or tags:
            wanted = ", ".join([f"family={family}"] * bool(family) + [f"{k}={v}" for k, v in (tags or {}).items()])
            raise PipelineError(f"experiment '{experiment}' has no leaderboard runs with {wanted}: "
                                "check the filter (tags are shown in the MLflow UI)")
        raise PipelineError(f"experiment '{experiment}' has no training runs yet: run a spec that trains on it")
    if references is None:
        references = "imagenet" in experiment.lower() or any(r["dataset"].startswith("imagenet") for r in rows)
    best = best_per_model(rows)
    notes += unvalidated_notes(best, rows)
    notes += [f"{r['model']} (run {r['run_id']}) diverged (its loss became NaN or infinite): its errors are no "
              "result and it is never an ensemble member or the champion; lower train.lr or set train.grad_clip"
              for r in best if r["diverged"]]
    return Leaderboard(experiment, best, notes, found.experiment_id, ui_url(tracking_uri),
                       ilsvrc_references() if references else [], rows)

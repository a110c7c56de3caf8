"""The tags the workflow writes on its MLflow runs, as names."""
from __future__ import annotations

UNIT_TAG = "unit"
KEY_TAG = "unit_key"
CODE_TAG = "code_version"  # the digest of the code the unit's result depends on
TRAIN_NAME_TAG = "ray_train_name"  # the Ray Train run (checkpoint folder) the unit resumes from
LEASE_OWNER_TAG = "lease_owner"  # driver id: host/pid/uuid
LEASE_EXPIRES_TAG = "lease_expires"  # unix seconds; the holder renews it while it runs the unit
RECIPE_TAG = "recipe"  # a training run's model and recipe without its seed: the runs one leaderboard row averages
ENTRY_TAG = "entry"  # a model entry's own id: its leaderboard row, apart from other entries of the model

"""The tags the workflow writes on its MLflow runs, as names."""
from __future__ import annotations

# MLflow tags of a unit's run.
UNIT_TAG = "unit"


KEY_TAG = "unit_key"


CODE_TAG = "code_version"


TRAIN_NAME_TAG = "ray_train_name"  # the Ray Train run (checkpoint folder) the unit resumes from


LEASE_OWNER_TAG = "lease_owner"  # driver id: host/pid/uuid


LEASE_EXPIRES_TAG = "lease_expires"  # unix seconds; the holder renews it while it runs the unit

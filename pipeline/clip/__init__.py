"""CLIP: contrastive image-text pretraining on Ray Train and the evaluations built on it."""

# The code a CLIP unit's result depends on (its key hashes it with its stage's module): the models, the
# loop and the evaluations, the shared harness, the caption and image data path.
CLIP_CODE = ("models/clip.py", "pipeline/clip", "pipeline/training/harness.py", "pipeline/training/relay.py",
             "pipeline/scoring.py", "pipeline/data")

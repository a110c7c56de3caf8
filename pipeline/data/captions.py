"""Image-text pairs for contrastive pretraining.

Two sources: captions generated from class labels (templates filled with a class name or one of its
descriptions), or an image-caption data set read through `datasets` (a hub id or a local folder).
Either way the result is `CaptionPairs`: uint8 images, the distinct caption strings, and for each
image the group of captions it may be paired with (its class, or its own captions).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from pipeline.data.tensors import ImageTensors
from pipeline.errors import PipelineError

# Training and evaluation templates are disjoint: zero-shot accuracy is measured on wordings
# the text tower never saw.
TRAIN_TEMPLATES = [
    "a photo of a {}.", "a photo of the {}.", "a picture of a {}.", "an image of a {}.",
    "a grayscale photo of a {}.", "a black and white photo of a {}.", "a low resolution photo of a {}.",
    "a small photo of a {}.", "a blurry photo of a {}.", "a centered photo of a {}.",
    "a product photo of a {}.", "a catalogue image of a {}.", "a shop picture of a {}.",
    "this is a {}.", "here is a {}.", "it is a {}.", "a {}.", "{}", "the {}.",
    "a {} on a dark background.", "a picture showing a {}.", "an item of type {}.",
    "a thumbnail of a {}.", "a close-up photo of a {}.", "a pixelated image of a {}.",
    "a {} for sale.", "my new {}.", "someone's {}.", "a clean {}.", "a used {}.",
]
EVAL_TEMPLATES = [
    "a rendering of a {}.", "a tiny image of the {}.", "a fashion photo showing one {}.",
    "an example of a {}.", "a snapshot of a {}.", "a good photo of a {}.", "an online listing of a {}.",
]

# Class descriptions: other names a caption may use for a class, so that the text tower learns
# the class from varied wordings, not from one fixed string.
FASHION_MNIST_DESCRIPTIONS: dict[str, list[str]] = {
    "T-shirt/top": ["T-shirt", "t-shirt", "top", "tee", "short-sleeved top"],
    "Trouser": ["trouser", "trousers", "pair of trousers", "pants", "pair of jeans"],
    "Pullover": ["pullover", "sweater", "jumper", "long-sleeved knit pullover"],
    "Dress": ["dress", "gown", "one-piece dress", "summer dress"],
    "Coat": ["coat", "jacket", "winter coat", "buttoned coat"],
    "Sandal": ["sandal", "sandals", "open summer shoe", "strappy sandal"],
    "Shirt": ["shirt", "button-up shirt", "collared shirt", "blouse"],
    "Sneaker": ["sneaker", "sneakers", "trainer", "running shoe", "sports shoe"],
    "Bag": ["bag", "handbag", "purse", "shoulder bag", "tote bag"],
    "Ankle boot": ["ankle boot", "boot", "ankle boots", "short boot", "heeled boot"],
}
BUILTIN_DESCRIPTIONS = {"fashion_mnist": FASHION_MNIST_DESCRIPTIONS}


def check_templates(templates: list[str]) -> list[str]:
    """Every template must hold one `{}` where the class name goes (a ValueError says which does not)."""
    if not templates:
        raise ValueError("give at least one template such as 'a photo of a {}.'")
    for template in templates:
        if template.count("{}") != 1:
            raise ValueError(f"template {template!r} needs exactly one '{{}}' placeholder for the "
                             f"class name, e.g. 'a photo of a {{}}.'")
    return templates


@dataclass
class CaptionPairs:
    """Images paired with captions; image i may take any caption of its group."""

    images: torch.Tensor  # uint8 (N, C, H, W)
    groups: torch.Tensor  # int64 (N,): class id, or the image's own index for a caption data set
    captions: list[str]  # distinct caption strings
    group_captions: torch.Tensor  # int64 (G, M): caption indices of each group, padded with -1
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hflip: bool = False

    def __len__(self) -> int:
        return len(self.groups)

    @property
    def group_sizes(self) -> torch.Tensor:
        return (self.group_captions >= 0).sum(1)

    def sample_captions(self, groups: torch.Tensor, generator: torch.Generator | None = None,
                        per_group: int | None = None) -> torch.Tensor:
        """One caption index per item of `groups`, drawn uniformly from its group.

        With `per_group`, each group draws only that many captions and its items share them: a batch
        of many images of few classes then needs few distinct texts (the text tower's cost).
        """
        if per_group:
            slots = groups * per_group + (torch.rand(len(groups), generator=generator) * per_group).long()
            slots, inverse = slots.unique(return_inverse=True)
            return self.sample_captions(slots // per_group, generator)[inverse]
        sizes = self.group_sizes[groups]
        pick = (torch.rand(len(groups), generator=generator) * sizes).long()
        return self.group_captions[groups, pick]

    def subset(self, index: torch.Tensor) -> "CaptionPairs":
        return replace(self, images=self.images[index], groups=self.groups[index])

    def with_images(self, images: torch.Tensor, groups: torch.Tensor) -> "CaptionPairs":
        """Other images (a held-out split) paired with the same captions through their groups."""
        return replace(self, images=images, groups=groups)

    def as_tensors(self) -> ImageTensors:
        """The images with their group as label: batches and shards come from the classification code."""
        return ImageTensors(self.images, self.groups, [str(g) for g in range(len(self.group_captions))],
                            self.mean, self.std, self.hflip)


def _pad_groups(groups: list[list[int]]) -> torch.Tensor:
    width = max(len(g) for g in groups)
    return torch.tensor([g + [-1] * (width - len(g)) for g in groups], dtype=torch.long)


def class_captions(classes: list[str], templates: list[str], descriptions: dict[str, list[str]]) -> list[list[str]]:
    """For each class, every template filled with the class name and each of its descriptions."""
    try:
        check_templates(templates)
    except ValueError as exc:
        raise PipelineError(f"training templates: {exc}") from None
    per_class = []
    for name in classes:
        words = list(dict.fromkeys([name, *descriptions.get(name, [])]))
        per_class.append([template.format(word) for word in words for template in templates])
    return per_class


def pairs_from_labels(data: ImageTensors, templates: list[str], descriptions: dict[str, list[str]]) -> CaptionPairs:
    """A classification set as image-text pairs: image i pairs with any caption of its class."""
    captions, groups = [], []
    for texts in class_captions(data.classes, templates, descriptions):
        groups.append(list(range(len(captions), len(captions) + len(texts))))
        captions.extend(texts)
    return CaptionPairs(data.images, data.labels, captions, _pad_groups(groups), data.mean, data.std, data.hflip)


def open_caption_set(source: str, split: str, image_column: str, text_column: str):
    """The `datasets` split of an image-caption set, its image and text columns checked (before any run
    starts: a wrong column is a one-line error, not a failed stage)."""
    import datasets

    from pipeline.data.huggingface import open_dataset

    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # a one-off local read: the stage prints its own progress
    try:
        dataset = open_dataset(source, split)
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()
    for role, column in (("image", image_column), ("text", text_column)):
        if column not in dataset.features:
            raise PipelineError(f"caption data set '{source}' has no {role} column '{column}' (columns: "
                                f"{', '.join(dataset.features)}): set clip.captions.{role}_column")
    return dataset


def pairs_from_dataset(source: str, split: str, image_column: str, text_column: str, in_chans: int,
                       image_size: int, limit: int | None = None) -> CaptionPairs:
    """A `datasets` image-caption set: a text column of strings (or lists of strings, several per image)."""
    from pipeline.data.huggingface import decode_images

    dataset = open_caption_set(source, split, image_column, text_column)
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    captions, groups = [], []
    for texts in dataset[text_column]:
        texts = [texts] if isinstance(texts, str) else list(texts or [])
        texts = [t.strip() for t in texts if isinstance(t, str) and t.strip()]
        if not texts:
            raise PipelineError(f"caption data set '{source}': a record of column '{text_column}' has no caption "
                                f"text: clean the data or choose another text column")
        groups.append(list(range(len(captions), len(captions) + len(texts))))
        captions.extend(texts)
    images = decode_images(dataset[image_column], in_chans, image_size)
    return CaptionPairs(images, torch.arange(len(images)), captions, _pad_groups(groups),
                        (0.5,) * in_chans, (0.25,) * in_chans, hflip=False)


def heldout_pairs(pairs: CaptionPairs, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A fixed set of (image index, caption index, group) for retrieval metrics: the first `count`
    images of a held-out set, each with one caption drawn with a fixed seed."""
    index = torch.arange(min(count, len(pairs)))
    groups = pairs.groups[index]
    captions = pairs.sample_captions(groups, torch.Generator().manual_seed(seed))
    return index, captions, groups

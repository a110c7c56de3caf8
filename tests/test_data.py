import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.data import load_splits
from pipeline.data.augment import Augment, normalize, random_hflip, random_translate
from pipeline.data.batches import TensorBatches
from pipeline.data.fashion_mnist import DEBIAN_DIR, FILES, load_fashion_mnist
from pipeline.data.huggingface import load_image_tensors
from pipeline.data.idx import read_idx
from pipeline.data.synthetic import make_synthetic
from pipeline.errors import PipelineError
from pipeline.spec.sections import DataConfig

HAVE_FASHION_MNIST = (DEBIAN_DIR / "train-images-idx3-ubyte.gz").exists()


def write_idx(path: Path, array: np.ndarray, magic_type: int = 0x08) -> str:
    header = bytes([0, 0, magic_type, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw))
    return hashlib.sha256(raw).hexdigest()


def test_idx_reader_checks_magic_dimensions_and_checksum(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    digest = write_idx(tmp_path / "ok.gz", array)
    assert torch.equal(read_idx(tmp_path / "ok.gz", (2, 3, 4), digest, "fix"), torch.from_numpy(array))
    with pytest.raises(PipelineError, match="checksum"):
        read_idx(tmp_path / "ok.gz", (2, 3, 4), "0" * 64, "fix")
    with pytest.raises(PipelineError, match=r"dimensions \(2, 3, 4\)"):
        read_idx(tmp_path / "ok.gz", (2, 3, 5), None, "fix")
    write_idx(tmp_path / "float.gz", array, magic_type=0x0D)
    with pytest.raises(PipelineError, match="magic"):
        read_idx(tmp_path / "float.gz", (2, 3, 4), None, "fix")
    (tmp_path / "plain").write_bytes(b"not gzip")
    with pytest.raises(PipelineError, match="not a valid gzip"):
        read_idx(tmp_path / "plain", (2, 3, 4), None, "fix")


def test_missing_fashion_mnist_names_the_file_and_the_fix(tmp_path):
    with pytest.raises(PipelineError) as error:
        load_fashion_mnist("train", str(tmp_path))
    message = str(error.value)
    assert FILES["train"][0][0] in message and "apt-get install dataset-fashion-mnist" in message


def test_recompressed_file_with_the_same_content_is_accepted(tmp_path):
    if not HAVE_FASHION_MNIST:
        pytest.skip("Fashion-MNIST is not installed")
    for (name, _, _), in zip(FILES["test"]):
        raw = gzip.decompress((DEBIAN_DIR / name).read_bytes())
        (tmp_path / name).write_bytes(gzip.compress(raw, compresslevel=1))
    test = load_fashion_mnist("test", str(tmp_path))
    assert test.images.shape == (10000, 1, 28, 28) and test.labels.bincount().tolist() == [1000] * 10


@pytest.mark.skipif(not HAVE_FASHION_MNIST, reason="Fashion-MNIST is not installed")
def test_fashion_mnist_splits():
    splits = load_splits(DataConfig(name="fashion_mnist", val_fraction=0.1, seed=3))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (54000, 6000, 10000)
    assert splits.train.images.dtype == torch.uint8 and splits.classes[9] == "Ankle boot"
    again = load_splits(DataConfig(name="fashion_mnist", val_fraction=0.1, seed=3))
    assert torch.equal(splits.val.labels, again.val.labels)  # seeded


def test_validation_split_is_disjoint_and_seeded():
    data = make_synthetic(100)
    data.images[:, 0, 0, 0] = torch.arange(100, dtype=torch.uint8)  # tag each image with its index
    train, val = data.split(0.2, seed=1)
    ids_train, ids_val = set(train.images[:, 0, 0, 0].tolist()), set(val.images[:, 0, 0, 0].tolist())
    assert len(ids_val) == 20 and len(ids_train) == 80 and not ids_train & ids_val
    assert data.split(0.2, seed=1)[1].images[:, 0, 0, 0].tolist() == val.images[:, 0, 0, 0].tolist()
    assert data.split(0.2, seed=2)[1].images[:, 0, 0, 0].tolist() != val.images[:, 0, 0, 0].tolist()


def test_worker_shards_cover_the_data_once():
    data = make_synthetic(101)
    data.images[:, 0, 0, 0] = torch.arange(101, dtype=torch.uint8)
    shards = [data.shard(rank, 3) for rank in range(3)]
    seen = sorted(v for s in shards for v in s.images[:, 0, 0, 0].tolist())
    assert seen == list(range(101))


def test_tensor_batches_give_every_worker_the_same_number_of_steps():
    data = make_synthetic(1001)
    sources = [TensorBatches(data, rank, 2, 64, torch.device("cpu"), seed=0) for rank in range(2)]
    steps = [len(list(s.epoch(0))) for s in sources]
    assert steps[0] == steps[1] == 1001 // 2 // 64
    first = [torch.cat([x for x, _ in s.epoch(0)]) for s in sources]
    assert not torch.equal(first[0][:64], first[1][:64])  # different shards
    assert not torch.equal(next(sources[0].epoch(0))[1], next(sources[0].epoch(1))[1])  # reshuffled per epoch
    assert sum(len(y) for s in sources for _, y in s.in_order(100)) == 1001


def test_translate_moves_content_and_flip_mirrors():
    image = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    image[0, 0, 3, 3] = 255
    shifted = torch.stack([random_translate(image, 2)[0] for _ in range(50)])
    positions = {tuple(int(i) for i in (s[0] == 255).nonzero()[0]) for s in shifted if (s == 255).any()}
    assert len(positions) > 3 and all(abs(r - 3) <= 2 and abs(c - 3) <= 2 for r, c in positions)
    assert shifted.dtype == torch.uint8 and shifted.shape == (50, 1, 8, 8)
    batch = torch.arange(64, dtype=torch.uint8).view(1, 1, 8, 8).repeat(64, 1, 1, 1)
    flipped = random_hflip(batch)
    mirrored = (flipped == batch.flip(-1)).flatten(1).all(1)
    unchanged = (flipped == batch).flatten(1).all(1)
    assert (mirrored | unchanged).all() and 10 < mirrored.sum() < 54


def test_normalize_and_augment_produce_standardized_floats():
    data = make_synthetic(256)
    out = normalize(data.images, torch.tensor(data.mean), torch.tensor(data.std))
    assert out.dtype == torch.float32 and out.shape == data.images.shape
    manual = (data.images.float() / 255 - 0.5) / 0.25
    assert torch.allclose(out, manual)
    augment = Augment(data.mean, data.std, hflip=True, max_shift=2, device=torch.device("cpu"))
    assert augment.train(data.images).shape == data.images.shape


def _write_imagefolder(root: Path, split: str, per_class: int = 4) -> None:
    for label, color in (("cat", 40), ("dog", 200)):
        folder = root / split / label
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((12, 12, 3), color + i, dtype=np.uint8)).save(folder / f"{i}.png")


def test_huggingface_imagefolder_becomes_cached_tensors(tmp_path, monkeypatch):
    import pipeline.data.huggingface as hf

    monkeypatch.setattr(hf, "CACHE_DIR", tmp_path / "cache")
    _write_imagefolder(tmp_path / "pets", "train")
    data = load_image_tensors(str(tmp_path / "pets"), "train", "image", "label", 3, 16, (0.5,) * 3, (0.25,) * 3, True)
    assert data.images.shape == (8, 3, 16, 16) and data.classes == ["cat", "dog"]
    assert sorted(data.labels.tolist()) == [0] * 4 + [1] * 4
    cats = data.images[data.labels == 0]
    assert (cats.float().mean() < 60) and (data.images[data.labels == 1].float().mean() > 190)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1
    again = load_image_tensors(str(tmp_path / "pets"), "train", "image", "label", 3, 16, (0.5,) * 3, (0.25,) * 3, True)
    assert torch.equal(again.images, data.images)
    with pytest.raises(PipelineError, match="no label column 'category'"):
        load_image_tensors(str(tmp_path / "pets"), "train", "image", "category", 3, 16, (0.5,), (0.25,), True)
    with pytest.raises(PipelineError, match="no 'test' split"):
        load_image_tensors(str(tmp_path / "pets"), "test", "image", "label", 3, 16, (0.5,), (0.25,), True)


def _write_parquet_shards(root: Path, split: str, shards: int, rows_per_shard: int) -> None:
    import datasets

    root.mkdir(parents=True, exist_ok=True)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])})
    for shard in range(shards):
        rows = [shard * rows_per_shard + i for i in range(rows_per_shard)]
        images = [Image.fromarray(np.full((8, 8), r % 256, dtype=np.uint8)) for r in rows]
        part = datasets.Dataset.from_dict({"image": images, "label": [r % 3 for r in rows]}, features=features)
        part.to_parquet(str(root / f"{split}-{shard:05d}-of-{shards:05d}.parquet"))


def test_named_huggingface_data_set_from_local_parquet(tmp_path, monkeypatch):
    import pipeline.data.huggingface as hf

    monkeypatch.setattr(hf, "CACHE_DIR", tmp_path / "cache")
    _write_parquet_shards(tmp_path / "set", "train", 2, 30)
    _write_parquet_shards(tmp_path / "set", "test", 1, 12)
    splits = load_splits(DataConfig(name="huggingface", path=str(tmp_path / "set"), in_chans=1, image_size=8,
                                    val_fraction=0.2))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (48, 12, 12)
    assert splits.classes == ["a", "b", "c"]

"""Image-task loaders on tiny local fixtures in each layout, the digits task and the split protocol."""

from __future__ import annotations

import gzip
import pickle
import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from rmpeft.errors import RmpeftError
from rmpeft.vision.classes import CLASS_SPECS
from rmpeft.vision.data import load_image_splits
from rmpeft.vision.layouts import detect_layout


def _task(name: str, **kw) -> OmegaConf:
    return OmegaConf.create({"name": name, "layout": "auto", "data_dir": None, "num_val": 2, "full_train": True,
                             "num_test": None, **kw})


def _pixel(img: Image.Image) -> tuple:
    return img.convert("RGB").getpixel((0, 0))


def _rgb(value: int, size: int = 32) -> np.ndarray:
    return np.full((size, size, 3), value, dtype=np.uint8)


def test_imagefolder_layout(tmp_path):
    for split, count in (("train", 4), ("test", 2)):
        for label, name in enumerate(["airplane", "automobile"]):  # sorted folder order = label
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(_rgb(100 * label + i)).save(folder / f"{i}.png")
    assert detect_layout(tmp_path) == "imagefolder"
    splits = load_image_splits(_task("cifar10", data_dir=str(tmp_path)), data_seed=0)
    assert {k: len(v) for k, v in splits.items()} == {"train": 6, "validation": 2, "test": 4}
    for ex in list(splits["train"]) + list(splits["test"]):
        assert _pixel(ex.image)[0] // 100 == ex.label
    assert sorted(splits["test"].labels) == [0, 0, 1, 1]


def test_cifar10_files(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    def write(name: str, labels: list[int]) -> None:
        data = np.stack([np.concatenate([np.full(1024, 10 * y + c, np.uint8) for c in range(3)]) for y in labels])
        with open(root / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels}, f)
    for i in range(1, 6):
        write(f"data_batch_{i}", [i % 10, (i + 1) % 10])
    write("test_batch", [7, 8, 9])
    cfg = _task("cifar10", data_dir=str(tmp_path))
    assert detect_layout(tmp_path) == "cifar10"
    splits = load_image_splits(cfg, data_seed=1)
    assert len(splits["train"]) == 8 and len(splits["test"]) == 3
    ex = splits["test"][2]
    assert ex.label == 9 and ex.image.size == (32, 32) and _pixel(ex.image) == (90, 91, 92)  # HWC, channel order kept


def test_mnist_idx_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    def write(name: str, array: np.ndarray) -> None:
        header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
        with gzip.open(raw / f"{name}.gz", "wb") as f:
            f.write(header + array.astype(np.uint8).tobytes())
    labels = np.arange(6) % 10
    write("train-images-idx3-ubyte", np.stack([np.full((28, 28), 20 * y) for y in labels]))
    write("train-labels-idx1-ubyte", labels)
    write("t10k-images-idx3-ubyte", np.stack([np.full((28, 28), 20 * y) for y in [3, 4]]))
    write("t10k-labels-idx1-ubyte", np.array([3, 4]))
    splits = load_image_splits(_task("mnist", data_dir=str(tmp_path)), data_seed=0)
    assert len(splits["train"]) == 4 and splits["test"].labels == [3, 4]
    assert all(ex.image.size == (28, 28) and ex.image.getpixel((0, 0)) == 20 * ex.label for ex in splits["train"])


def test_svhn_mat_files(tmp_path):
    from scipy.io import savemat

    def write(name: str, labels: list[int]) -> None:
        x = np.stack([_rgb(10 * (y % 10)) for y in labels], axis=-1)  # [32, 32, 3, N]
        savemat(tmp_path / name, {"X": x, "y": np.array(labels).reshape(-1, 1)})
    write("train_32x32.mat", [10, 1, 2, 3, 4])  # 10 is the digit 0
    write("test_32x32.mat", [10, 5])
    splits = load_image_splits(_task("svhn", data_dir=str(tmp_path)), data_seed=0)
    assert sorted(splits["test"].labels) == [0, 5]
    assert sorted(splits["train"].labels + splits["validation"].labels) == [0, 1, 2, 3, 4]
    assert all(_pixel(ex.image)[0] == 10 * ex.label for ex in splits["train"])


def test_hub_layout_reads_a_local_dataset(tmp_path):
    import datasets

    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)})
    for split, labels in (("train", [0, 1, 2, 3, 4]), ("test", [5, 6])):
        ds = datasets.Dataset.from_dict({"img": [Image.fromarray(_rgb(y)) for y in labels], "label": labels},
                                        features=features)
        ds.to_parquet(str(tmp_path / f"{split}.parquet"))
    cfg = _task("cifar10", source={"path": str(tmp_path), "name": None, "revision": None, "train_split": "train",
                                   "test_split": "test", "image_column": "img", "label_column": "label"})
    splits = load_image_splits(cfg, data_seed=0)
    assert sorted(splits["test"].labels) == [5, 6]
    assert all(_pixel(ex.image)[0] == ex.label for ex in splits["train"])
    cfg.source.image_column = "image"
    with pytest.raises(RmpeftError, match="image"):
        load_image_splits(cfg, data_seed=0)


def test_digits_split_is_deterministic_and_disjoint():
    cfg = _task("digits", layout="digits", num_val=200)
    a, b = load_image_splits(cfg, 0), load_image_splits(cfg, 0)
    assert {k: len(v) for k, v in a.items()} == {"train": 1097, "validation": 200, "test": 500}
    assert a["train"].indices == b["train"].indices
    assert set(a["train"].indices).isdisjoint(a["validation"].indices)
    other = load_image_splits(cfg, 1)
    assert other["test"].indices == a["test"].indices  # the test images never depend on the data seed
    assert other["validation"].indices != a["validation"].indices
    ex = a["test"][0]
    assert ex.image.size == (32, 32) and 0 <= ex.label < 10
    assert len(set(a["test"].labels)) == 10


def test_bad_inputs_raise_one_line_errors(tmp_path):
    with pytest.raises(RmpeftError, match="task.layout"):
        load_image_splits(_task("digits", layout="zip"), 0)
    with pytest.raises(RmpeftError, match="cannot tell its layout"):
        load_image_splits(_task("mnist", data_dir=str(tmp_path)), 0)
    with pytest.raises(RmpeftError, match="image task"):
        load_image_splits(_task("imagenet", layout="digits"), 0)
    for split in ("train", "test"):
        (tmp_path / split / "c").mkdir(parents=True)
        for i in range(3):
            Image.fromarray(_rgb(i)).save(tmp_path / split / "c" / f"{i}.png")
    assert len(CLASS_SPECS["mnist"].classnames) == 10
    with pytest.raises(RmpeftError, match="num_val"):
        load_image_splits(_task("mnist", data_dir=str(tmp_path), num_val=3), 0)
    for split in ("train", "test"):
        for k in range(11):  # an 11th class folder: label 10 has no class name in mnist
            (tmp_path / split / f"k{k:02d}").mkdir()
            Image.fromarray(_rgb(k)).save(tmp_path / split / f"k{k:02d}" / "0.png")
    with pytest.raises(RmpeftError, match="outside 0..9"):
        load_image_splits(_task("mnist", data_dir=str(tmp_path)), 0)

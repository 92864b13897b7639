"""Where the images of a task come from: the hub, or a local folder in one of the common layouts.

Each reader returns ``(train, test)`` :class:`ImageSource` objects (lazy where the format allows):

- ``hub``: ``datasets.load_dataset(source.path, source.name, revision=source.revision)``, splits
  ``source.train_split`` / ``source.test_split``, columns ``source.image_column`` / ``source.label_column``.
- ``imagefolder``: ``<data_dir>/<folders.train>/<class>/<image>`` and the same under ``folders.test``;
  labels follow the sorted class-folder names (torchvision's ``ImageFolder`` rule).
- ``cifar10``: the torchvision / official python files (``data_batch_1..5``, ``test_batch``).
- ``mnist``: the IDX files (``train-images-idx3-ubyte`` etc., optionally ``.gz``), as torchvision keeps them.
- ``svhn``: the torchvision ``train_32x32.mat`` / ``test_32x32.mat`` files (label 10 is the digit 0).
- ``digits``: scikit-learn's bundled handwritten digits (1,797 real 8x8 images, offline), upsampled
  to 32x32; a fixed split (seed 0) holds out 500 test images.

``layout: auto`` is ``hub`` without ``data_dir``, else guessed from the folder's files.
"""

from __future__ import annotations

import gzip
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from rmpeft.errors import RmpeftError, unknown_choice
from rmpeft.validation import IMAGE_LAYOUTS as LAYOUTS
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".ppm", ".bmp", ".tif", ".tiff", ".webp")
DIGITS_TEST = 500
DIGITS_SIZE = 32


class ImageSource:
    """Images and integer labels of one official split; ``image(i)`` is a PIL image."""

    def __init__(self, labels: Sequence[int], image: Callable[[int], Image.Image]):
        self.labels = [int(y) for y in labels]
        self._image = image

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> Image.Image:
        return self._image(i)


def array_source(images: np.ndarray, labels: Sequence[int]) -> ImageSource:
    """Images held in a uint8 array ``[N, H, W]`` or ``[N, H, W, 3]``."""
    return ImageSource(labels, lambda i: Image.fromarray(images[i]))


def _open(path: Path) -> Image.Image:
    with Image.open(path) as im:
        im.load()
        return im


def read_imagefolder(data_dir: Path, folders: dict[str, str]) -> tuple[ImageSource, ImageSource]:
    roots = [data_dir / folders.get(split, split) for split in ("train", "test")]
    for root in roots:
        if not root.is_dir():
            raise RmpeftError(f"task.data_dir: no folder '{root}' "
                              f"(layout imagefolder needs <data_dir>/<split>/<class>/)")
    classes = sorted(p.name for p in roots[0].iterdir() if p.is_dir())
    index = {name: i for i, name in enumerate(classes)}
    sources = []
    for root in roots:
        paths, labels = [], []
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            if folder.name not in index:
                raise RmpeftError(f"task.data_dir: class folder '{folder}' is not among the train classes")
            files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            paths += files
            labels += [index[folder.name]] * len(files)
        sources.append(ImageSource(labels, lambda i, paths=paths: _open(paths[i])))
    return sources[0], sources[1]


def _find(data_dir: Path, names: Sequence[str]) -> Path | None:
    for name in names:
        hits = sorted(data_dir.rglob(name))
        if hits:
            return hits[0]
    return None


def _require(data_dir: Path, name: str, layout: str) -> Path:
    path = _find(data_dir, [name, name + ".gz"])
    if path is None:
        raise RmpeftError(f"task.data_dir: no file '{name}' under '{data_dir}' (layout {layout})")
    return path


def read_cifar10(data_dir: Path) -> tuple[ImageSource, ImageSource]:
    def load(names: list[str]) -> ImageSource:
        data, labels = [], []
        for name in names:
            with open(_require(data_dir, name, "cifar10"), "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            data.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels += list(batch[b"labels"])
        return array_source(np.concatenate(data), labels)

    return load([f"data_batch_{i}" for i in range(1, 6)]), load(["test_batch"])


def _idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def read_mnist(data_dir: Path) -> tuple[ImageSource, ImageSource]:
    def load(prefix: str) -> ImageSource:
        images = _idx(_require(data_dir, f"{prefix}-images-idx3-ubyte", "mnist"))
        return array_source(images, _idx(_require(data_dir, f"{prefix}-labels-idx1-ubyte", "mnist")).tolist())

    return load("train"), load("t10k")


def read_svhn(data_dir: Path) -> tuple[ImageSource, ImageSource]:
    from scipy.io import loadmat

    def load(name: str) -> ImageSource:
        mat = loadmat(_require(data_dir, name, "svhn"))
        labels = np.asarray(mat["y"]).reshape(-1) % 10  # the .mat files label the digit 0 as 10
        return array_source(np.ascontiguousarray(np.asarray(mat["X"], dtype=np.uint8).transpose(3, 0, 1, 2)), labels)

    return load("train_32x32.mat"), load("test_32x32.mat")


def read_digits() -> tuple[ImageSource, ImageSource]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    scale = DIGITS_SIZE // 8
    images = np.kron(np.round(bunch.images * (255 / 16)), np.ones((scale, scale))).astype(np.uint8)
    order = np.random.RandomState(0).permutation(len(images))
    train, test = order[:-DIGITS_TEST], order[-DIGITS_TEST:]
    return array_source(images[train], bunch.target[train]), array_source(images[test], bunch.target[test])


def read_hub(source: Any) -> tuple[ImageSource, ImageSource]:
    import datasets

    path = source.get("path")
    if not path:
        raise RmpeftError("task.source.path is empty; set a hub dataset id or task.data_dir=<folder>")
    image_col, label_col = source.get("image_column", "image"), source.get("label_column", "label")

    def load(split: str) -> ImageSource:
        try:
            ds = datasets.load_dataset(path, source.get("name"), revision=source.get("revision"), split=split)
        except Exception as e:  # network, missing split or config: one line naming the dataset
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RmpeftError(f"cannot load hub dataset '{path}' split '{split}': {first}") from e
        for col in (image_col, label_col):
            if col not in ds.column_names:
                raise unknown_choice(f"task.source column of '{path}'", col, ds.column_names)
        return ImageSource(list(ds[label_col]), lambda i: ds[i][image_col])

    return load(source.get("train_split", "train")), load(source.get("test_split", "test"))


def detect_layout(data_dir: Path) -> str:
    """The layout of a local folder, from the files it holds."""
    if _find(data_dir, ["data_batch_1"]):
        return "cifar10"
    if _find(data_dir, ["train-images-idx3-ubyte", "train-images-idx3-ubyte.gz"]):
        return "mnist"
    if _find(data_dir, ["train_32x32.mat"]):
        return "svhn"
    if (data_dir / "train").is_dir():
        return "imagefolder"
    raise RmpeftError(f"task.data_dir '{data_dir}': cannot tell its layout; set task.layout to one of "
                      f"{', '.join(sorted(LAYOUTS))}")


def read_sources(task_cfg: Any) -> tuple[ImageSource, ImageSource]:
    """The (train, test) image sources of an image task config."""
    layout = str(task_cfg.get("layout") or "auto")
    if layout not in LAYOUTS:
        raise unknown_choice("task.layout", layout, LAYOUTS)
    data_dir = Path(str(task_cfg.data_dir)).expanduser() if task_cfg.get("data_dir") else None
    if layout == "auto":
        layout = detect_layout(data_dir) if data_dir else "hub"
    if layout == "digits":
        return read_digits()
    if layout == "hub":
        return read_hub(task_cfg.get("source") or {})
    if data_dir is None or not data_dir.is_dir():
        raise RmpeftError(f"task.data_dir='{data_dir}' is not a folder (layout {layout} reads local files)")
    if layout == "imagefolder":
        return read_imagefolder(data_dir, dict(task_cfg.get("folders") or {}))
    return {"cifar10": read_cifar10, "mnist": read_mnist, "svhn": read_svhn}[layout](data_dir)

"""Data sets for training children: loaded once into float32 tensors, split, standardised.

EAS trains every child network on the same fixed splits, so this module turns each supported data set into
one `DataSplits` value: train / validation / test tensors (NCHW float32, labels int64) plus the facts a
trainer or an exporter needs (class count, input shape, augmentation kind, the standardisation used).

Sources, and how each is prepared (PAPER.md, "Child training during search"):

| name      | source                                    | validation held out   | pixels         | augment   |
|-----------|-------------------------------------------|-----------------------|----------------|-----------|
| digits    | scikit-learn's bundled `load_digits` 8x8  | 20%, stratified       | standardised   | none      |
| cifar10   | `cifar-10-batches-py/` python pickles     | 5,000 of the 50,000   | standardised   | crop_flip |
| cifar100  | `cifar-100-python/` python pickles        | 5,000 of the 50,000   | standardised   | crop_flip |
| svhn      | `train_32x32.mat`, `test_32x32.mat`       | 5,000 of the 73,257   | / 255 (EAS)    | none      |
| synthetic | generated: class prototypes plus noise    | 20%, stratified       | standardised   | optional  |
| a path    | image folder or .npz (`userdata.py`)      | given, or as digits   | standardised   | optional  |

digits and synthetic have no official test set: a fixed 20% (stratified, independent of `seed`) is the test
split, 20% is held out for validation (stratified, drawn with `seed`), 60% trains. For copies of CIFAR/SVHN
smaller than 50,000 images (tests), a tenth rather than 5,000 is held out; `val_size` overrides either.

"Standardised" means per-channel `(x / max_pixel - mean) / std` with mean and std measured on the training
split only (never on validation or test, which would leak their statistics). `DataSplits.mean` and `.std` are
in units of pixels scaled to [0, 1], so an exported network can state its preprocessing exactly.

Nothing is downloaded unless `download=True` is passed. The CIFAR files are python pickles; they are read
with an unpickler that only admits the few numpy constructors those files use, so a tampered file cannot run
code. Augmentation (`augment_batch`) works on batched tensors on whatever device they live on, so a GPU
trainer needs no CPU data loader at all.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
import shutil
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "AUGMENTATIONS",
    "DATASETS",
    "DataSplits",
    "DatasetError",
    "augment_batch",
    "calibration_batch",
    "default_data_dir",
    "load_dataset",
]

DATASETS: tuple[str, ...] = ("digits", "cifar10", "cifar100", "svhn", "synthetic")
AUGMENTATIONS: tuple[str, ...] = ("none", "crop_flip")

# EAS holds out 5,000 of the training images for the reward; for small (test-sized) copies of the files we
# hold out a tenth instead, so a 60-image fixture still keeps most of its images for training.
EAS_VAL_SIZE = 5000
SMALL_VAL_FRACTION = 0.1
# digits and synthetic have no official split: 60/20/20 train/val/test, stratified by class; the test part
# is drawn with a fixed seed (see _own_split).
OWN_SPLIT_FRACTION = 0.2
TEST_SPLIT_SEED = 0
# Padding of the "crop_flip" augmentation (pad 4, crop back to the original size), as in EAS.
CROP_PAD = 4
_STATS_CHUNK = 1024  # images per chunk when measuring the training statistics
# A channel whose training pixels are all equal has std 0; dividing by it would make inf/NaN.
MIN_STD = 1e-6

DATA_DIR_ENV = "EASC_DATA_DIR"

# (url, file name, md5) per data set; checksums are the ones the data sets' authors publish (torchvision
# verifies the same values). Only used with download=True.
_SOURCES: dict[str, list[tuple[str, str, str]]] = {
    "cifar10": [(
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
    )],
    "cifar100": [(
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
    )],
    "svhn": [
        ("http://ufldl.stanford.edu/housenumbers/train_32x32.mat", "train_32x32.mat",
         "e26dedcc434d2e4c54c9b2d4a06d8373"),
        ("http://ufldl.stanford.edu/housenumbers/test_32x32.mat", "test_32x32.mat",
         "eb5a983be6a315427106f1b164d9cef3"),
    ],
}
_DOWNLOAD_TIMEOUT_S = 60


class DatasetError(ValueError):
    """A data set cannot be loaded: unknown name, missing or malformed files, bad options (one line)."""


@dataclass(repr=False)
class DataSplits:
    """Train / validation / test tensors of one data set, ready to train on.

    Images are float32 NCHW, already standardised; labels are int64 in [0, num_classes). `augment` names the
    training-time augmentation (`augment_batch` kinds). `mean` and `std` (one per channel, in units of pixels
    scaled to [0, 1]) are what was subtracted and divided by.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    name: str
    augment: str = "none"
    mean: tuple[float, ...] = field(default=())
    std: tuple[float, ...] = field(default=())
    classes: tuple[str, ...] = field(default=())  # class names, where the source has them (image folders)
    split_record: dict | None = None  # which file / array row went to which split (users' data sets)

    def __post_init__(self) -> None:
        # Data sets are also built by other code (image folders, tests); catching a mismatch here gives a
        # clear message instead of a shape error deep inside a training step.
        self.input_shape = tuple(int(d) for d in self.input_shape)
        if self.augment not in AUGMENTATIONS:
            raise DatasetError(f"{self.name}: augment {self.augment!r} is not one of {', '.join(AUGMENTATIONS)}")
        for split in ("train", "val", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.dtype != torch.float32 or y.dtype != torch.int64:
                raise DatasetError(f"{self.name}: {split} split must be float32 images and int64 labels, "
                                   f"got {x.dtype} and {y.dtype}")
            if tuple(x.shape[1:]) != self.input_shape or y.dim() != 1 or len(x) != len(y):
                raise DatasetError(f"{self.name}: {split} split has images {tuple(x.shape)} and labels "
                                   f"{tuple(y.shape)}, expected (N, {', '.join(map(str, self.input_shape))}) and (N,)")
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                raise DatasetError(f"{self.name}: {split} split has labels outside 0..{self.num_classes - 1}")

    def __repr__(self) -> str:
        # The default dataclass repr would print every pixel.
        return (f"DataSplits(name={self.name!r}, train={len(self.y_train)}, val={len(self.y_val)}, "
                f"test={len(self.y_test)}, input_shape={self.input_shape}, num_classes={self.num_classes}, "
                f"augment={self.augment!r})")


# --------------------------------------------------------------------------------------------------------
# Public entry points


def default_data_dir() -> Path:
    """Where data files are looked for when no folder is given: $EASC_DATA_DIR, else ~/.cache/easc/data."""
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env) if env else Path.home() / ".cache" / "easc" / "data"


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    *,
    seed: int = 0,
    download: bool = False,
    val_size: int | None = None,
    **kwargs: Any,
) -> DataSplits:
    """Load data set `name` (one of `DATASETS`) with a seeded validation split.

    `data_dir` is the folder holding the data set's files (for CIFAR either the parent folder or the
    `cifar-10-batches-py` / `cifar-100-python` folder itself); default `default_data_dir()`. `val_size`
    overrides how many training images are held out for validation. `kwargs` are data-set options (only
    `synthetic` takes any: `shape`, `num_classes`, `n`, `noise`, `augment`).

    `name` may also be the path of an image folder or an .npz file (`userdata.load_path_dataset`, options
    `image_size`, `augment`, `skip_bad_images`, `progress`); `data_dir` and `download` do not apply to those.
    """
    key = name.strip().lower().replace("-", "").replace("_", "")
    if key not in _LOADERS:
        from .userdata import PATH_OPTIONS, is_path_dataset, load_path_dataset

        if not is_path_dataset(name):
            raise DatasetError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}, or the path of an "
                               f"image folder or an .npz file")
        unknown = sorted(set(kwargs) - set(PATH_OPTIONS))
        if unknown:
            raise DatasetError(f"{name}: unknown option(s) {', '.join(unknown)}; accepted: {', '.join(PATH_OPTIONS)}")
        return load_path_dataset(name, seed=seed, val_size=val_size, **kwargs)
    if val_size is not None and (isinstance(val_size, bool) or not isinstance(val_size, int) or val_size < 0):
        raise DatasetError(f"{key}: val_size must be a non-negative integer, got {val_size!r}")
    loader, options = _LOADERS[key]
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        accepted = ", ".join(options) if options else "none"
        raise DatasetError(f"{key}: unknown option(s) {', '.join(unknown)}; accepted: {accepted}")
    folder = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    return loader(folder, seed=seed, download=download, val_size=val_size, **kwargs)


def augment_batch(x: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """Augment a batch of NCHW images on their own device; `kind` is one of `AUGMENTATIONS`.

    "crop_flip" (EAS, CIFAR): pad each side by 4 with zeros (on standardised data: the mean training pixel),
    crop back to HxW at an offset drawn per image
    (uniform in 0..8 both ways), then flip horizontally with probability 1/2 per image. All random draws come
    from `generator` (on any device), so a seeded generator gives the same batch every time. Returns a new
    tensor in the memory format of `x`; "none" returns `x` itself.
    """
    if kind == "none":
        return x
    if kind != "crop_flip":
        raise ValueError(f"augment kind {kind!r} is not one of {', '.join(AUGMENTATIONS)}")
    if x.dim() != 4:
        raise ValueError(f"crop_flip needs NCHW images, got shape {tuple(x.shape)}")
    n, _, h, w = x.shape
    # Draw on the generator's device (a CUDA generator cannot fill CPU tensors and vice versa), then move:
    # these are 3N small numbers per batch.
    offsets = torch.randint(0, 2 * CROP_PAD + 1, (2, n), generator=generator, device=generator.device)
    flips = torch.rand(n, generator=generator, device=generator.device) < 0.5
    offsets, flips = offsets.to(x.device), flips.to(x.device)
    padded = F.pad(x, (CROP_PAD, CROP_PAD, CROP_PAD, CROP_PAD))
    rows = offsets[0, :, None] + torch.arange(h, device=x.device)  # (N, H): padded rows each image keeps
    cols = offsets[1, :, None] + torch.arange(w, device=x.device)  # (N, W)
    cols = torch.where(flips[:, None], cols.flip(1), cols)  # a flip reads the kept columns right to left
    batch = torch.arange(n, device=x.device)[:, None, None]
    # One gather for the whole batch instead of a Python loop over images; advanced indices separated by the
    # channel slice put their broadcast dims first, giving (N, H, W, C), i.e. an NHWC view.
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    fmt = torch.channels_last if (x.is_contiguous(memory_format=torch.channels_last)
                                  and not x.is_contiguous()) else torch.contiguous_format
    return out.contiguous(memory_format=fmt)


def calibration_batch(data: DataSplits, n: int = 256, seed: int = 0) -> torch.Tensor:
    """A seeded random sample of `n` training images (standardised, not augmented), e.g. to set the
    statistics of a newly inserted batch-norm layer (Net2Deeper). Fewer if the training split is smaller."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.x_train), generator=gen)[:n]
    return data.x_train[idx.to(data.x_train.device)].clone()


# --------------------------------------------------------------------------------------------------------
# Splitting and standardisation


def _split_indices(labels: np.ndarray, n_holdout: int, seed: int, stratify: bool) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held out) index arrays; both sorted, so the kept images stay in file order."""
    n = len(labels)
    if n_holdout == 0:
        return np.arange(n), np.arange(0)
    classes = np.unique(labels)
    # sklearn's stratified split needs at least one example per class on each side.
    if stratify and len(classes) <= n_holdout <= n - len(classes):
        from sklearn.model_selection import train_test_split

        kept, held = train_test_split(np.arange(n), test_size=n_holdout, random_state=seed, stratify=labels)
    else:
        perm = np.random.default_rng(seed).permutation(n)
        kept, held = perm[n_holdout:], perm[:n_holdout]
    return np.sort(kept), np.sort(held)


def _eas_holdout(n_train: int, val_size: int | None) -> int:
    return min(EAS_VAL_SIZE, int(n_train * SMALL_VAL_FRACTION)) if val_size is None else val_size


def _to_float(images: np.ndarray, scale: float) -> torch.Tensor:
    # Convert through torch in float32 so a 50,000-image set never goes through a float64 copy.
    return torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32).div_(scale)


def _standardise(train: torch.Tensor, *others: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel standardisation in place, with statistics from `train` only; returns (mean, std)."""
    dims = [0] + list(range(2, train.dim()))
    count = train.numel() // train.shape[1]
    # Accumulated in float64 (50M float32 values summed in float32 lose digits of the mean), over chunks of
    # images, so a CIFAR-sized set never needs a full float64 copy (1.2 GB).
    chunks = torch.split(train, _STATS_CHUNK)
    mean = sum(c.double().sum(dim=dims) for c in chunks) / count
    shape = (1, -1) + (1,) * (train.dim() - 2)
    var = sum(((c.double() - mean.view(shape)) ** 2).sum(dim=dims) for c in chunks) / count
    std = var.sqrt().clamp_min(MIN_STD)
    m, s = mean.float().view(shape), std.float().view(shape)
    for t in (train, *others):
        t.sub_(m).div_(s)
    return tuple(mean.tolist()), tuple(std.tolist())


def _labels(values: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(values, dtype=np.int64).reshape(-1))


def _assemble(name: str, x_all: np.ndarray, y_all: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, *,
              num_classes: int, scale: float, standardise: bool, augment: str, seed: int,
              n_val: int, stratify: bool) -> DataSplits:
    """Hold out `n_val` validation images from (x_all, y_all), scale, standardise, pack a DataSplits."""
    if n_val >= len(y_all):
        raise DatasetError(f"{name}: val_size {n_val} leaves no training images (there are {len(y_all)})")
    kept, held = _split_indices(y_all, n_val, seed, stratify)
    xs = [_to_float(x_all[kept], scale), _to_float(x_all[held], scale), _to_float(x_test, scale)]
    channels = xs[0].shape[1]
    if standardise:
        mean, std = _standardise(*xs)
    else:
        mean, std = (0.0,) * channels, (1.0,) * channels
    return DataSplits(
        x_train=xs[0], y_train=_labels(y_all[kept]), x_val=xs[1], y_val=_labels(y_all[held]),
        x_test=xs[2], y_test=_labels(y_test), num_classes=num_classes, input_shape=tuple(xs[0].shape[1:]),
        name=name, augment=augment, mean=mean, std=std,
    )


# --------------------------------------------------------------------------------------------------------
# digits and synthetic: no files, our own 60/20/20 split


def _load_digits(folder: Path, *, seed: int, download: bool, val_size: int | None) -> DataSplits:
    del folder, download  # bundled with scikit-learn
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.float32)[:, None]  # (1797, 1, 8, 8), values 0..16
    return _own_split("digits", images, bunch.target, num_classes=10, scale=16.0, augment="none",
                      seed=seed, val_size=val_size)


def _own_split(name: str, images: np.ndarray, labels: np.ndarray, *, num_classes: int, scale: float,
               augment: str, seed: int, val_size: int | None) -> DataSplits:
    n = len(labels)
    # The test split does not move with `seed`, as with CIFAR's fixed test files: test accuracies of runs
    # with different seeds stay comparable, and `seed` only decides which images are held out for validation.
    rest, test = _split_indices(labels, int(round(n * OWN_SPLIT_FRACTION)), TEST_SPLIT_SEED, stratify=True)
    n_val = int(round(n * OWN_SPLIT_FRACTION)) if val_size is None else val_size
    return _assemble(name, images[rest], labels[rest], images[test], labels[test], num_classes=num_classes,
                     scale=scale, standardise=True, augment=augment, seed=seed, n_val=n_val, stratify=True)


def _load_synthetic(folder: Path, *, seed: int, download: bool, val_size: int | None,
                    shape: tuple[int, ...] = (3, 8, 8), num_classes: int = 10, n: int = 600,
                    noise: float = 1.0, augment: str = "none") -> DataSplits:
    """Class prototypes (seeded Gaussian images) plus Gaussian noise: learnable, and cheap at any shape."""
    del folder, download
    shape = tuple(int(d) for d in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise DatasetError(f"synthetic: shape must be (C, H, W) with positive sizes, got {shape}")
    if num_classes < 2 or n < 5 * num_classes:
        raise DatasetError(f"synthetic: need num_classes >= 2 and n >= 5 * num_classes, got {num_classes} and {n}")
    rng = np.random.default_rng(seed)
    prototypes = rng.standard_normal((num_classes, *shape)).astype(np.float32)
    # Every class equally often, in shuffled order, so stratified splits always have room.
    labels = rng.permutation(np.arange(n) % num_classes)
    images = prototypes[labels] + noise * rng.standard_normal((n, *shape)).astype(np.float32)
    return _own_split("synthetic", images, labels, num_classes=num_classes, scale=1.0, augment=augment,
                      seed=seed, val_size=val_size)


# --------------------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100: python pickles


class _CifarUnpickler(pickle.Unpickler):
    """Admits only what the CIFAR batches contain (dicts, lists, bytes and uint8 numpy arrays).

    A plain pickle.load would import and call anything the file names; a data folder is not trusted code.
    Both numpy module spellings are accepted: files from numpy 1 say `numpy.core`, numpy 2 says `numpy._core`.
    """

    @staticmethod
    @functools.cache
    def _allowed() -> dict[tuple[str, str], Callable[..., Any]]:
        import codecs

        try:
            from numpy._core import multiarray
        except ImportError:  # numpy < 2
            from numpy.core import multiarray  # type: ignore[no-redef]
        table: dict[tuple[str, str], Callable[..., Any]] = {
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            ("_codecs", "encode"): codecs.encode,  # how protocol 2 spells bytes written by python 3
        }
        for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            table[(module, "_reconstruct")] = multiarray._reconstruct
            table[(module, "scalar")] = multiarray.scalar
        return table

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed()[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def _read_cifar_batch(path: Path, label_key: bytes, what: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    expect = f"expected a {what} pickle: a dict with b'data' (uint8, N x 3072) and {label_key!r}"
    try:
        with open(path, "rb") as f:
            # encoding="bytes": the files come from python 2, whose str keys and values must stay bytes.
            batch = _CifarUnpickler(f, encoding="bytes").load()
    except Exception as exc:  # any failure to parse is the same user-facing problem
        raise DatasetError(f"{path}: cannot read ({type(exc).__name__}: {exc}); {expect}") from None
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise DatasetError(f"{path}: has {keys}; {expect}")
    data, labels = batch[b"data"], np.asarray(batch[label_key])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetError(f"{path}: b'data' is {desc}; {expect}")
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(f"{path}: {len(data)} images but labels of shape {labels.shape}; {expect}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetError(f"{path}: labels outside 0..{num_classes - 1}; {expect}")
    # Rows are 1024 red, 1024 green, 1024 blue values, each a row-major 32x32 image.
    return data.reshape(-1, 3, 32, 32), labels


def _cifar_folder(folder: Path, subdir: str) -> Path:
    """The folder holding the batch files: `folder/subdir` if it exists, else `folder` itself."""
    return folder / subdir if (folder / subdir).is_dir() else folder


def _missing_files_error(name: str, folder: Path, expected: str, missing: list[str], url: str) -> DatasetError:
    where = f"folder {folder} does not exist" if not folder.is_dir() else f"no usable data in {folder}"
    return DatasetError(
        f"{name}: {where}: expected {expected} (missing: {', '.join(missing)}); "
        f"get {url} and extract it there, or pass --download (download=True from Python)"
    )


def _load_cifar(name: str, folder: Path, *, seed: int, download: bool, val_size: int | None) -> DataSplits:
    if name == "cifar10":
        subdir, test_files = "cifar-10-batches-py", ["test_batch"]
        train_files = [f"data_batch_{i}" for i in range(1, 6)]
        label_key, num_classes = b"labels", 10
        expected = "cifar-10-batches-py/ with data_batch_1..data_batch_5 and test_batch"
    else:
        subdir, train_files, test_files = "cifar-100-python", ["train"], ["test"]
        label_key, num_classes = b"fine_labels", 100
        expected = "cifar-100-python/ with train and test"
    files = train_files + test_files
    batches = _cifar_folder(folder, subdir)
    missing = [f for f in files if not (batches / f).is_file()]
    if missing and download:
        _download(name, folder)
        batches = _cifar_folder(folder, subdir)
        missing = [f for f in files if not (batches / f).is_file()]
    if missing:
        raise _missing_files_error(name, batches, expected, missing, _SOURCES[name][0][0])
    what = "CIFAR-10 batch" if name == "cifar10" else "CIFAR-100"
    train = [_read_cifar_batch(batches / f, label_key, what, num_classes) for f in train_files]
    test = [_read_cifar_batch(batches / f, label_key, what, num_classes) for f in test_files]
    x_all, y_all = np.concatenate([b[0] for b in train]), np.concatenate([b[1] for b in train])
    x_test, y_test = np.concatenate([b[0] for b in test]), np.concatenate([b[1] for b in test])
    return _assemble(name, x_all, y_all, x_test, y_test, num_classes=num_classes, scale=255.0, standardise=True,
                     augment="crop_flip", seed=seed, n_val=_eas_holdout(len(y_all), val_size), stratify=False)


# --------------------------------------------------------------------------------------------------------
# SVHN: MATLAB files


def _read_svhn(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from scipy.io import loadmat

    expect = "expected a MATLAB file with X (uint8, 32 x 32 x 3 x N) and y (N x 1, labels 1..10)"
    try:
        mat = loadmat(path)
    except Exception as exc:
        raise DatasetError(f"{path}: cannot read ({type(exc).__name__}: {exc}); {expect}") from None
    if "X" not in mat or "y" not in mat:
        raise DatasetError(f"{path}: has {sorted(k for k in mat if not k.startswith('__'))}; {expect}")
    x, y = mat["X"], np.asarray(mat["y"]).reshape(-1)
    if x.ndim != 4 or x.shape[2] != 3 or x.shape[3] != len(y) or x.dtype != np.uint8:
        raise DatasetError(f"{path}: X is {x.dtype} {x.shape} with {len(y)} labels; {expect}")
    if len(y) and (y.min() < 1 or y.max() > 10):
        raise DatasetError(f"{path}: labels outside 1..10; {expect}")
    # The files store digit 0 as label 10. X is H x W x C x N; we want N x C x H x W.
    return x.transpose(3, 2, 0, 1), np.where(y == 10, 0, y).astype(np.int64)


def _load_svhn(folder: Path, *, seed: int, download: bool, val_size: int | None) -> DataSplits:
    files = ["train_32x32.mat", "test_32x32.mat"]
    missing = [f for f in files if not (folder / f).is_file()]
    if missing and download:
        _download("svhn", folder)
        missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise _missing_files_error("svhn", folder, "train_32x32.mat and test_32x32.mat", missing,
                                   "http://ufldl.stanford.edu/housenumbers/")
    x_all, y_all = _read_svhn(folder / files[0])
    x_test, y_test = _read_svhn(folder / files[1])
    # EAS feeds SVHN as pixels / 255 without per-channel standardisation, and without augmentation.
    return _assemble("svhn", x_all, y_all, x_test, y_test, num_classes=10, scale=255.0, standardise=False,
                     augment="none", seed=seed, n_val=_eas_holdout(len(y_all), val_size), stratify=False)


# --------------------------------------------------------------------------------------------------------
# Download (only with download=True; never at import or in tests)


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(name: str, folder: Path) -> None:
    """Fetch `name`'s files into `folder`, check their md5, unpack archives there."""
    folder.mkdir(parents=True, exist_ok=True)
    for url, filename, md5 in _SOURCES[name]:
        target = folder / filename
        if not (target.is_file() and _md5(target) == md5):
            partial = target.with_name(target.name + ".part")
            try:
                with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response, open(partial, "wb") as out:
                    shutil.copyfileobj(response, out, length=1 << 20)
            except (urllib.error.URLError, OSError) as exc:
                partial.unlink(missing_ok=True)
                raise DatasetError(f"{name}: could not download {url} into {folder}: {exc}") from None
            got = _md5(partial)
            if got != md5:
                partial.unlink(missing_ok=True)
                raise DatasetError(f"{name}: {url} has md5 {got}, expected {md5}; the download is corrupt, try again")
            # Rename only after the checksum passed, so an interrupted download never looks complete.
            partial.replace(target)
        if filename.endswith(".tar.gz"):
            with tarfile.open(target, "r:gz") as archive:
                if hasattr(tarfile, "data_filter"):
                    archive.extractall(folder, filter="data")  # rejects absolute paths, '..', device files
                else:  # pragma: no cover - python without the 2023 tarfile security backport
                    for member in archive.getmembers():
                        if member.name.startswith("/") or ".." in Path(member.name).parts:
                            raise DatasetError(f"{name}: {target} contains the unsafe path {member.name}")
                    archive.extractall(folder)


def _load_cifar10(folder: Path, **kw: Any) -> DataSplits:
    return _load_cifar("cifar10", folder, **kw)


def _load_cifar100(folder: Path, **kw: Any) -> DataSplits:
    return _load_cifar("cifar100", folder, **kw)


# name -> (loader, data-set options it accepts as keyword arguments)
_LOADERS: dict[str, tuple[Callable[..., DataSplits], tuple[str, ...]]] = {
    "digits": (_load_digits, ()),
    "cifar10": (_load_cifar10, ()),
    "cifar100": (_load_cifar100, ()),
    "svhn": (_load_svhn, ()),
    "synthetic": (_load_synthetic, ("shape", "num_classes", "n", "noise", "augment")),
}
assert tuple(_LOADERS) == DATASETS

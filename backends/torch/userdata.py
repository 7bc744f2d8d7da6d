"""Users' data sets: an image folder or an .npz file, turned into the same `DataSplits` as the named sets.

`load_path_dataset(path, ...)` reads the images (`imagefolder.load_folder`, decoded in parallel and cached;
or `arrays.load_npz`), then splits, scales and standardises them exactly as `data.py` does its own sets:

- test split: the given one (DIR/test, x_test); otherwise 20% of the images, stratified by class, drawn with
  a fixed seed (as for digits: test accuracies of runs with different seeds stay comparable);
- validation split: the given one (DIR/val, x_val); otherwise held out of the training images, stratified
  and drawn with `seed`: 20% of all images when easc also made the test split (a 60/20/20 split, digits'
  rule), else a tenth of the training images up to 5,000 (CIFAR's rule). `val_size` overrides the count;
- pixels: uint8 / 255 (float arrays as given), then per-channel standardisation with training statistics.

`DataSplits.split_record` says which file (or array row) went where; the search writes it to its run folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from .arrays import ArraysError, load_npz, resize
from .data import (AUGMENTATIONS, OWN_SPLIT_FRACTION, TEST_SPLIT_SEED, DatasetError, DataSplits, _eas_holdout,
                   _labels, _split_indices, _standardise, _to_float)
from .imagefolder import ImageFolderError, load_folder

PATH_OPTIONS = ("image_size", "augment", "skip_bad_images", "progress")


def is_path_dataset(name: str) -> bool:
    """True when `name` means a file or folder rather than a named data set (names win: `digits` is the
    bundled set even where a folder of that name exists; `./digits` is the folder)."""
    from .data import DATASETS

    if name.strip().lower().replace("-", "").replace("_", "") in DATASETS:
        return False
    p = Path(name).expanduser()
    return p.is_dir() or p.suffix.lower() == ".npz" or p.exists() or "/" in name or "\\" in name


def parse_image_size(value) -> tuple[int, int] | None:
    """`64`, `"64"`, `"48x64"` (H x W) or `(48, 64)` -> (H, W); None stays None."""
    if value is None:
        return None
    if isinstance(value, str):
        parts = value.lower().replace(" ", "").split("x")
        try:
            value = [int(p) for p in parts]
        except ValueError:
            raise DatasetError(f"--image-size {value!r}: give N or HxW (e.g. 64 or 48x64)") from None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value, value)
    value = tuple(int(v) for v in value)
    if len(value) == 1:
        value = value * 2
    if len(value) != 2 or min(value) < 1 or max(value) > 4096:
        raise DatasetError(f"--image-size {value}: give N or HxW with sizes 1..4096")
    return value


def normalise_augment(value) -> str:
    key = (value or "none").strip().lower().replace("-", "_")
    if key not in AUGMENTATIONS:
        raise DatasetError(f"--augment {value!r}: use crop-flip or none")
    return key


def _split(pool: np.ndarray, labels: np.ndarray, given: set, seed: int, val_size: int | None) -> dict:
    """{split: sorted indices}; `pool` names each item's given split ('train' when none was given)."""
    idx = {s: np.flatnonzero(pool == s) for s in ("train", "val", "test")}
    train = idx["train"]
    made_test = "test" not in given
    if made_test:
        n_test = int(round((len(train) + len(idx["val"])) * OWN_SPLIT_FRACTION))
        if n_test >= len(train):
            raise DatasetError(f"{len(train)} training images are too few to hold out a test split")
        rest, held = _split_indices(labels[train], n_test, TEST_SPLIT_SEED, stratify=True)
        train, idx["test"] = train[rest], train[held]
    if "val" not in given:
        if val_size is not None:
            n_val = val_size
        elif made_test:
            n_val = int(round((len(train) + len(idx["test"])) * OWN_SPLIT_FRACTION))
        else:
            n_val = _eas_holdout(len(train), None)
        if n_val >= len(train):
            raise DatasetError(f"val_size {n_val} leaves no training images (there are {len(train)})")
        kept, held = _split_indices(labels[train], n_val, seed, stratify=True)
        train, idx["val"] = train[kept], train[held]
    idx["train"] = train
    return {s: np.sort(v) for s, v in idx.items()}


def _assemble(name: str, images_nchw, labels, pool, given, *, scale, num_classes, seed, val_size, augment,
              classes, describe) -> DataSplits:
    parts = _split(np.asarray(pool), labels, set(given), seed, val_size)
    xs = [_to_float(images_nchw[parts[s]], scale) for s in ("train", "val", "test")]
    mean, std = _standardise(*xs)
    record = {"source": name, "classes": list(classes), **{s: describe(parts[s]) for s in ("train", "val", "test")}}
    return DataSplits(x_train=xs[0], y_train=_labels(labels[parts["train"]]), x_val=xs[1],
                      y_val=_labels(labels[parts["val"]]), x_test=xs[2], y_test=_labels(labels[parts["test"]]),
                      num_classes=num_classes, input_shape=tuple(xs[0].shape[1:]), name=name, augment=augment,
                      mean=mean, std=std, classes=tuple(classes), split_record=record)


def load_path_dataset(path, *, seed: int = 0, val_size: int | None = None, image_size=None, augment=None,
                      skip_bad_images: bool = False, progress: bool = True) -> DataSplits:
    """An image folder or an .npz as a `DataSplits` (see the module doc). Errors are `DatasetError`s."""
    p = Path(path).expanduser()
    size = parse_image_size(image_size)
    augment = normalise_augment(augment)
    if val_size is not None and (isinstance(val_size, bool) or not isinstance(val_size, int) or val_size < 0):
        raise DatasetError(f"{p}: val_size must be a non-negative integer, got {val_size!r}")
    if p.is_dir():
        try:
            folder = load_folder(p, size, skip_bad=skip_bad_images, progress=progress)
        except ImageFolderError as e:
            raise DatasetError(str(e)) from None
        if folder.skipped and progress and not folder.from_cache:
            first, reason = folder.skipped[0]
            more = f" and {len(folder.skipped) - 1} more" if len(folder.skipped) > 1 else ""
            print(f"note: {p}: skipped {len(folder.skipped)} image(s) that cannot be decoded (--skip-bad-images): "
                  f"{first} ({reason}){more}; the run's split record lists them", file=sys.stderr)
        listing = folder.listing
        kept = folder.kept
        images = folder.images.transpose(0, 3, 1, 2)  # NHWC -> NCHW view; copied per split below
        labels = listing.labels[kept]
        pool = np.asarray(listing.splits, dtype=object)[kept]
        files = [listing.files[i] for i in kept]
        record_extra = {"skipped": [list(s) for s in folder.skipped], "image_size": list(images.shape[2:])}
        try:
            splits = _assemble(str(p), images, labels, pool, listing.given_splits, scale=255.0,
                               num_classes=len(listing.classes), seed=seed, val_size=val_size, augment=augment,
                               classes=listing.classes, describe=lambda ix: [files[i] for i in ix])
        except DatasetError as e:
            raise DatasetError(f"{p}: {e}") from None
        splits.split_record.update(record_extra)
        return splits
    if not p.exists():
        raise DatasetError(f"{p}: no such file or folder (a data set is a name, an image folder or an .npz)")
    if p.suffix.lower() != ".npz":
        raise DatasetError(f"{p}: not a folder or an .npz file; a data set path is an image folder "
                           f"(DIR/<class>/*.png) or arrays (x_train, y_train, ... in an .npz)")
    try:
        arrays, scale, num_classes = load_npz(p)
        if size is not None:
            arrays = {s: (resize(p, x, size), y) for s, (x, y) in arrays.items()}
    except ArraysError as e:
        raise DatasetError(str(e)) from None
    images = np.concatenate([arrays[s][0] for s in arrays])
    labels = np.concatenate([arrays[s][1] for s in arrays])
    pool = np.concatenate([np.full(len(arrays[s][1]), s, dtype=object) for s in arrays])
    offsets, start = {}, 0
    for s in arrays:
        offsets[s] = (start, start + len(arrays[s][1]))
        start += len(arrays[s][1])

    def describe(ix):  # global row -> {"x_train": [rows], ...}
        out = {}
        for s, (a, b) in offsets.items():
            rows = [int(i - a) for i in ix if a <= i < b]
            if rows:
                out[f"x_{s}"] = rows
        return out

    try:
        splits = _assemble(str(p), images, labels, pool, [s for s in arrays if s != "train"], scale=scale,
                           num_classes=num_classes, seed=seed, val_size=val_size, augment=augment,
                           classes=[str(i) for i in range(num_classes)], describe=describe)
    except DatasetError as e:
        raise DatasetError(f"{p}: {e}") from None
    splits.split_record["image_size"] = list(images.shape[2:])
    return splits

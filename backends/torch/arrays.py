"""`.npz` arrays as data: x_train / y_train and optionally x_val / y_val, x_test / y_test.

Images may be N x H x W x C (NHWC), N x C x H x W (NCHW) or N x H x W (grayscale); C is 1 or 3. The
layout is read from where a size-1-or-3 axis sits: NCHW when axis 1 is 1 or 3 and the last axis is not,
NHWC when the last axis is 1 or 3 and axis 1 is not; when both are (e.g. 3 x 32 x 3) the file is refused
rather than guessed. uint8 images are divided by 255; float images are taken as they are (standardisation
follows either way), and must be finite. Labels are integers (integer arrays, or floats that are whole
numbers) in 0..K-1, where K - 1 is the largest training label. Every split must have the same channel
count and image size as the training split.

`resize(x, (h, w))` brings the images to another size (`--image-size`) the way image folders are resized:
Pillow's bilinear filter, per image, uint8 images as "L"/"RGB" images (so a folder and an .npz of the same
pictures give the same pixels) and float images channel by channel in Pillow's 32-bit float mode.

The file is read with `allow_pickle=False`: an .npz is a zip of .npy arrays, and an object array inside one
would otherwise be unpickled (and could run code).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")
CHANNEL_COUNTS = (1, 3)
MAX_ARRAY_BYTES = 16 << 30  # an array that would decompress to more is refused before it is read


class ArraysError(ValueError):
    """An .npz that cannot be used as a data set (one line naming the file and the array at fault)."""


def _layout(path: Path, name: str, x: np.ndarray) -> np.ndarray:
    """`x` as N x C x H x W."""
    if x.ndim == 3:
        return x[:, None]
    if x.ndim != 4:
        raise ArraysError(f"{path}: {name} has shape {x.shape}; expected N x H x W x C, N x C x H x W or N x H x W")
    first, last = x.shape[1] in CHANNEL_COUNTS, x.shape[3] in CHANNEL_COUNTS
    if first and not last:
        return x
    if last and not first:
        return x.transpose(0, 3, 1, 2)
    if first and last:
        raise ArraysError(f"{path}: {name} has shape {x.shape}: both axis 1 and axis 3 could be the channels; "
                          f"store it so that only one axis has size 1 or 3")
    raise ArraysError(f"{path}: {name} has shape {x.shape}: no axis of size 1 or 3 for the channels "
                      f"(NHWC or NCHW with 1 or 3 channels)")


def _labels(path: Path, name: str, y: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ArraysError(f"{path}: {name} has shape {y.shape}; labels are one integer per image (N,)")
    if np.issubdtype(y.dtype, np.floating):
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise ArraysError(f"{path}: {name} holds non-integer labels; labels are class indices 0..K-1")
    elif not np.issubdtype(y.dtype, np.integer):
        raise ArraysError(f"{path}: {name} is {y.dtype}; labels are integers 0..K-1")
    if len(y) and y.min() < 0:
        raise ArraysError(f"{path}: {name} has label {int(y.min())}; labels are class indices 0..K-1")
    return y.astype(np.int64)


def _check_sizes(path: Path, archive) -> None:
    """Read each member's .npy header (not its data): a small compressed file can hold a huge array."""
    for name in archive.files:
        try:
            with archive.zip.open(f"{name}.npy") as f:
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, _, dtype = read(f)
        except Exception:  # noqa: BLE001 - unreadable headers are reported when the array is read
            continue
        nbytes = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
        if nbytes > MAX_ARRAY_BYTES:
            raise ArraysError(f"{path}: {name} is {dtype} {shape}, {nbytes / (1 << 30):.1f} GB in memory; "
                              f"the limit is {MAX_ARRAY_BYTES >> 30} GB")


def resize(path, x: np.ndarray, size: tuple) -> np.ndarray:
    """N x C x H x W images resized to `size` (h, w), same dtype; the array is refused before it is made when
    it would pass MAX_ARRAY_BYTES."""
    from PIL import Image

    n, c = x.shape[:2]
    h, w = size
    if (x.shape[2], x.shape[3]) == (h, w):
        return x
    out_dtype = np.uint8 if x.dtype == np.uint8 else np.float32
    nbytes = n * c * h * w * np.dtype(out_dtype).itemsize
    if nbytes > MAX_ARRAY_BYTES:
        raise ArraysError(f"{path}: {n} images of {h}x{w} would take {nbytes / (1 << 30):.1f} GB; "
                          f"the limit is {MAX_ARRAY_BYTES >> 30} GB")
    out = np.empty((n, c, h, w), out_dtype)
    bilinear = Image.Resampling.BILINEAR
    for i in range(n):
        if out_dtype == np.uint8:
            hwc = np.ascontiguousarray(x[i].transpose(1, 2, 0))
            im = Image.fromarray(hwc[..., 0] if c == 1 else hwc, "L" if c == 1 else "RGB")
            r = np.asarray(im.resize((w, h), bilinear))
            out[i] = r[None] if c == 1 else r.transpose(2, 0, 1)
        else:
            for k in range(c):
                im = Image.fromarray(np.ascontiguousarray(x[i, k], dtype=np.float32), "F")
                out[i, k] = np.asarray(im.resize((w, h), bilinear))
    return out


def load_npz(path) -> tuple[dict, float, int]:
    """({split: (images N x C x H x W, labels)} for the splits present, pixel scale, class count)."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise ArraysError(f"{path}: not a regular file")  # a FIFO or device would block or never end
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ArraysError(f"{path}: no such file") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ArraysError(f"{path}: not a readable .npz ({type(exc).__name__}: {exc})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ArraysError(f"{path}: holds a single array; expected an .npz with x_train and y_train")
    with archive:
        _check_sizes(path, archive)
        names = set(archive.files)
        if "x_train" not in names or "y_train" not in names:
            raise ArraysError(f"{path}: has {', '.join(sorted(names)) or 'no arrays'}; expected x_train and y_train "
                              f"(and optionally x_val/y_val, x_test/y_test)")
        out, scale = {}, None
        for split in SPLITS:
            xs, ys = f"x_{split}", f"y_{split}"
            if (xs in names) != (ys in names):
                have, lack = (xs, ys) if xs in names else (ys, xs)
                raise ArraysError(f"{path}: has {have} but not {lack}")
            if xs not in names:
                continue
            try:
                x, y = archive[xs], archive[ys]
            except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
                raise ArraysError(f"{path}: cannot read {xs}/{ys} ({type(exc).__name__}: {exc})") from None
            if len(x) != len(y):
                raise ArraysError(f"{path}: {xs} has {len(x)} images but {ys} has {len(y)} labels")
            if x.dtype == np.uint8:
                this = 255.0
            elif np.issubdtype(x.dtype, np.floating):
                this = 1.0
                if not np.all(np.isfinite(x)):
                    raise ArraysError(f"{path}: {xs} has NaN or infinite pixels")
            else:
                raise ArraysError(f"{path}: {xs} is {x.dtype}; images must be uint8 (0..255) or float")
            if scale is not None and this != scale:
                raise ArraysError(f"{path}: {xs} is {x.dtype} but x_train is not; give every split the same dtype")
            scale = this
            out[split] = (_layout(path, xs, x), _labels(path, ys, y))
    train = out["train"][0]
    if len(train) == 0:
        raise ArraysError(f"{path}: x_train has no images")
    for split, (x, _) in out.items():
        if x.shape[1] != train.shape[1]:
            raise ArraysError(f"{path}: mixed channel counts: x_{split} has {x.shape[1]} channel(s), "
                              f"x_train has {train.shape[1]}")
        if x.shape[2:] != train.shape[2:]:
            raise ArraysError(f"{path}: x_{split} images are {x.shape[2]}x{x.shape[3]}, "
                              f"x_train images are {train.shape[2]}x{train.shape[3]}")
    num_classes = int(out["train"][1].max()) + 1
    for split, (_, y) in out.items():
        if len(y) and y.max() >= num_classes:
            raise ArraysError(f"{path}: y_{split} has label {int(y.max())}, out of range: y_train has classes "
                              f"0..{num_classes - 1}")
    if num_classes < 2:
        raise ArraysError(f"{path}: y_train has only class 0; a classifier needs at least 2 classes")
    return out, scale, num_classes

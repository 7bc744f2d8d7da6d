"""Image folders as data: find the images, decode them in parallel once, cache the uint8 array.

Layouts (torchvision's ImageFolder, and its split variant):

    DIR/<class>/**/*.{png,jpg,jpeg,bmp,webp}                  one pool; easc makes the split
    DIR/train/<class>/... + DIR/test/<class>/... [+ DIR/val/<class>/...]   the split is given

Classes are the sorted class-folder names (the union over the split folders). Files are taken in sorted
order, class by class, so a folder always yields the same array. Other files are ignored; a class folder
without any image is an error, as is a folder without class folders.

Decoding (Pillow): every image becomes either 1-channel grayscale or 3-channel RGB. When every image is
grayscale ("1", "L", "LA", "I", "I;16", "F") the set stays grayscale, otherwise every image is converted to
RGB (grayscale ones by replicating the channel, as Pillow's convert does), so the channel count is the same
for all. Images are resized (bilinear) to `image_size` (H, W); the default is the size most images have,
so a folder of equal-sized images is never resampled.

Parallelism: the files are cut into chunks decoded by a process pool with one worker per available core,
each chunk returning its arrays in one piece. With an `image_size` every worker resizes as it decodes
(JPEGs are decoded at a reduced scale first, Pillow's `draft`). Without one, workers return images at
their own size (small ones) or just their size (large ones); the parent picks the most common size and
sends only the images of other sizes through a second parallel pass. Unreadable or truncated files are
named in the error; with `skip_bad=True` they are left out and listed in the result instead.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import datacache

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
SPLIT_FOLDERS = ("train", "val", "test")
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
CHUNK = 256  # files per task: large enough that a task's overhead (a pickle, a pipe round trip) is noise
PARALLEL_MIN_FILES = 512  # below this a process pool costs more than it saves
KEEP_NATIVE_PIXELS = 256 * 256  # without a target size, a worker returns images up to this area as decoded


class ImageFolderError(ValueError):
    """A folder that cannot be loaded as a data set (one line naming the folder or file)."""


@dataclass
class Listing:
    """What a folder holds: per file its path relative to the root, its class and split, size and mtime."""

    root: Path
    classes: list
    files: list  # relative paths (str, '/' separated)
    labels: np.ndarray
    splits: list  # per file: "train" | "val" | "test" ("train" for a layout without split folders)
    given_splits: tuple  # the split folders present, () for the plain ImageFolder layout
    stats: list  # per file: (size, mtime_ns)

    def key_rows(self):
        return [(f, s, m) for f, (s, m) in zip(self.files, self.stats)]


@dataclass
class DecodedFolder:
    listing: Listing
    images: np.ndarray  # uint8, N x H x W x C, only the kept files
    kept: np.ndarray  # indices into listing.files of the rows of `images`
    skipped: list = field(default_factory=list)  # [(relative path, reason)]
    from_cache: bool = False


def _images_under(folder: Path, rel: str) -> list:
    """[(path relative to the root, size, mtime_ns)] of the images under `folder` (recursively, sorted).

    os.scandir rather than pathlib: its entries carry the type, and the one stat per file is what the
    cache key needs anyway; on 20,000 files this is several times faster than Path.glob + Path.stat.
    """
    out = []
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        raise ImageFolderError(f"{folder}: cannot list ({e.strerror})") from None
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir(follow_symlinks=False):
            out.extend(_images_under(Path(entry.path), f"{rel}{entry.name}/"))
        elif entry.name.lower().endswith(IMAGE_EXTENSIONS) and entry.is_file():
            st = entry.stat()
            out.append((f"{rel}{entry.name}", st.st_size, st.st_mtime_ns))
    return out


def _class_folders(folder: Path) -> list:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def scan(root) -> Listing:
    """List an image folder (see the module doc for the layouts); raises ImageFolderError on a bad layout."""
    root = Path(root)
    if not root.is_dir():
        raise ImageFolderError(f"{root}: not a folder")
    top = _class_folders(root)
    given = tuple(s for s in SPLIT_FOLDERS if s in top)
    if "train" in given and "test" in given:
        parts = [(s, root / s) for s in given]
    else:
        given = ()
        parts = [("train", root)]
    per_split = {}
    for split, folder in parts:
        classes = _class_folders(folder)
        prefix = f"{split}/" if given else ""
        where = f"{root}/{split}" if given else str(root)
        if not classes:
            loose = _images_under(folder, prefix)
            what = f"images but no class folders (put them in {where}/<class>/)" if loose else "no class folders"
            raise ImageFolderError(f"{where}: {what}; expected {where}/<class>/*"
                                   f"{{{','.join(IMAGE_EXTENSIONS)}}}")
        per_split[split] = {c: _images_under(folder / c, f"{prefix}{c}/") for c in classes}
        for c, files in per_split[split].items():
            if not files:
                raise ImageFolderError(f"{where}/{c}: class {c!r} has no images "
                                       f"({', '.join(IMAGE_EXTENSIONS)}); remove the folder or add images")
    classes = sorted({c for table in per_split.values() for c in table})
    index = {c: i for i, c in enumerate(classes)}
    files, labels, splits, stats = [], [], [], []
    for split, table in per_split.items():
        for c in sorted(table):
            for rel, size, mtime in table[c]:
                files.append(rel)
                labels.append(index[c])
                splits.append(split)
                stats.append((size, mtime))
    if "train" in per_split:
        missing = [c for c in classes if c not in per_split["train"]]
        if missing:
            raise ImageFolderError(f"{root}/train: class {missing[0]!r} has no training images "
                                   f"(it appears only in {', '.join(s for s in per_split if missing[0] in per_split[s])})")
    return Listing(root, classes, files, np.asarray(labels, np.int64), splits, given, stats)


# --------------------------------------------------------------------------------------------------------
# Decoding (runs in worker processes: module-level functions, no state)


def _decode_one(path: str, size, gray: bool | None):
    """(array or None, (h, w), is_gray) for one file; raises OSError/ValueError when it cannot be decoded.

    `size` (h, w) resizes; None keeps the image's own size. `gray` None: each image keeps its own kind
    (grayscale as 'L', anything else as 'RGB'); True/False force one.
    """
    from PIL import Image

    with Image.open(path) as im:
        own = (im.height, im.width)
        is_gray = im.mode in GRAY_MODES
        mode = ("L" if is_gray else "RGB") if gray is None else ("L" if gray else "RGB")
        if size is None and own[0] * own[1] > KEEP_NATIVE_PIXELS:
            im.load()  # decode anyway: a truncated file must fail here, not later
            return None, own, is_gray
        if size is not None and im.format == "JPEG" and (own[0] > 2 * size[0] or own[1] > 2 * size[1]):
            im.draft(mode, (size[1], size[0]))  # decode at 1/2, 1/4, 1/8 scale: much less work
        if im.mode != mode:  # convert copies even when the mode already matches; most files need nothing
            im = im.convert(mode)
        else:
            im.load()
        if size is not None and (im.height, im.width) != tuple(size):
            im = im.resize((size[1], size[0]), Image.BILINEAR)
        return np.asarray(im, dtype=np.uint8), own, is_gray


def _decode_chunk(args):
    paths, size, gray = args
    out = []
    for p in paths:
        try:
            out.append(_decode_one(p, size, gray))
        except Exception as exc:  # noqa: BLE001 - any decoder failure is "this file is bad"
            out.append(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip())
    return out


def _workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _pool(n_workers: int) -> ProcessPoolExecutor:
    import multiprocessing as mp

    # fork: workers start in milliseconds and need nothing from the parent but this module's functions; they
    # touch no torch or thread state, only Pillow and numpy.
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
    return ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx)


def _run(paths: list, size, gray, progress_label: str | None, workers: int | None) -> list:
    """Decode `paths` (absolute, str) in chunks, in parallel when it pays; results in file order."""
    n_workers = workers or _workers()
    chunks = [(paths[i:i + CHUNK], size, gray) for i in range(0, len(paths), CHUNK)]
    results: list = [None] * len(chunks)
    if n_workers <= 1 or len(paths) < PARALLEL_MIN_FILES:
        bar = _Bar(progress_label, len(paths))
        try:
            for i, c in enumerate(chunks):
                results[i] = _decode_chunk(c)
                bar.advance(len(c[0]))
        finally:
            bar.close()
    else:
        # The pool forks its workers as tasks arrive; the bar's refresh thread must not exist yet then (a
        # thread holding a lock at fork time leaves that lock held for ever in the child).
        with _pool(n_workers) as pool:
            futures = {pool.submit(_decode_chunk, c): i for i, c in enumerate(chunks)}
            bar = _Bar(progress_label, len(paths))
            try:
                for fut in as_completed(futures):
                    i = futures[fut]
                    results[i] = fut.result()
                    bar.advance(len(chunks[i][0]))
            finally:
                bar.close()
    return [r for chunk in results for r in chunk]


class _Bar:
    """A rich progress bar on stderr while decoding, only when stderr is a terminal."""

    def __init__(self, label: str | None, total: int):
        self.progress = None
        if label and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), console=Console(stderr=True), transient=True)
            self.progress.start()
            self.task = self.progress.add_task(label, total=total)

    def advance(self, n: int):
        if self.progress is not None:
            self.progress.advance(self.task, n)

    def close(self):
        if self.progress is not None:
            self.progress.stop()


def _bad(listing: Listing, i: int, reason: str, skip_bad: bool) -> None:
    if not skip_bad:
        raise ImageFolderError(f"{listing.root / listing.files[i]}: cannot decode ({reason}); fix or remove the "
                               f"file, or pass --skip-bad-images to leave bad images out")


def decode(listing: Listing, image_size=None, *, skip_bad: bool = False, progress: bool = True,
           workers: int | None = None) -> DecodedFolder:
    """Decode every file of `listing` into one uint8 N x H x W x C array (no cache; see `load_folder`)."""
    paths = [str(listing.root / f) for f in listing.files]
    label = f"decoding {len(paths)} images" if progress else None
    size = None if image_size is None else tuple(image_size)
    results = _run(paths, size, None, label, workers)
    skipped, good = [], []
    for i, r in enumerate(results):
        if isinstance(r, str):
            _bad(listing, i, r, skip_bad)
            skipped.append((listing.files[i], r))
        else:
            good.append(i)
    if not good:
        raise ImageFolderError(f"{listing.root}: none of the {len(paths)} images could be decoded "
                               f"(first: {listing.files[0]}: {skipped[0][1]})")
    gray = all(results[i][2] for i in good)
    if size is None:
        size = Counter(results[i][1] for i in good).most_common(1)[0][0]
    # Second pass for what the first could not produce at `size`: other sizes, or large images it did not keep.
    redo = [i for i in good if results[i][0] is None or results[i][0].shape[:2] != tuple(size)]
    if redo:
        again = _run([paths[i] for i in redo], size, gray, f"resizing {len(redo)} images" if progress else None,
                     workers)
        for i, r in zip(redo, again):
            if isinstance(r, str):  # only possible if the file changed under us
                _bad(listing, i, r, skip_bad)
                skipped.append((listing.files[i], r))
            else:
                results[i] = r
        good = [i for i in good if not isinstance(results[i], str)]
    channels = 1 if gray else 3
    images = np.empty((len(good), size[0], size[1], channels), np.uint8)
    for row, i in enumerate(good):
        a = results[i][0]
        if a.ndim == 2:
            a = a[:, :, None]  # grayscale; broadcast to 3 channels below when the set is RGB
        images[row] = a
    skipped.sort(key=lambda s: listing.files.index(s[0]))
    return DecodedFolder(listing, images, np.asarray(good, np.int64), skipped)


def load_folder(root, image_size=None, *, skip_bad: bool = False, progress: bool = True, use_cache: bool = True,
                workers: int | None = None) -> DecodedFolder:
    """`scan` + `decode`, through the cache (see `datacache`): a folder state is decoded once."""
    listing = scan(root)
    options = {"image_size": None if image_size is None else list(image_size), "skip_bad": bool(skip_bad)}
    key = datacache.listing_key(options, listing.key_rows())
    if use_cache:
        hit = datacache.read_entry(key)
        if hit is not None:
            images, meta = hit
            kept = np.asarray(meta["kept"], np.int64)
            if len(kept) == len(images) and (len(kept) == 0 or kept.max() < len(listing.files)):
                return DecodedFolder(listing, images, kept, [tuple(s) for s in meta["skipped"]], from_cache=True)
    decoded = decode(listing, image_size, skip_bad=skip_bad, progress=progress, workers=workers)
    if use_cache:
        try:
            datacache.write_entry(key, decoded.images, {"kept": decoded.kept.tolist(),
                                                        "skipped": [list(s) for s in decoded.skipped],
                                                        "root": str(listing.root)})
        except OSError:
            pass  # a read-only or full cache folder costs a re-decode next time, nothing else
    return decoded

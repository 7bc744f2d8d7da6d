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

Parallelism: the files are cut into chunks decoded by a process pool with one worker per available core.
The workers write each image into its row of one .npy array opened as a shared memory map (the new cache
entry's array, or a temporary one), so no pixel goes through a pipe and nothing is stacked or copied
afterwards; the parent only collects sizes and kinds. The array is shaped by the first image (or
`image_size`). With an `image_size` every worker resizes as it decodes (JPEGs are decoded at a reduced
scale first, Pillow's `draft`). Without one, images of another size are only checked, and the parent sends
them through a second parallel pass at the most common size; if the first image itself was the odd one
out, or grayscale in a set with colour images, everything is decoded again into an array of the right shape.
Unreadable or truncated files are named in the error; with `skip_bad=True` they are left out and listed in the
result instead. A set whose decoded array would pass MAX_DECODED_BYTES is refused with a hint to resize.
"""

from __future__ import annotations

import os
import stat
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
MAX_DECODED_BYTES = 16 << 30  # a decoded set larger than this is refused with a hint to pass --image-size
GUESSED = "images-guess.npy"  # the first pass's array, shaped by the first image
PARALLEL_MIN_FILES = 512  # below this a process pool costs more than it saves


class ImageFolderError(ValueError):
    """A folder that cannot be loaded as a data set (one line naming the folder or file)."""


@dataclass
class Listing:
    root: Path
    classes: list
    files: list  # relative paths (str, '/' separated)
    labels: np.ndarray
    splits: list  # per file: "train" | "val" | "test" ("train" for a layout without split folders)
    given_splits: tuple  # the split folders present, () for the plain ImageFolder layout
    sizes: np.ndarray  # int64 per file: size in bytes
    mtimes: np.ndarray  # int64 per file: modification time in ns


@dataclass
class DecodedFolder:
    listing: Listing
    images: np.ndarray  # uint8, N x H x W x C, only the kept files
    kept: np.ndarray  # indices into listing.files of the rows of `images`
    skipped: list = field(default_factory=list)  # [(relative path, reason)]
    from_cache: bool = False


class _Found:
    """What a walk found: parallel lists, so that 20,000 files cost three appends each and no tuples."""

    def __init__(self):
        self.files, self.sizes, self.mtimes = [], [], []

    def __len__(self):
        return len(self.files)


def _images_under(folder: Path, rel: str, found: _Found | None = None) -> _Found:
    """The images under `folder` (recursively, sorted by name), with their sizes and mtimes, added to `found`.

    The cache key needs one stat per file, and on a cached load those stats are most of the work, so the
    walk is written for them: the folder is opened once and every entry is stat'ed relative to it
    (fstatat: no path resolution from the root per file), and the entries' types come from the directory
    itself (scandir's d_type), so only images and folders cost a system call.
    """
    found = _Found() if found is None else found
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise ImageFolderError(f"{folder}: cannot list ({e.strerror})") from None
    try:
        with os.scandir(fd) as it:
            entries = sorted((e.name, e.is_dir(follow_symlinks=False)) for e in it if not e.name.startswith("."))
        files, sizes, mtimes = found.files, found.sizes, found.mtimes
        for name, is_dir in entries:
            if is_dir:
                _images_under(folder / name, f"{rel}{name}/", found)
            elif name.lower().endswith(IMAGE_EXTENSIONS):
                try:
                    st = os.stat(name, dir_fd=fd)
                except OSError:  # a dangling link or a file removed while listing: not an image
                    continue
                if stat.S_ISREG(st.st_mode):
                    files.append(rel + name)
                    sizes.append(st.st_size)
                    mtimes.append(st.st_mtime_ns)
    except OSError as e:
        raise ImageFolderError(f"{folder}: cannot list ({e.strerror})") from None
    finally:
        os.close(fd)
    return found


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
        for c, found in per_split[split].items():
            if not found:
                raise ImageFolderError(f"{where}/{c}: class {c!r} has no images "
                                       f"({', '.join(IMAGE_EXTENSIONS)}); remove the folder or add images")
    classes = sorted({c for table in per_split.values() for c in table})
    index = {c: i for i, c in enumerate(classes)}
    files, labels, splits, sizes, mtimes = [], [], [], [], []
    for split, table in per_split.items():
        for c in sorted(table):
            found = table[c]
            files += found.files
            sizes += found.sizes
            mtimes += found.mtimes
            labels += [index[c]] * len(found)
            splits += [split] * len(found)
    if "train" in per_split:
        missing = [c for c in classes if c not in per_split["train"]]
        if missing:
            where = ", ".join(s for s in per_split if missing[0] in per_split[s])
            raise ImageFolderError(f"{root}/train: class {missing[0]!r} has no training images "
                                   f"(it appears only in {where})")
    return Listing(root, classes, files, np.asarray(labels, np.int64), splits, given,
                   np.asarray(sizes, np.int64), np.asarray(mtimes, np.int64))


# --------------------------------------------------------------------------------------------------------
# Decoding (runs in worker processes: module-level functions, no state)


def _decode_one(path: str, size, gray: bool | None, expect=None):
    """(array or None, (h, w), is_gray) for one file; raises OSError/ValueError when it cannot be decoded.

    `size` (h, w) resizes; None keeps the image's own size. `gray` None: each image keeps its own kind
    (grayscale as 'L', anything else as 'RGB'); True/False force one. `expect` (h, w, channels): without a
    `size`, an image of another size or kind is decoded (a truncated file must fail here) but not returned.
    """
    from PIL import Image

    with Image.open(path) as im:
        own = (im.height, im.width)
        is_gray = im.mode in GRAY_MODES
        mode = ("L" if is_gray else "RGB") if gray is None else ("L" if gray else "RGB")
        if size is None and expect is not None and (own != tuple(expect[:2]) or (mode == "L") != (expect[2] == 1)):
            im.load()
            return None, own, is_gray
        if size is not None and im.format == "JPEG" and (own[0] > 2 * size[0] or own[1] > 2 * size[1]):
            im.draft(mode, (size[1], size[0]))  # decode at 1/2, 1/4, 1/8 scale: much less work
        if im.mode != mode:  # convert copies even when the mode already matches; most files need nothing
            im = im.convert(mode)
        else:
            im.load()
        if size is not None and (im.height, im.width) != tuple(size):
            im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        return np.asarray(im, dtype=np.uint8), own, is_gray


def _decode_chunk(args):
    """Decode files into rows of the array stored at `out_path` (an .npy opened as a shared memory map).

    Returns per file (written, (h, w), is_gray) or an error string. Rows are written in place, so no pixel
    travels back through the pool's pipe: the parent only learns sizes and kinds.
    """
    paths, rows, out_path, size, gray = args
    out = np.load(out_path, mmap_mode="r+")
    expect = out.shape[1:]
    results = []
    for p, row in zip(paths, rows):
        try:
            a, own, is_gray = _decode_one(p, size, gray, expect)
            if a is not None:
                out[row] = a[:, :, None] if a.ndim == 2 else a
            results.append((a is not None, own, is_gray))
        except Exception as exc:  # noqa: BLE001 - any decoder failure is "this file is bad"
            results.append(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip())
    # No flush: msync would write the pages to disk now, on every chunk; the shared mapping already makes them
    # visible to the parent (one page cache), and the kernel writes them back in its own time.
    del out
    return results


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


def _run(paths: list, rows: list, out_path: str, size, gray, progress_label: str | None,
         workers: int | None) -> list:
    """Decode `paths` (absolute, str) into `rows` of the array at `out_path`, in parallel when it pays."""
    n_workers = workers or _workers()
    chunks = [(paths[i:i + CHUNK], rows[i:i + CHUNK], out_path, size, gray) for i in range(0, len(paths), CHUNK)]
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


def _first_header(paths: list):
    """(h, w, is_gray) of the first file whose header reads: the guess the output array is shaped by."""
    from PIL import Image

    for p in paths[:16]:
        try:
            with Image.open(p) as im:
                return im.height, im.width, im.mode in GRAY_MODES
        except Exception:  # noqa: BLE001 - a bad file is reported by the decoding pass
            continue
    return None


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


def _new_array(folder: Path, name: str, shape) -> str:
    path = folder / name
    np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=tuple(shape))  # header + sized file
    return str(path)


def _check_bytes(listing: Listing, n: int, shape) -> None:
    total = n * int(np.prod(shape))
    if total > MAX_DECODED_BYTES:
        raise ImageFolderError(f"{listing.root}: {n} images of {shape[0]}x{shape[1]} would take "
                               f"{total / (1 << 30):.1f} GB decoded; pass --image-size (e.g. 64 or 224) to "
                               f"resize them as they are decoded")


def _decode_to(folder: Path, listing: Listing, image_size, skip_bad: bool, progress: bool, workers):
    """Decode into an .npy in `folder`: (path of the array, kept indices, skipped [(file, reason)]).

    The array is shaped by a guess, the first image's size and kind (or `image_size`), and the workers write
    the images that fit it in place. Then: images of another size (no `image_size`) are resized to the most
    common size in a second pass; when the guess itself was wrong (the first image had an unusual size, or
    was grayscale in a set with colour images) everything is decoded again into an array of the right shape.
    """
    base = f"{listing.root}{os.sep}"  # plain strings: 20,000 Path objects cost a noticeable share of a load
    paths = [base + f for f in listing.files]
    n = len(paths)
    head = _first_header(paths)
    size = None if image_size is None else tuple(image_size)
    guess_gray = bool(head and head[2])
    shape = (*(size or (head[:2] if head else (1, 1))), 1 if guess_gray else 3)
    if size is not None:
        _check_bytes(listing, n, shape)
    elif n * int(np.prod(shape)) > MAX_DECODED_BYTES:
        shape = (1, 1, shape[2])  # an unusually large first image: let the second pass size the array
    # A colour first image settles the kind (any colour image makes the set RGB): convert every image to RGB.
    gray_arg = None if guess_gray else False
    out = _new_array(folder, GUESSED, (n, *shape))
    results = _run(paths, list(range(n)), out, size, gray_arg, f"decoding {n} images" if progress else None,
                   workers)
    skipped = []
    for i, r in enumerate(results):
        if isinstance(r, str):
            _bad(listing, i, r, skip_bad)
            skipped.append((listing.files[i], r))
    good = [i for i, r in enumerate(results) if not isinstance(r, str)]
    if not good:
        raise ImageFolderError(f"{listing.root}: none of the {n} images could be decoded "
                               f"(first: {listing.files[0]}: {skipped[0][1]})")
    gray = all(results[i][2] for i in good)
    final = size or Counter(results[i][1] for i in good).most_common(1)[0][0]
    _check_bytes(listing, n, (*final, 1 if gray else 3))
    if gray != guess_gray or tuple(final) != shape[:2]:
        redo, gray_arg = good, gray
        os.remove(out)  # the guess was wrong: its array is of no use
        out = _new_array(folder, "images-again.npy", (n, *final, 1 if gray else 3))
    else:
        redo = [i for i in good if not results[i][0]]
    if redo:
        label = f"resizing {len(redo)} images" if progress else None
        again = _run([paths[i] for i in redo], redo, out, tuple(final), gray_arg, label, workers)
        for i, r in zip(redo, again):
            if isinstance(r, str):  # only if the file changed between the passes
                _bad(listing, i, r, skip_bad)
                skipped.append((listing.files[i], r))
                good.remove(i)
    order = {f: k for k, f in enumerate(listing.files)}
    skipped.sort(key=lambda s: order[s[0]])
    return out, np.asarray(good, np.int64), skipped


def _compact(path: str, kept: np.ndarray) -> np.ndarray:
    images = np.load(path, mmap_mode="r")
    return np.ascontiguousarray(images) if len(kept) == len(images) else np.ascontiguousarray(images[kept])


def decode(listing: Listing, image_size=None, *, skip_bad: bool = False, progress: bool = True,
           workers: int | None = None) -> DecodedFolder:
    """Decode every file of `listing` into one uint8 N x H x W x C array in memory (no cache)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="easc-decode-") as tmp:
        path, kept, skipped = _decode_to(Path(tmp), listing, image_size, skip_bad, progress, workers)
        return DecodedFolder(listing, _compact(path, kept), kept, skipped)


def load_folder(root, image_size=None, *, skip_bad: bool = False, progress: bool = True, use_cache: bool = True,
                workers: int | None = None) -> DecodedFolder:
    """`scan` + decode, through the cache (see `datacache`): a folder state is decoded once.

    On a miss the workers decode straight into the new cache entry's array, which is then checksummed and
    renamed into place; the returned images are that entry, mapped read-only.
    """
    listing = scan(root)
    if not use_cache:
        return decode(listing, image_size, skip_bad=skip_bad, progress=progress, workers=workers)
    options = {"image_size": None if image_size is None else list(image_size), "skip_bad": bool(skip_bad)}
    key = datacache.listing_key(options, listing.files, listing.sizes, listing.mtimes)
    hit = datacache.read_entry(key)
    if hit is not None:
        images, meta = hit
        try:  # the checksum covers the pixels; what meta.json says is checked here
            # null: every file was kept (20,000 indices in JSON would cost more to parse than the rest of meta)
            kept = np.arange(len(images)) if meta["kept"] is None else np.asarray(meta["kept"], np.int64).reshape(-1)
            skipped = [(str(f), str(why)) for f, why in meta["skipped"]]
            valid = len(kept) == len(images) and (
                len(kept) == 0 or (kept.min() >= 0 and kept.max() < len(listing.files)))
        except (KeyError, TypeError, ValueError):
            valid = False
        if valid:
            return DecodedFolder(listing, images, kept, skipped, from_cache=True)
    try:
        tmp = datacache.new_entry_dir()
    except OSError:  # a read-only or full cache folder costs a decode per load, nothing else
        return decode(listing, image_size, skip_bad=skip_bad, progress=progress, workers=workers)
    try:
        path, kept, skipped = _decode_to(tmp, listing, image_size, skip_bad, progress, workers)
    except BaseException:
        datacache.discard(tmp)
        raise
    meta = {"root": str(listing.root), "kept": None if len(kept) == len(listing.files) else kept.tolist(),
            "skipped": [list(s) for s in skipped]}
    images = None
    try:
        if len(kept) == len(listing.files) and Path(path).name == GUESSED:
            # The common case: the workers' array is the entry's array; no copy at all.
            images = np.load(path, mmap_mode="r")
            os.replace(path, tmp / "images.npy")
            entry = datacache.commit_entry(key, tmp, images, meta)
        else:  # rows were dropped or the array was made twice: store the compact one
            images = _compact(path, kept)
            datacache.discard(tmp)
            entry = datacache.write_entry(key, images, meta)
        images = np.load(entry / "images.npy", mmap_mode="r")
    except OSError:  # the entry could not be stored: keep what was decoded (in memory)
        images = np.array(images) if images is not None else _compact(path, kept)
        datacache.discard(tmp)
    return DecodedFolder(listing, images, kept, skipped)

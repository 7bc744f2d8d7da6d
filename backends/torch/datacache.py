"""The decoded-image cache: uint8 arrays stored once per folder state, found again by a hash, checked on read.

Decoding a folder of images is the slow part of loading it; a search loads its data set once in the driver
and again in every worker process, and users run many searches on one folder. So the decoded array is kept in
`cache_dir()/images/<key>/` where

    key = sha256(format version, loader options, sorted [(relative path, size in bytes, mtime in ns)])

is computed from the folder's listing alone (one stat per file, no decoding). Any change to a file (its
size or mtime), an added or removed file, or different options (image size, colour mode) gives another key.
The folder and file names enter only through the hash: a name can never steer where the entry is written.

An entry is a folder holding `images.npy` (uint8, N x H x W x C, no pickles) and `meta.json` (the key again,
the shape, a CRC-32 of the array bytes, the identity of `images.npy` when it was checksummed, and what the
loader recorded). Reading checks all of it; an entry that is missing a file, does not parse, has another key,
shape or checksum is removed and rebuilt, never trusted.

The checksum is recomputed only when `images.npy` is no longer the file that was checksummed: its identity is
(inode, size, mtime, ctime), and any write to the file or any replacement of it changes the ctime, which no
user-level call can set back. So a cached load does not read the pixels at all (they are mapped, and paged in
when the caller uses them), while a truncated, edited or replaced array is still caught by its checksum. The
checksum never guarded against someone who can write the cache folder (they could rewrite meta.json too); it
guards against damage, and damage is a write. An entry copied elsewhere (a restored backup) passes through
the full check once and has its identity recorded again.
Entries are written to a temporary folder and renamed into place, so a crash or a concurrent writer leaves
either no entry or a whole one.

Where: `$EASC_CACHE_DIR` if set (tests point it at a temporary folder), else `$XDG_CACHE_HOME/easc`, else
`~/.cache/easc`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
import zlib
from pathlib import Path

import numpy as np

from easc.ir.serialize import atomic_write_bytes

CACHE_ENV = "EASC_CACHE_DIR"
FORMAT_VERSION = 1
_CRC_CHUNK = 1 << 24  # bytes per zlib.crc32 call (it takes any buffer; chunks keep memoryviews small)


def cache_dir() -> Path:
    """The root of easc's caches (see the module doc for the order of precedence)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "easc"


def listing_key(options: dict, files: list, sizes, mtimes) -> str:
    """The hex key of a folder state: relative paths, and per file its size and mtime (ns); `options` JSON-able."""
    h = hashlib.sha256()
    h.update(json.dumps({"version": FORMAT_VERSION, "options": options}, sort_keys=True).encode())
    # NUL never occurs in a path, so the names cannot run into each other; sizes and mtimes go in as int64
    # arrays (one hash update each for 20,000 files instead of 20,000).
    h.update(len(files).to_bytes(8, "little"))
    h.update("\0".join(files).encode("utf-8", "surrogateescape"))
    h.update(np.ascontiguousarray(sizes, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(mtimes, dtype=np.int64).tobytes())
    return h.hexdigest()


def checksum(array: np.ndarray) -> int:
    view = memoryview(np.ascontiguousarray(array)).cast("B")
    crc = 0
    for start in range(0, len(view), _CRC_CHUNK):
        crc = zlib.crc32(view[start:start + _CRC_CHUNK], crc)
    return crc


def file_identity(path: Path) -> list:
    """[inode, size, mtime_ns, ctime_ns] of `path`: changes whenever the file is written or replaced."""
    st = os.stat(path)
    return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def entry_path(key: str, root: Path | None = None) -> Path:
    if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
        raise ValueError(f"cache key must be 64 hex digits, got {key!r}")
    return (root or cache_dir()) / "images" / key


def read_entry(key: str, root: Path | None = None) -> tuple[np.ndarray, dict] | None:
    """(images, meta) of a valid entry, None when there is none; a corrupt entry is deleted (returns None)."""
    path = entry_path(key, root)
    if not path.exists():
        return None
    try:
        meta = json.loads((path / "meta.json").read_text())
        if not isinstance(meta, dict) or meta.get("key") != key or meta.get("version") != FORMAT_VERSION:
            raise ValueError("meta.json does not describe this entry")
        # Mapped, not read: the caller copies what it needs (as float32 splits), so a full copy here would
        # only cost time; the pixels are read here only when the checksum has to be recomputed.
        images = np.load(path / "images.npy", allow_pickle=False, mmap_mode="r")
        if images.dtype != np.uint8 or list(images.shape) != meta.get("shape"):
            raise ValueError(f"images.npy is {images.dtype} {images.shape}, meta says uint8 {meta.get('shape')}")
        identity = file_identity(path / "images.npy")
        if identity != meta.get("file"):  # written or replaced since it was checksummed: check every byte
            if checksum(images) != meta.get("crc32"):
                raise ValueError("images.npy does not match its checksum")
            meta["file"] = identity
            try:
                atomic_write_bytes(path / "meta.json", json.dumps(meta).encode())
            except OSError:  # a read-only cache: the entry is still good, the next read checks it again
                pass
    except (OSError, ValueError, KeyError, TypeError, EOFError):
        # A truncated or edited entry: not trusted. Removing it lets the caller rebuild it in its place.
        shutil.rmtree(path, ignore_errors=True)
        return None
    return images, meta


def new_entry_dir(root: Path | None = None) -> Path:
    """A fresh temporary folder beside the entries, to build one in (see `commit_entry`)."""
    parent = (root or cache_dir()) / "images"
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    return tmp


def discard(tmp: Path) -> None:
    shutil.rmtree(tmp, ignore_errors=True)


def commit_entry(key: str, tmp: Path, images: np.ndarray, meta: dict, root: Path | None = None) -> Path:
    """Finish an entry built in `tmp` (its `images.npy` already written; `images` is that array): write
    meta.json with the checksum, and rename the folder into place. Returns the entry's folder."""
    path = entry_path(key, root)
    try:
        full = {**meta, "key": key, "version": FORMAT_VERSION, "shape": list(images.shape),
                "crc32": checksum(images), "file": file_identity(tmp / "images.npy")}
        (tmp / "meta.json").write_text(json.dumps(full))
        if path.exists():  # a corrupt entry left behind, or another process won the race: replace it
            shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    except OSError:
        discard(tmp)
        if not path.exists():
            raise
    return path


def write_entry(key: str, images: np.ndarray, meta: dict, root: Path | None = None) -> Path:
    """Store `images` (uint8) with `meta` under `key`, atomically; returns the entry's folder."""
    tmp = new_entry_dir(root)
    try:
        np.save(tmp / "images.npy", np.ascontiguousarray(images), allow_pickle=False)
    except OSError:
        discard(tmp)
        raise
    return commit_entry(key, tmp, images, meta, root)

"""Users' data sets: image folders and .npz arrays loaded, split, cached and refused the way the issue says.

Folders and arrays are written here with Pillow and numpy. The cache is pointed at a temporary folder
(EASC_CACHE_DIR) by an autouse fixture, so no test writes to the real home.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from easc.backends.torch import datacache, imagefolder
from easc.backends.torch.data import DatasetError, load_dataset
from easc.cli.main import main


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EASC_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def easc(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def digits_arrays():
    from sklearn.datasets import load_digits

    d = load_digits()
    # 0..16 -> 0..240: a linear map, so after per-channel standardisation the pixels equal the digits set's.
    return (d.images * 15).astype(np.uint8), d.target.astype(np.int64)


def write_folder(root: Path, images, labels, split: str | None = None, names=None) -> None:
    for i, (img, y) in enumerate(zip(images, labels)):
        folder = root / (split or "") / f"c{int(y)}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(img)).save(folder / (names[i] if names else f"{i:05d}.png"))


def small_folder(root: Path, n_per_class=6, classes=3, size=(6, 5), mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    shape = (size[0], size[1], 3) if mode == "RGB" else size
    for c in range(classes):
        (root / f"class_{c}").mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            img = rng.integers(0, 256, shape, dtype=np.uint8)
            Image.fromarray(img, mode).save(root / f"class_{c}" / f"{i:03d}.png")
    return root


# ------------------------------------------------------------------------------------------ the figure


def _digits_model(path: Path) -> Path:
    from easc.ir import save_graph
    from easc.search.start_nets import digits_small

    save_graph(digits_small((1, 8, 8), 10, seed=0), path)
    return path


def _test_acc(model, dataset, *extra):
    # Full-batch training (--batch-size above the training set): each step's gradient is a sum over all
    # training images, so the order in which a loader lists them (a folder lists class by class) does not
    # matter, and the three sources must reach the same accuracy up to float rounding.
    result = easc("train", model, "--dataset", dataset, "--epochs", 60, "--batch-size", 4096, "--lr", 0.5,
                  "--seed", 3, "--quiet", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.output.strip().splitlines()[-1])["test_acc"]


def test_easc_train_on_digits_as_png_folder_and_npz_matches_the_named_digits_set_within_one_point(tmp_path):
    from easc.backends.torch.data import OWN_SPLIT_FRACTION, TEST_SPLIT_SEED, _split_indices

    images, labels = digits_arrays()
    # The digits set's own split (seed 3): written out as train/val/test folders, so "the same split".
    n = len(labels)
    rest, test = _split_indices(labels, int(round(n * OWN_SPLIT_FRACTION)), TEST_SPLIT_SEED, stratify=True)
    kept, held = _split_indices(labels[rest], int(round(n * OWN_SPLIT_FRACTION)), 3, stratify=True)
    parts = {"train": rest[kept], "val": rest[held], "test": test}
    folder = tmp_path / "digits_png"
    for split, idx in parts.items():
        write_folder(folder, images[idx], labels[idx], split, names=[f"{i:05d}.png" for i in idx])
    npz = tmp_path / "digits.npz"
    np.savez(npz, x_train=images, y_train=labels)  # no split given: easc's own, which is digits' rule
    model = _digits_model(tmp_path / "digits_small.easir")

    named = _test_acc(model, "digits")
    from_folder = _test_acc(model, folder)
    from_npz = _test_acc(model, npz)
    assert named > 0.8  # it learned something, so the comparison means something
    assert abs(from_folder - named) <= 0.01
    assert abs(from_npz - named) <= 0.01


# ------------------------------------------------------------------------------------------ folders


def test_image_folder_classes_are_sorted_names_and_the_split_is_stratified_seeded_and_recorded(tmp_path):
    root = small_folder(tmp_path / "imgs", n_per_class=10, classes=3)
    a = load_dataset(str(root), seed=0)
    assert a.classes == ("class_0", "class_1", "class_2") and a.num_classes == 3
    assert (len(a.y_train), len(a.y_val), len(a.y_test)) == (18, 6, 6)
    for y in (a.y_val, a.y_test):  # stratified: every class twice
        assert torch.bincount(y, minlength=3).tolist() == [2, 2, 2]
    rec = a.split_record
    assert sorted(rec["train"] + rec["val"] + rec["test"]) == sorted(
        f"class_{c}/{i:03d}.png" for c in range(3) for i in range(10))
    again, other = load_dataset(str(root), seed=0), load_dataset(str(root), seed=1)
    assert again.split_record == rec and torch.equal(again.x_train, a.x_train)
    assert other.split_record["test"] == rec["test"]  # the test split does not move with the seed
    assert other.split_record["val"] != rec["val"]


def test_train_and_test_folders_are_used_as_given_and_validation_is_held_out_of_train(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (40, 4, 4, 3), dtype=np.uint8)
    write_folder(tmp_path / "d", imgs[:30], np.arange(30) % 2, "train")
    write_folder(tmp_path / "d", imgs[30:], np.arange(10) % 2, "test")
    s = load_dataset(str(tmp_path / "d"))
    assert len(s.y_test) == 10 and all(f.startswith("test/") for f in s.split_record["test"])
    assert len(s.y_train) + len(s.y_val) == 30 and len(s.y_val) == 3
    assert all(f.startswith("train/") for f in s.split_record["train"] + s.split_record["val"])


def test_pixels_are_decoded_exactly_and_standardised_with_training_statistics(tmp_path):
    root = small_folder(tmp_path / "imgs", n_per_class=10, classes=2)
    s = load_dataset(str(root))
    first = s.split_record["train"][0]
    raw = np.asarray(Image.open(root / first), dtype=np.float64).transpose(2, 0, 1) / 255
    mean, std = np.array(s.mean)[:, None, None], np.array(s.std)[:, None, None]
    np.testing.assert_allclose(s.x_train[0].numpy(), (raw - mean) / std, atol=1e-5)
    assert torch.allclose(s.x_train.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)


def test_grayscale_folders_stay_one_channel_and_mixed_ones_become_rgb(tmp_path):
    gray = small_folder(tmp_path / "gray", mode="L")
    assert load_dataset(str(gray)).input_shape == (1, 6, 5)
    mixed = small_folder(tmp_path / "mixed", mode="L")
    Image.fromarray(np.full((6, 5, 3), 7, np.uint8)).save(mixed / "class_0" / "rgb.png")
    s = load_dataset(str(mixed))
    assert s.input_shape == (3, 6, 5)
    decoded = imagefolder.load_folder(mixed, use_cache=False)
    row = list(decoded.kept).index(decoded.listing.files.index("class_1/000.png"))
    img = decoded.images[row]
    assert np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 0], img[..., 2])


def test_default_size_is_the_most_common_and_image_size_resizes(tmp_path):
    root = small_folder(tmp_path / "imgs", size=(6, 5))
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(root / "class_0" / "odd.png")
    assert load_dataset(str(root)).input_shape == (3, 6, 5)
    assert load_dataset(str(root), image_size=4).input_shape == (3, 4, 4)
    assert load_dataset(str(root), image_size="3x7").input_shape == (3, 3, 7)
    with pytest.raises(DatasetError, match="--image-size"):
        load_dataset(str(root), image_size="big")
    # The decoder shapes its array by the first file; when that one is the odd size out, all are decoded again.
    Image.fromarray(np.full((9, 9, 3), 50, np.uint8)).save(root / "class_0" / "00.png")
    first_odd = imagefolder.load_folder(root, use_cache=False)
    assert first_odd.listing.files[0] == "class_0/00.png"
    assert first_odd.images.shape == (20, 6, 5, 3) and (first_odd.images[0] == 50).all()


def test_a_folder_too_large_to_decode_at_its_own_size_asks_for_image_size(tmp_path, monkeypatch):
    root = small_folder(tmp_path / "imgs")
    monkeypatch.setattr(imagefolder, "MAX_DECODED_BYTES", 1000)
    with pytest.raises(DatasetError, match=r"18 images of 6x5 would take .* pass --image-size"):
        load_dataset(str(root))
    assert load_dataset(str(root), image_size=4).input_shape == (3, 4, 4)


def test_large_jpegs_are_decoded_at_reduced_scale_and_resized(tmp_path):
    rng = np.random.default_rng(0)
    for c in range(2):
        (tmp_path / "jpg" / f"c{c}").mkdir(parents=True)
        for i in range(5):
            colour = rng.integers(0, 256, 3)
            img = np.broadcast_to(colour, (64, 48, 3)).astype(np.uint8)
            Image.fromarray(img).save(tmp_path / "jpg" / f"c{c}" / f"{i}.jpeg", quality=95)
    decoded = imagefolder.load_folder(tmp_path / "jpg", (8, 6), use_cache=False)
    assert decoded.images.shape == (10, 8, 6, 3)
    first = np.asarray(Image.open(tmp_path / "jpg" / "c0" / "0.jpeg").convert("RGB"), dtype=np.int16)
    # A flat colour survives draft decoding and resampling within JPEG's rounding.
    assert np.abs(decoded.images[0].astype(np.int16) - first[:8, :6]).max() <= 3


def test_parallel_decoding_gives_the_same_array_as_one_process(tmp_path, monkeypatch):
    root = small_folder(tmp_path / "imgs", n_per_class=12, classes=3)
    monkeypatch.setattr(imagefolder, "PARALLEL_MIN_FILES", 1)
    monkeypatch.setattr(imagefolder, "CHUNK", 5)
    listing = imagefolder.scan(root)
    one = imagefolder.decode(listing, workers=1, progress=False)
    two = imagefolder.decode(listing, workers=2, progress=False)
    assert np.array_equal(one.images, two.images) and one.images.shape == (36, 6, 5, 3)


def test_augment_option_and_its_spellings(tmp_path):
    root = small_folder(tmp_path / "imgs")
    assert load_dataset(str(root), augment="crop-flip").augment == "crop_flip"
    assert load_dataset(str(root)).augment == "none"
    with pytest.raises(DatasetError, match="--augment"):
        load_dataset(str(root), augment="rotate")


# ------------------------------------------------------------------------------------------ the cache


def test_second_load_comes_from_the_cache_keyed_by_a_hash_and_a_changed_file_is_decoded_again(tmp_path, _cache):
    root = small_folder(tmp_path / "imgs")
    first = imagefolder.load_folder(root)
    second = imagefolder.load_folder(root)
    assert not first.from_cache and second.from_cache
    assert np.array_equal(first.images, second.images)
    entries = list((_cache / "images").iterdir())
    assert len(entries) == 1 and len(entries[0].name) == 64 and set(entries[0].name) <= set("0123456789abcdef")
    target = root / "class_1" / "002.png"
    Image.fromarray(np.full((6, 5, 3), 200, np.uint8)).save(target)
    os.utime(target, ns=(1, 1))
    third = imagefolder.load_folder(root)
    assert not third.from_cache
    row = third.listing.files.index("class_1/002.png")
    assert (third.images[row] == 200).all()


@pytest.mark.parametrize("damage", ["truncate", "flip", "meta", "kept"])
def test_a_corrupt_cache_entry_is_rebuilt_not_trusted(tmp_path, _cache, damage):
    root = small_folder(tmp_path / "imgs")
    good = imagefolder.load_folder(root).images.copy()
    entry = next((_cache / "images").iterdir())
    data = entry / "images.npy"
    if damage == "truncate":
        data.write_bytes(data.read_bytes()[:-50])
    elif damage == "flip":
        raw = bytearray(data.read_bytes())
        raw[-1] ^= 0xFF
        data.write_bytes(bytes(raw))
    elif damage == "meta":
        (entry / "meta.json").write_text("{not json")
    else:  # valid JSON, valid checksum, rows that point outside the folder
        meta = json.loads((entry / "meta.json").read_text())
        (entry / "meta.json").write_text(json.dumps({**meta, "kept": [10**6] * len(good)}))
    again = imagefolder.load_folder(root)
    assert not again.from_cache and np.array_equal(again.images, good)
    assert imagefolder.load_folder(root).from_cache  # rebuilt in place


def test_an_entry_edited_in_place_with_its_size_and_mtime_restored_is_still_caught(tmp_path, _cache):
    root = small_folder(tmp_path / "imgs")
    good = imagefolder.load_folder(root).images.copy()
    data = next((_cache / "images").iterdir()) / "images.npy"
    before = os.stat(data)
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 0xFF
    with open(data, "r+b") as f:  # same inode, same size
        f.write(bytes(raw))
    os.utime(data, ns=(before.st_atime_ns, before.st_mtime_ns))  # the mtime put back; the ctime cannot be
    again = imagefolder.load_folder(root)
    assert not again.from_cache and np.array_equal(again.images, good)


def test_an_entry_copied_elsewhere_is_checked_once_then_trusted_again(tmp_path, monkeypatch, _cache):
    root = small_folder(tmp_path / "imgs")
    good = imagefolder.load_folder(root).images.copy()
    copy = tmp_path / "restored"
    shutil.copytree(_cache, copy)  # new inodes and ctimes, same bytes
    monkeypatch.setenv("EASC_CACHE_DIR", str(copy))
    calls = []
    real = datacache.checksum
    monkeypatch.setattr(datacache, "checksum", lambda a: calls.append(1) or real(a))
    first, second = imagefolder.load_folder(root), imagefolder.load_folder(root)
    assert first.from_cache and second.from_cache and np.array_equal(second.images, good)
    assert len(calls) == 1  # the copy was checksummed once; its new identity was recorded


def test_the_cache_honours_xdg_cache_home_without_easc_cache_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("EASC_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert datacache.cache_dir() == tmp_path / "xdg" / "easc"


# ------------------------------------------------------------------------------------------ arrays


def test_npz_in_nhwc_nchw_and_grayscale_layouts_give_the_same_data(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (30, 5, 6, 3), dtype=np.uint8)
    y = np.arange(30) % 3
    np.savez(tmp_path / "nhwc.npz", x_train=x, y_train=y)
    np.savez(tmp_path / "nchw.npz", x_train=x.transpose(0, 3, 1, 2), y_train=y)
    a, b = load_dataset(str(tmp_path / "nhwc.npz")), load_dataset(str(tmp_path / "nchw.npz"))
    assert a.input_shape == (3, 5, 6) and torch.equal(a.x_train, b.x_train)
    np.savez(tmp_path / "gray.npz", x_train=x[..., 0].astype(np.float32) / 255, y_train=y.astype(np.float64))
    g = load_dataset(str(tmp_path / "gray.npz"))
    assert g.input_shape == (1, 5, 6) and g.num_classes == 3


def test_image_size_resizes_npz_arrays_as_it_resizes_the_same_pictures_in_a_folder(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (12, 6, 5, 3), dtype=np.uint8)
    y = np.arange(12) % 2
    np.savez(tmp_path / "a.npz", x_train=x, y_train=y)
    write_folder(tmp_path / "imgs", x, y)
    arrays = load_dataset(str(tmp_path / "a.npz"), image_size="4x7")
    folder = load_dataset(str(tmp_path / "imgs"), image_size="4x7")
    assert arrays.input_shape == folder.input_shape == (3, 4, 7)
    both = [torch.cat([d.x_train, d.x_val, d.x_test]) for d in (arrays, folder)]
    # the same pixels in another order (the folder's rows are sorted by class): compare as sorted sets of rows
    a, b = (t.flatten(1).sort(dim=0).values for t in both)
    assert torch.allclose(a, b, atol=1e-6)
    # float images (grayscale here) are resized channel by channel, keep their scale and stay finite
    np.savez(tmp_path / "f.npz", x_train=x[..., 0].astype(np.float32) / 255, y_train=y)
    g = load_dataset(str(tmp_path / "f.npz"), image_size=3)
    assert g.input_shape == (1, 3, 3) and torch.isfinite(g.x_train).all()
    # an unchanged size is not resampled: the same tensors as without --image-size
    same = load_dataset(str(tmp_path / "a.npz"), image_size="6x5")
    assert torch.equal(same.x_train, load_dataset(str(tmp_path / "a.npz")).x_train)


def test_npz_with_given_val_and_test_uses_them(tmp_path):
    rng = np.random.default_rng(0)
    def part(n):
        return rng.integers(0, 256, (n, 4, 4, 1), dtype=np.uint8), np.arange(n) % 2
    (xt, yt), (xv, yv), (xs, ys) = part(20), part(6), part(8)
    np.savez(tmp_path / "a.npz", x_train=xt, y_train=yt, x_val=xv, y_val=yv, x_test=xs, y_test=ys)
    s = load_dataset(str(tmp_path / "a.npz"))
    assert (len(s.y_train), len(s.y_val), len(s.y_test)) == (20, 6, 8)
    assert s.split_record["val"] == {"x_val": list(range(6))}


@pytest.mark.parametrize("arrays, message", [
    (dict(x_train=np.zeros((4, 3, 3, 3), np.uint8)), "expected x_train and y_train"),
    (dict(x_train=np.zeros((4, 3, 3, 3), np.uint8), y_train=np.arange(3)), "4 images but y_train has 3"),
    (dict(x_train=np.zeros((4, 5, 5, 3), np.uint8), y_train=np.arange(4) % 2,
          x_test=np.zeros((2, 5, 5, 1), np.uint8), y_test=np.arange(2)), "mixed channel counts"),
    (dict(x_train=np.zeros((4, 5, 5, 3), np.uint8), y_train=np.arange(4) % 2,
          x_test=np.zeros((2, 5, 5, 3), np.uint8), y_test=np.array([0, 5])), "label 5, out of range"),
    (dict(x_train=np.zeros((4, 5, 5, 3), np.uint8), y_train=np.array([0, 1, -1, 1])), "label -1"),
    (dict(x_train=np.zeros((4, 5, 5, 3), np.uint8), y_train=np.array([0, 1, 0.5, 1])), "non-integer"),
    (dict(x_train=np.zeros((4, 3, 5, 3), np.uint8), y_train=np.arange(4) % 2), "both axis 1 and axis 3"),
    (dict(x_train=np.zeros((4, 5, 5, 3), np.int32), y_train=np.arange(4) % 2), "uint8 .* or float"),
    (dict(x_train=np.full((4, 5, 5, 3), np.nan, np.float32), y_train=np.arange(4) % 2), "NaN"),
])
def test_bad_arrays_are_refused_in_one_line_naming_the_array(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DatasetError, match=message) as info:
        load_dataset(str(path))
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_an_npz_whose_arrays_would_not_fit_in_memory_is_refused_before_reading(tmp_path, monkeypatch):
    from easc.backends.torch import arrays

    np.savez_compressed(tmp_path / "big.npz", x_train=np.zeros((64, 8, 8, 3), np.uint8), y_train=np.arange(64) % 2)
    monkeypatch.setattr(arrays, "MAX_ARRAY_BYTES", 10_000)
    with pytest.raises(DatasetError, match=r"x_train is uint8 \(64, 8, 8, 3\)"):
        load_dataset(str(tmp_path / "big.npz"))


def test_a_fifo_named_like_an_npz_is_refused_without_reading(tmp_path):
    os.mkfifo(tmp_path / "pipe.npz")
    with pytest.raises(DatasetError, match="not a regular file"):
        load_dataset(str(tmp_path / "pipe.npz"))


# ------------------------------------------------------------------------------------------ bad folders


def test_bad_folders_are_refused_in_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no class folders"):
        load_dataset(str(tmp_path / "empty"))
    root = small_folder(tmp_path / "imgs")
    (root / "class_9").mkdir()
    (root / "class_9" / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match="class 'class_9' has no images"):
        load_dataset(str(root))
    with pytest.raises(DatasetError, match="no such file or folder"):
        load_dataset(str(tmp_path / "missing"))
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_dataset("cifar11")


def test_fifos_and_symlink_loops_in_a_folder_are_never_read_or_followed(tmp_path):
    root = small_folder(tmp_path / "imgs")
    os.mkfifo(root / "class_0" / "pipe.png")  # opening it would block for ever
    os.symlink(root, root / "class_1" / "loop")  # following it would never end
    s = load_dataset(str(root))
    files = s.split_record["train"] + s.split_record["val"] + s.split_record["test"]
    assert len(files) == 18 and not any("pipe" in f or "loop" in f for f in files)


def _truncated_png(path: Path) -> None:
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:60])


def test_a_truncated_image_is_named_and_skipped_only_when_asked(tmp_path, capsys):
    root = small_folder(tmp_path / "imgs")
    bad = root / "class_1" / "broken.png"
    _truncated_png(bad)
    (root / "class_2" / "fake.jpg").write_bytes(b"not an image at all")
    _truncated_png(root / "class_0" / "0.png")  # sorts first: the file the decoder would shape its array by
    with pytest.raises(DatasetError, match=r"class_0/0\.png: cannot decode .*--skip-bad-images"):
        load_dataset(str(root))
    s = load_dataset(str(root), skip_bad_images=True)
    assert sorted(f for f, _ in s.split_record["skipped"]) == ["class_0/0.png", "class_1/broken.png",
                                                               "class_2/fake.jpg"]
    assert len(s.y_train) + len(s.y_val) + len(s.y_test) == 18
    note = capsys.readouterr().err.strip()
    assert note.count("\n") == 0 and "skipped 3 image(s)" in note and "class_0/0.png" in note
    again = load_dataset(str(root), skip_bad_images=True)  # from the cache: the same rows, the same record
    assert torch.equal(again.x_train, s.x_train) and again.split_record == s.split_record
    assert imagefolder.load_folder(root, skip_bad=True).from_cache


def test_cli_bad_data_is_one_line_with_exit_code_2(tmp_path):
    (tmp_path / "empty").mkdir()
    model = _digits_model(tmp_path / "m.easir")
    result = easc("train", model, "--dataset", tmp_path / "empty", "--epochs", 1)
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "no class folders" in result.output
    root = small_folder(tmp_path / "imgs", size=(8, 8), mode="L")
    result = easc("train", model, "--dataset", root, "--image-size", 6, "--epochs", 1)
    assert result.exit_code == 2 and "(1, 8, 8)" in result.output and "(1, 6, 6)" in result.output


def test_easc_train_on_an_image_folder_prints_the_json_closing_line(tmp_path):
    root = small_folder(tmp_path / "imgs", size=(8, 8), mode="L", n_per_class=10)
    model = _digits_model(tmp_path / "m.easir")
    from easc.ir import load_graph, save_graph
    from easc.search.start_nets import digits_small

    save_graph(digits_small((1, 8, 8), 3, seed=0), model)
    result = easc("train", model, "--dataset", root, "--epochs", 2, "--augment", "crop-flip", "-o",
                  tmp_path / "out.easir")
    assert result.exit_code == 0, result.output
    last = json.loads(result.output.strip().splitlines()[-1])
    assert set(last) >= {"val_acc", "test_acc", "epochs", "seconds"} and last["epochs"] == 2
    assert load_graph(tmp_path / "out.easir").inputs[0].type.sample_shape == (1, 8, 8)
    # the split it trained on is recorded beside the model: every image in exactly one split
    record = json.loads((tmp_path / "out.easir.split.json").read_text())
    files = record["train"] + record["val"] + record["test"]
    assert sorted(files) == sorted(f"class_{c}/{i:03d}.png" for c in range(3) for i in range(10))
    assert record["classes"] == ["class_0", "class_1", "class_2"] and record["image_size"] == [8, 8]


def test_bench_data_smoke_runs_all_arms_and_writes_json(tmp_path, monkeypatch):
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(
        "_bench_data", Path(__file__).resolve().parent.parent / "benchmarks" / "bench_data.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "_bench_data", module)  # its worker processes find _spin by module name
    spec.loader.exec_module(module)
    out = tmp_path / "bench_data.json"
    module.main(["--smoke", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["benchmark"] == "bench_data" and report["mode"] == "smoke" and report["arrays_equal"]
    assert set(report["median_seconds"]) == {"plain", "easc", "decode", "one", "cached", "cached_read"}
    assert os.environ["EASC_CACHE_DIR"] == str(tmp_path / "cache")  # restored after the run


def test_easc_train_reads_a_recipes_data_options_and_flags_override_them(tmp_path):
    root = small_folder(tmp_path / "imgs", size=(8, 8), mode="L", n_per_class=10)
    from easc.ir import save_graph
    from easc.search.start_nets import digits_small

    model = tmp_path / "m.easir"
    save_graph(digits_small((1, 6, 6), 3, seed=0), model)
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(f'[search]\ndataset = "{root}"\nimage_size = 6\naugmentation = "crop-flip"\n'
                      '[final]\nepochs = 1\n')

    result = easc("train", model, "--config", recipe, "--final")  # 8x8 images fit the 6x6 net: image_size read
    assert result.exit_code == 0, result.output
    assert "augmentation crop_flip" in result.output  # the recipe's augmentation, not the default none

    result = easc("train", model, "--config", recipe, "--image-size", 8)  # the flag wins: 8x8 no longer fits
    assert result.exit_code == 2 and "(1, 6, 6)" in result.output and "(1, 8, 8)" in result.output

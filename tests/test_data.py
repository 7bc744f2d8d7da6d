"""Tests for easc.backends.torch.data: data set loading, splits, standardisation, augmentation.

CIFAR and SVHN are tested on tiny files this module writes in the data sets' real on-disk formats (python 2
style pickles with bytes keys; MATLAB files with X as H x W x C x N), so no download is ever needed.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
import urllib.request

import numpy as np
import pytest
import torch
from scipy.io import savemat

from easc.backends.torch import data as data_mod
from easc.backends.torch.data import (
    DATASETS,
    DataSplits,
    DatasetError,
    augment_batch,
    calibration_batch,
    load_dataset,
)

CIFAR_PER_BATCH = 12  # 5 batches -> 60 training images
CIFAR_TEST = 10
SVHN_TRAIN, SVHN_TEST = 40, 8
# Standardising and un-standardising a [0, 1] pixel in float32 is exact to a few ulps of 1.
PIXEL_ATOL = 1e-5



# --------------------------------------------------------------------------------------------------------
# Fixture writers, in the real formats


def _cifar_batch(rng: np.random.Generator, n: int, label_key: bytes, num_classes: int) -> dict:
    return {
        b"batch_label": b"training batch",
        label_key: rng.integers(0, num_classes, n).tolist(),  # a list, as in the real files
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


def _dump(path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the protocol of the python 2 era files


def write_cifar10(parent, seed: int = 0) -> dict[str, dict]:
    folder = parent / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[name] = _cifar_batch(rng, CIFAR_TEST if name == "test_batch" else CIFAR_PER_BATCH, b"labels", 10)
        _dump(folder / name, batches[name])
    _dump(folder / "batches.meta", {b"label_names": [b"airplane"] * 10, b"num_vis": 3072})
    return batches


def write_cifar100(parent, seed: int = 0) -> dict[str, dict]:
    folder = parent / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    batches = {}
    for name, n in (("train", 50), ("test", CIFAR_TEST)):
        batch = _cifar_batch(rng, n, b"fine_labels", 100)
        batch[b"coarse_labels"] = rng.integers(0, 20, n).tolist()
        batches[name] = batch
        _dump(folder / name, batch)
    return batches


def write_svhn(folder, seed: int = 0) -> dict[str, dict]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    mats = {}
    for name, n in (("train_32x32.mat", SVHN_TRAIN), ("test_32x32.mat", SVHN_TEST)):
        labels = rng.integers(1, 11, (n, 1)).astype(np.uint8)
        labels[0, 0] = 10  # make sure the "10 means digit 0" case is present
        mats[name] = {"X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8), "y": labels}
        savemat(folder / name, mats[name])
    return mats


def unstandardise(x: torch.Tensor, splits: DataSplits) -> torch.Tensor:
    mean = torch.tensor(splits.mean).view(1, -1, 1, 1)
    std = torch.tensor(splits.std).view(1, -1, 1, 1)
    return x * std + mean


# --------------------------------------------------------------------------------------------------------
# digits


@pytest.fixture(scope="module")
def digits() -> DataSplits:
    return load_dataset("digits")


def test_digits_is_split_60_20_20_into_1x8x8_float_images_and_int64_labels(digits):
    sizes = (len(digits.y_train), len(digits.y_val), len(digits.y_test))
    assert sum(sizes) == 1797
    assert sizes == (1079, 359, 359)
    assert digits.x_train.shape == (1079, 1, 8, 8) and digits.x_train.dtype == torch.float32
    assert digits.y_train.dtype == torch.int64
    assert digits.input_shape == (1, 8, 8) and digits.num_classes == 10
    assert digits.augment == "none" and digits.name == "digits"


def test_digits_split_is_stratified_so_every_class_is_in_every_split(digits):
    for y in (digits.y_train, digits.y_val, digits.y_test):
        counts = torch.bincount(y, minlength=10)
        assert counts.min() >= 0.8 * counts.max()


def test_digits_training_split_is_standardised_with_its_own_statistics(digits):
    assert abs(digits.x_train.mean().item()) < 1e-5
    assert abs(digits.x_train.std(unbiased=False).item() - 1) < 1e-4
    # Every split is standardised with the *training* statistics: undoing them gives back the original
    # integer pixel values 0..16 (scaled to [0, 1]) in all three splits.
    for x in (digits.x_train, digits.x_val, digits.x_test):
        raw = unstandardise(x, digits) * 16
        assert torch.allclose(raw, raw.round(), atol=16 * PIXEL_ATOL)
        assert raw.round().min() == 0 and raw.round().max() == 16
    # ...and the validation split is not exactly standardised, which it would be with its own statistics.
    assert abs(digits.x_val.mean().item()) > 1e-4


def test_digits_split_is_reproducible_for_a_seed_and_validation_moves_with_it(digits):
    again = load_dataset("digits")
    assert torch.equal(again.x_train, digits.x_train) and torch.equal(again.y_val, digits.y_val)
    other = load_dataset("digits", seed=1)
    assert not torch.equal(other.x_val, digits.x_val)
    # The test split is fixed, so test accuracies of runs with different seeds are comparable.
    raw_test = unstandardise(digits.x_test, digits)
    assert torch.allclose(unstandardise(other.x_test, other), raw_test, atol=PIXEL_ATOL)


def test_val_size_sets_how_many_images_are_held_out_for_validation():
    splits = load_dataset("digits", val_size=100)
    assert (len(splits.y_train), len(splits.y_val), len(splits.y_test)) == (1338, 100, 359)


def test_val_size_that_leaves_no_training_images_is_rejected():
    with pytest.raises(DatasetError, match="val_size 1438 leaves no training images"):
        load_dataset("digits", val_size=1438)


def test_negative_val_size_is_rejected():
    with pytest.raises(DatasetError, match="val_size must be a non-negative integer"):
        load_dataset("digits", val_size=-1)


# --------------------------------------------------------------------------------------------------------
# synthetic


def test_synthetic_data_has_the_requested_shape_classes_and_size_and_is_seeded():
    a = load_dataset("synthetic", shape=(2, 5, 7), num_classes=4, n=100, seed=3)
    assert a.x_train.shape[1:] == (2, 5, 7) and a.input_shape == (2, 5, 7) and a.num_classes == 4
    assert len(a.y_train) + len(a.y_val) + len(a.y_test) == 100
    assert set(a.y_train.tolist()) == {0, 1, 2, 3}
    assert torch.equal(load_dataset("synthetic", shape=(2, 5, 7), num_classes=4, n=100, seed=3).x_train, a.x_train)
    assert not torch.equal(load_dataset("synthetic", shape=(2, 5, 7), num_classes=4, n=100, seed=4).x_train, a.x_train)


def test_synthetic_classes_are_separable_by_their_mean_image():
    # "Learnable": nearest class mean (from training data) classifies the test split far above chance.
    s = load_dataset("synthetic", shape=(3, 8, 8), num_classes=5, n=250)
    means = torch.stack([s.x_train[s.y_train == c].mean(0) for c in range(5)])
    dist = ((s.x_test[:, None] - means[None]) ** 2).flatten(2).sum(-1)
    assert (dist.argmin(1) == s.y_test).float().mean() > 0.9


def test_synthetic_can_ask_for_crop_flip_augmentation_and_rejects_unknown_kinds():
    assert load_dataset("synthetic", n=100, augment="crop_flip").augment == "crop_flip"
    with pytest.raises(DatasetError, match="augment 'rotate' is not one of none, crop_flip"):
        load_dataset("synthetic", n=100, augment="rotate")


def test_synthetic_rejects_a_shape_that_is_not_chw():
    with pytest.raises(DatasetError, match=r"synthetic: shape must be \(C, H, W\)"):
        load_dataset("synthetic", shape=(8, 8))


# --------------------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100


def test_cifar10_reads_all_batches_in_file_order_as_rgb_planes(tmp_path):
    batches = write_cifar10(tmp_path)
    s = load_dataset("cifar10", tmp_path, val_size=0)
    assert s.x_train.shape == (5 * CIFAR_PER_BATCH, 3, 32, 32) and s.x_test.shape == (CIFAR_TEST, 3, 32, 32)
    assert s.num_classes == 10 and s.input_shape == (3, 32, 32) and s.augment == "crop_flip"
    first = batches["data_batch_1"][b"data"][0]
    image = unstandardise(s.x_train[:1], s)[0] * 255
    # Row layout of the files: 1024 red values, then green, then blue, each a row-major 32x32 image.
    assert torch.allclose(image[0, 0, :3], torch.tensor(first[:3], dtype=torch.float32), atol=255 * PIXEL_ATOL)
    assert torch.allclose(image[1, 0, 0], torch.tensor(float(first[1024])), atol=255 * PIXEL_ATOL)
    assert torch.allclose(image[2, 1, 0], torch.tensor(float(first[2048 + 32])), atol=255 * PIXEL_ATOL)
    last = batches["data_batch_5"][b"data"][-1].reshape(3, 32, 32)
    assert torch.allclose(unstandardise(s.x_train[-1:], s)[0] * 255, torch.from_numpy(last).float(),
                          atol=255 * PIXEL_ATOL)
    labels = sum((batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    assert s.y_train.tolist() == labels
    assert s.y_test.tolist() == batches["test_batch"][b"labels"]


def test_cifar10_holds_out_a_tenth_of_a_small_training_set_for_validation_seeded(tmp_path):
    write_cifar10(tmp_path)
    s = load_dataset("cifar10", tmp_path)
    assert (len(s.y_train), len(s.y_val), len(s.y_test)) == (54, 6, CIFAR_TEST)
    assert torch.equal(load_dataset("cifar10", tmp_path).x_val, s.x_val)
    assert not torch.equal(load_dataset("cifar10", tmp_path, seed=1).x_val, s.x_val)


def test_cifar10_is_standardised_per_channel_with_training_statistics(tmp_path):
    batches = write_cifar10(tmp_path)
    s = load_dataset("cifar10", tmp_path, val_size=0)
    per_channel_mean = s.x_train.mean(dim=(0, 2, 3))
    per_channel_std = s.x_train.std(dim=(0, 2, 3), unbiased=False)
    assert torch.allclose(per_channel_mean, torch.zeros(3), atol=1e-5)
    assert torch.allclose(per_channel_std, torch.ones(3), atol=1e-4)
    raw = np.concatenate([batches[f"data_batch_{i}"][b"data"] for i in range(1, 6)]).reshape(-1, 3, 1024) / 255
    assert np.allclose(s.mean, raw.mean(axis=(0, 2)), atol=1e-6)
    assert np.allclose(s.std, raw.std(axis=(0, 2)), atol=1e-6)


def test_cifar10_accepts_the_batches_folder_itself_as_data_dir(tmp_path):
    write_cifar10(tmp_path)
    direct = load_dataset("cifar10", tmp_path / "cifar-10-batches-py")
    via_parent = load_dataset("cifar10", str(tmp_path))
    assert torch.equal(direct.x_train, via_parent.x_train)


def test_cifar100_uses_fine_labels_and_has_100_classes(tmp_path):
    batches = write_cifar100(tmp_path)
    s = load_dataset("cifar100", tmp_path, val_size=0)
    assert s.num_classes == 100 and s.name == "cifar100" and s.augment == "crop_flip"
    assert s.y_train.tolist() == batches["train"][b"fine_labels"]
    assert s.y_test.tolist() == batches["test"][b"fine_labels"]
    assert load_dataset("CIFAR-100", tmp_path / "cifar-100-python").x_val.shape == (5, 3, 32, 32)


def test_missing_cifar10_folder_error_names_the_folder_and_the_files_expected(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError) as err:
        load_dataset("cifar10", missing)
    message = str(err.value)
    assert "\n" not in message
    assert str(missing) in message and "does not exist" in message
    for expected in ("cifar-10-batches-py", "data_batch_1", "data_batch_5", "test_batch", "download=True"):
        assert expected in message


def test_cifar10_folder_without_one_batch_names_the_missing_batch(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_5").unlink()
    with pytest.raises(DatasetError, match=r"no usable data in .*cifar-10-batches-py.*\(missing: data_batch_5\)"):
        load_dataset("cifar10", tmp_path)


def test_missing_cifar100_files_error_names_train_and_test(tmp_path):
    with pytest.raises(DatasetError, match=r"cifar-100-python/ with train and test \(missing: train, test\)"):
        load_dataset("cifar100", tmp_path)


def test_garbage_cifar_batch_raises_dataset_error_naming_the_file(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle at all")
    with pytest.raises(DatasetError, match=r"data_batch_3: cannot read .*expected a CIFAR-10 batch pickle"):
        load_dataset("cifar10", tmp_path)


def test_cifar_batch_of_the_wrong_image_size_is_rejected(tmp_path):
    write_cifar10(tmp_path)
    _dump(tmp_path / "cifar-10-batches-py" / "test_batch",
          {b"data": np.zeros((4, 1024), np.uint8), b"labels": [0, 1, 2, 3]})
    with pytest.raises(DatasetError, match=r"test_batch: b'data' is uint8 \(4, 1024\)"):
        load_dataset("cifar10", tmp_path)


def test_cifar_batch_without_labels_is_rejected(tmp_path):
    write_cifar100(tmp_path)
    _dump(tmp_path / "cifar-100-python" / "train", {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0] * 4})
    with pytest.raises(DatasetError, match=r"train: has \[b'data', b'labels'\]; .*b'fine_labels'"):
        load_dataset("cifar100", tmp_path)


def test_cifar_labels_outside_the_class_range_are_rejected(tmp_path):
    write_cifar10(tmp_path)
    _dump(tmp_path / "cifar-10-batches-py" / "test_batch", {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]})
    with pytest.raises(DatasetError, match=r"test_batch: labels outside 0..9"):
        load_dataset("cifar10", tmp_path)


class _RunsCode:
    """Pickles as a call to os.makedirs: what a tampered data file could make a plain pickle.load do."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.makedirs, (self.path,))


def test_cifar_pickle_that_would_run_code_is_refused_without_running_it(tmp_path):
    write_cifar10(tmp_path)
    marker = tmp_path / "code_ran"
    _dump(tmp_path / "cifar-10-batches-py" / "data_batch_2", {b"data": _RunsCode(marker), b"labels": []})
    with pytest.raises(DatasetError, match=r"data_batch_2: cannot read \(UnpicklingError: refusing to load"):
        load_dataset("cifar10", tmp_path)
    assert not marker.exists()


# --------------------------------------------------------------------------------------------------------
# SVHN


def test_svhn_maps_label_10_to_digit_0_and_only_scales_pixels_by_255(tmp_path):
    mats = write_svhn(tmp_path)
    s = load_dataset("svhn", tmp_path, val_size=0)
    assert s.x_train.shape == (SVHN_TRAIN, 3, 32, 32) and s.x_test.shape == (SVHN_TEST, 3, 32, 32)
    assert s.augment == "none" and s.mean == (0.0, 0.0, 0.0) and s.std == (1.0, 1.0, 1.0)
    x = mats["train_32x32.mat"]["X"]  # H x W x C x N
    expected = torch.from_numpy(x[..., 0].transpose(2, 0, 1).astype(np.float32)) / 255
    assert torch.allclose(s.x_train[0], expected, atol=PIXEL_ATOL)
    y = mats["train_32x32.mat"]["y"][:, 0].astype(np.int64)
    assert s.y_train.tolist() == np.where(y == 10, 0, y).tolist()
    assert s.y_train[0] == 0 and s.y_train.max() <= 9


def test_svhn_holds_out_validation_images_seeded(tmp_path):
    write_svhn(tmp_path)
    s = load_dataset("svhn", tmp_path, seed=5)
    assert (len(s.y_train), len(s.y_val), len(s.y_test)) == (36, 4, SVHN_TEST)
    assert torch.equal(load_dataset("svhn", tmp_path, seed=5).x_val, s.x_val)


def test_missing_svhn_files_error_names_them(tmp_path):
    write_svhn(tmp_path)
    (tmp_path / "test_32x32.mat").unlink()
    expected = r"svhn: no usable data in .*train_32x32.mat and test_32x32.mat \(missing: test_32x32.mat\)"
    with pytest.raises(DatasetError, match=expected):
        load_dataset("svhn", tmp_path)


def test_malformed_svhn_file_raises_dataset_error_naming_the_file(tmp_path):
    write_svhn(tmp_path)
    (tmp_path / "train_32x32.mat").write_bytes(b"\x00" * 200)
    with pytest.raises(DatasetError, match=r"train_32x32.mat: cannot read .*expected a MATLAB file with X"):
        load_dataset("svhn", tmp_path)


def test_svhn_file_with_images_in_the_wrong_layout_is_rejected(tmp_path):
    write_svhn(tmp_path)
    savemat(tmp_path / "test_32x32.mat", {"X": np.zeros((4, 3, 32, 32), np.uint8), "y": np.ones((4, 1), np.uint8)})
    with pytest.raises(DatasetError, match=r"test_32x32.mat: X is uint8 \(4, 3, 32, 32\) with 4 labels"):
        load_dataset("svhn", tmp_path)


# --------------------------------------------------------------------------------------------------------
# Names, options, downloads


def test_unknown_dataset_name_error_lists_the_valid_names():
    with pytest.raises(DatasetError) as err:
        load_dataset("imagenet")
    assert str(err.value) == (f"unknown dataset 'imagenet'; valid names: {', '.join(DATASETS)}, or the path of an "
                              f"image folder or an .npz file")


def test_option_a_dataset_does_not_take_is_rejected():
    with pytest.raises(DatasetError, match="digits: unknown option.s. shape; accepted: none"):
        load_dataset("digits", shape=(1, 8, 8))


def test_nothing_is_downloaded_unless_download_is_true(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    for name in ("cifar10", "cifar100", "svhn"):
        with pytest.raises(DatasetError, match=r"or pass --download \(download=True from Python\)"):
            load_dataset(name, tmp_path / name)


def _cifar10_archive(tmp_path) -> tuple[str, str, dict]:
    """A tar.gz shaped like the real one, served by a file:// URL (urllib's own scheme: no network)."""
    source = tmp_path / "source"
    batches = write_cifar10(source)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return archive.as_uri(), hashlib.md5(archive.read_bytes()).hexdigest(), batches


def test_download_fetches_checks_and_unpacks_the_cifar10_archive(tmp_path, monkeypatch):
    url, md5, batches = _cifar10_archive(tmp_path)
    monkeypatch.setitem(data_mod._SOURCES, "cifar10", [(url, "cifar-10-python.tar.gz", md5)])
    target = tmp_path / "data"
    s = load_dataset("cifar10", target, download=True, val_size=0)
    assert (target / "cifar-10-batches-py" / "test_batch").is_file()
    assert s.y_test.tolist() == batches["test_batch"][b"labels"]


def test_download_with_a_wrong_checksum_is_rejected_and_leaves_no_file(tmp_path, monkeypatch):
    url, _, _ = _cifar10_archive(tmp_path)
    monkeypatch.setitem(data_mod._SOURCES, "cifar10", [(url, "cifar-10-python.tar.gz", "0" * 32)])
    target = tmp_path / "data"
    with pytest.raises(DatasetError, match="has md5 .*, expected 0{32}; the download is corrupt"):
        load_dataset("cifar10", target, download=True)
    assert list(target.iterdir()) == []


def test_failed_download_raises_dataset_error_naming_the_url(tmp_path, monkeypatch):
    url = (tmp_path / "absent.tar.gz").as_uri()
    monkeypatch.setitem(data_mod._SOURCES, "cifar100", [(url, "cifar-100-python.tar.gz", "0" * 32)])
    with pytest.raises(DatasetError, match=f"cifar100: could not download {url}"):
        load_dataset("cifar100", tmp_path / "data", download=True)


# --------------------------------------------------------------------------------------------------------
# DataSplits


def test_datasplits_rejects_labels_that_do_not_match_the_images():
    x, y = torch.zeros(4, 1, 2, 2), torch.zeros(3, dtype=torch.int64)
    with pytest.raises(DatasetError, match=r"toy: train split has images \(4, 1, 2, 2\) and labels \(3,\)"):
        DataSplits(x, y, x, y[:0].new_zeros(4), x, y.new_zeros(4), num_classes=2, input_shape=(1, 2, 2), name="toy")


def test_datasplits_rejects_labels_outside_the_classes():
    x, y = torch.zeros(2, 1, 2, 2), torch.tensor([0, 2])
    with pytest.raises(DatasetError, match=r"toy: val split has labels outside 0..1"):
        DataSplits(x, y[:1].repeat(2), x, y, x, y[:1].repeat(2), num_classes=2, input_shape=(1, 2, 2), name="toy")


def test_datasplits_repr_summarises_instead_of_printing_pixels(digits):
    assert repr(digits) == ("DataSplits(name='digits', train=1079, val=359, test=359, input_shape=(1, 8, 8), "
                            "num_classes=10, augment='none')")


def test_calibration_batch_is_a_seeded_sample_of_training_images(digits):
    batch = calibration_batch(digits, n=32, seed=7)
    assert batch.shape == (32, 1, 8, 8)
    assert torch.equal(batch, calibration_batch(digits, n=32, seed=7))
    assert not torch.equal(batch, calibration_batch(digits, n=32, seed=8))
    # Every row is a training image, unchanged.
    matches = (batch[:, None] == digits.x_train[None]).flatten(2).all(-1).any(-1)
    assert matches.all()
    assert len(calibration_batch(digits, n=10_000)) == len(digits.x_train)


# --------------------------------------------------------------------------------------------------------
# augment_batch


def _images(n: int = 16, c: int = 2, h: int = 8, w: int = 8) -> torch.Tensor:
    # Strictly positive values, so zero padding is distinguishable from image content.
    return torch.arange(1, n * c * h * w + 1, dtype=torch.float32).view(n, c, h, w)


def _crop_flip_candidates(image: torch.Tensor) -> list[tuple[int, int, bool, torch.Tensor]]:
    c, h, w = image.shape
    padded = torch.nn.functional.pad(image, (4, 4, 4, 4))
    out = []
    for dy in range(9):
        for dx in range(9):
            crop = padded[:, dy:dy + h, dx:dx + w]
            out += [(dy, dx, False, crop), (dy, dx, True, crop.flip(-1))]
    return out


def test_augment_none_returns_the_batch_unchanged():
    x = _images()
    assert augment_batch(x, "none", torch.Generator().manual_seed(0)) is x


def test_crop_flip_keeps_shape_dtype_and_device():
    x = _images()
    y = augment_batch(x, "crop_flip", torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device and y.is_contiguous()


def test_crop_flip_output_is_a_shifted_window_of_the_zero_padded_image_possibly_mirrored():
    x = _images(n=32, c=1)
    y = augment_batch(x, "crop_flip", torch.Generator().manual_seed(0))
    chosen = []
    for image, out in zip(x, y):
        found = [(dy, dx, flip) for dy, dx, flip, cand in _crop_flip_candidates(image) if torch.equal(cand, out)]
        assert found, "output is not a pad-4 crop of its input, flipped or not"
        chosen.append(found[0])
    # With 32 images both flip states and many different offsets occur (the draw is seeded: deterministic).
    assert {flip for _, _, flip in chosen} == {False, True}
    assert len({(dy, dx) for dy, dx, _ in chosen}) > 10
    # A shifted crop moves content: some image has zero padding inside its window.
    assert (y == 0).any()


def test_crop_flip_is_reproducible_with_a_seeded_generator_and_varies_between_draws():
    x = _images()
    a = augment_batch(x, "crop_flip", torch.Generator().manual_seed(3))
    b = augment_batch(x, "crop_flip", torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    gen = torch.Generator().manual_seed(3)
    first, second = augment_batch(x, "crop_flip", gen), augment_batch(x, "crop_flip", gen)
    assert not torch.equal(first, second)


def test_crop_flip_keeps_a_channels_last_batch_channels_last():
    x = _images(c=3).contiguous(memory_format=torch.channels_last)
    y = augment_batch(x, "crop_flip", torch.Generator().manual_seed(0))
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y, augment_batch(x.contiguous(), "crop_flip", torch.Generator().manual_seed(0)))


def test_unknown_augment_kind_is_rejected():
    with pytest.raises(ValueError, match="augment kind 'cutout' is not one of none, crop_flip"):
        augment_batch(_images(), "cutout", torch.Generator())


def test_crop_flip_needs_nchw_images():
    with pytest.raises(ValueError, match=r"crop_flip needs NCHW images, got shape \(4, 8\)"):
        augment_batch(torch.zeros(4, 8), "crop_flip", torch.Generator())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_crop_flip_runs_on_the_gpu_with_a_gpu_generator():
    x = _images().cuda()
    y = augment_batch(x, "crop_flip", torch.Generator(device="cuda").manual_seed(0))
    assert y.device == x.device and y.shape == x.shape

"""Shared test set-up: small thread counts (CI has 2 cores), a `cuda` marker that skips without CUDA, and the
small digits network as an ONNX file for the command-line tests."""

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def digits_onnx(tmp_path_factory):
    """The `digits_small` start network saved as ONNX, once per test module."""
    from easc.backends.onnx import save_onnx
    from easc.search.start_nets import digits_small

    path = tmp_path_factory.mktemp("digits") / "digits.onnx"
    save_onnx(digits_small(), path)
    return path


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Every test on one torch thread, restored after it: CI's two cores are shared, and the suite's tiny
    tensors gain nothing from more threads (with contention they lose a lot)."""
    try:
        import torch
    except ImportError:  # torch-free parts of the suite still run
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)

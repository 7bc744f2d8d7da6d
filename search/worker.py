"""Training one child: the unit of work every executor runs, in-process, in a worker, or as a Ray task.

A job carries the child as the IR's own file format (architecture + weights, no pickled objects of
the driver), the data set's name and the training schedule; the outcome carries the trained child in
the same format, its validation accuracy and how long it took. Any failure of one child (an
exception, a NaN loss, running out of memory) becomes a `failed` outcome with a one-line error,
so the search goes on.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

_DATA_CACHE: dict = {}  # per process: a worker loads its data set once, not once per child
_WORKER_DEVICE = {"device": None}


@dataclass
class ChildJob:
    child_id: int
    graph: bytes
    dataset: dict  # {"name", "data_dir", "seed", "download"}
    train: dict  # TrainConfig fields: epochs, batch_size, lr, weight_decay, seed, ...
    device: str | None = None  # None: the worker's own device (process pools) or cpu
    cost: float = 0.0  # expected training cost (cost.training_cost): a pool hands out the costliest first


@dataclass
class ChildOutcome:
    child_id: int
    status: str  # "done" | "failed"
    val_acc: float | None = None
    seconds: float = 0.0
    graph: bytes | None = None
    error: str = ""
    history: list = field(default_factory=list)
    started: float = 0.0  # wall clock (time.time()) when the worker began and ended the job: busy intervals
    ended: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def dataset_for(spec: dict):
    from easc.backends.torch.data import load_dataset

    options = dict(spec.get("options") or {})  # users' data sets: image_size, augment, skip_bad_images
    key = (spec["name"], spec.get("data_dir"), spec.get("seed", 0), spec.get("augment", True),
           tuple(sorted(options.items())))
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()  # one data set per process is all a search needs
        data = load_dataset(spec["name"], spec.get("data_dir"), seed=spec.get("seed", 0),
                            download=spec.get("download", False), **options)
        if not spec.get("augment", True):  # --no-augment: the paper's no-augmentation setting
            data.augment = "none"
        _DATA_CACHE[key] = data
    return _DATA_CACHE[key]


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:500]


def train_child(job: ChildJob, on_epoch=None) -> ChildOutcome:
    """Train `job`'s child and return its outcome; never raises for a failure of the child itself."""
    from easc.backends.torch import to_module, write_back
    from easc.backends.torch.train import TrainConfig, train_module
    from easc.ir import graph_from_bytes, graph_to_bytes

    start = time.perf_counter()
    started = time.time()
    try:
        graph = graph_from_bytes(job.graph, f"child {job.child_id}")
        data = dataset_for(job.dataset)
        device = job.device or _WORKER_DEVICE["device"] or "cpu"
        config = TrainConfig(device=device, quiet=True, **job.train)
        module = to_module(graph)
        result = train_module(module, data, config, on_epoch=on_epoch, evaluate_test=False)
        trained = write_back(graph, module.cpu())
        return ChildOutcome(job.child_id, "done", float(result.val_acc), time.perf_counter() - start,
                            graph_to_bytes(trained), history=list(result.history), started=started,
                            ended=time.time())
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # noqa: BLE001 - a child's failure is data for the search, not a crash
        return ChildOutcome(job.child_id, "failed", None, time.perf_counter() - start, error=_one_line(e),
                            started=started, ended=time.time())


def init_worker(device_queue, threads: int) -> None:
    """Process-pool initializer: take one device for this worker's lifetime and size torch's threads."""
    import os

    # BLAS and OpenMP pools outside torch's (numpy's and scipy's OpenBLAS, a second libgomp) otherwise start one
    # thread per core in every worker: two workers on two cores then run four threads and slow each other down.
    # The variables cover libraries loaded later (scikit-learn's, with the data set); threadpool_limits those
    # already loaded.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(limits=threads)
    _WORKER_DEVICE["device"] = device_queue.get() if device_queue is not None else "cpu"

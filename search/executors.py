"""Executors train a step's children: one at a time in-process, in a pool of worker processes (one
per device), or as Ray tasks across machines. All yield outcomes as children finish.

- `local`: in-process on one device. Simplest, and what a single GPU or a laptop wants.
- `process`: `--workers N` / `--devices a,b`: one worker process per device slot (spawned, so CUDA
  works in children); on CPU the machine's cores are split between the workers.
- `ray`: one Ray task per child asking for one GPU (or one CPU), so a search spans nodes; the driver
  keeps the controller and the experiment store. Needs `pip install 'easc[ray]'`.
"""

from __future__ import annotations

from typing import Iterable, Iterator

from .worker import ChildJob, ChildOutcome, init_worker, train_child


class ExecutorError(ValueError):
    """An executor that cannot start (unknown kind, Ray missing, bad device list)."""


class LocalExecutor:
    name = "local"

    def __init__(self, device: str = "cpu", threads: int = 1):
        import torch

        self.device = device
        if device == "cpu":
            torch.set_num_threads(threads)

    def run(self, jobs: Iterable[ChildJob]) -> Iterator[ChildOutcome]:
        for job in jobs:
            job.device = job.device or self.device
            yield train_child(job)

    def close(self):
        pass


class ProcessExecutor:
    name = "process"

    def __init__(self, devices: list, threads: int = 1):
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        for d in devices:
            queue.put(d)
        self.pool = ProcessPoolExecutor(max_workers=len(devices), mp_context=ctx, initializer=init_worker,
                                        initargs=(queue, threads))
        self.devices = devices

    def run(self, jobs: Iterable[ChildJob]) -> Iterator[ChildOutcome]:
        from concurrent.futures import as_completed

        futures = {self.pool.submit(train_child, job): job for job in jobs}
        for future in as_completed(futures):
            try:
                yield future.result()
            except Exception as e:  # a worker process died (e.g. killed by the OS)
                job = futures[future]
                yield ChildOutcome(job.child_id, "failed", error=f"worker died: {type(e).__name__}: {e}"[:500])

    def close(self):
        self.pool.shutdown(wait=True, cancel_futures=True)


class RayExecutor:
    name = "ray"

    def __init__(self, address: str | None, device: str = "cpu", workers: int = 1):
        try:
            import ray
        except ImportError:
            raise ExecutorError("--executor ray needs Ray: pip install 'easc[ray]'") from None
        self.ray = ray
        if not ray.is_initialized():
            if address:
                ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
            else:
                ray.init(num_cpus=max(1, workers), include_dashboard=False, ignore_reinit_error=True,
                         log_to_driver=False)
        gpus = 1 if device.startswith("cuda") else 0
        self.remote = ray.remote(num_gpus=gpus, num_cpus=1, max_retries=0)(_ray_train_child)
        self.device = "cuda" if gpus else "cpu"

    def run(self, jobs: Iterable[ChildJob]) -> Iterator[ChildOutcome]:
        pending = {}
        for job in jobs:
            job.device = self.device  # Ray sets CUDA_VISIBLE_DEVICES to the task's one GPU
            pending[self.remote.remote(job)] = job
        while pending:
            done, _ = self.ray.wait(list(pending), num_returns=1)
            for ref in done:
                job = pending.pop(ref)
                try:
                    yield self.ray.get(ref)
                except Exception as e:  # noqa: BLE001 - a lost node or a crashed task fails that child only
                    yield ChildOutcome(job.child_id, "failed", error=f"ray task failed: {str(e).splitlines()[0]}"[:500])

    def close(self):
        pass


def _ray_train_child(job: ChildJob) -> ChildOutcome:
    import torch

    torch.set_num_threads(1)
    return train_child(job)


def make_executor(kind: str, devices: list, workers: int, ray_address: str | None = None, threads: int = 1):
    """The executor for the options; fails before anything starts when it cannot run."""
    if kind == "ray":
        return RayExecutor(ray_address, devices[0] if devices else "cpu", workers)
    if kind not in ("local", "process"):
        raise ExecutorError(f"unknown --executor {kind!r} (local, process, ray)")
    slots = list(devices)
    if len(slots) == 1 and workers > 1:
        slots = slots * workers
    if len(slots) > 1 or kind == "process":
        return ProcessExecutor(slots, threads)
    return LocalExecutor(slots[0], threads)

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

from .config import ConfigError
from .worker import ChildJob, ChildOutcome, init_worker, train_child


class ExecutorError(ConfigError):
    """An executor that cannot start (unknown kind, Ray missing or unreachable, bad device list).

    A ConfigError: the options cannot run, so the CLI says so in one line with exit code 2.
    """


class LocalExecutor:
    name = "local"

    def __init__(self, device: str = "cpu", threads: int = 1):
        import torch

        self.device = device
        if device == "cpu":
            torch.set_num_threads(threads)

    def run(self, jobs: Iterable[ChildJob], on_epoch=None) -> Iterator[ChildOutcome]:
        """Train one job after the other; `on_epoch(child_id, epoch, loss, val_acc)` reports progress."""
        for job in jobs:
            job.device = job.device or self.device
            report = None if on_epoch is None else (lambda e, loss, acc, cid=job.child_id: on_epoch(cid, e, loss, acc))
            yield train_child(job, on_epoch=report)

    def close(self):
        pass


class ProcessExecutor:
    name = "process"

    def __init__(self, devices: list, threads: int = 1, data_spec: dict | None = None):
        self.devices = devices
        self.threads = threads
        self.data_spec = data_spec
        self.pool = self._new_pool()

    def _new_pool(self):
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        for d in self.devices:
            queue.put(d)
        pool = ProcessPoolExecutor(max_workers=len(self.devices), mp_context=ctx, initializer=init_worker,
                                   initargs=(queue, self.threads))
        # A spawn pool starts a worker only when a task finds none idle, and a worker's first child pays for
        # importing torch and loading the data set (seconds). Without this, the second worker would start in
        # the middle of step 1, after the start net trained on the first, and stall that step. One warm-up
        # task per slot, all submitted now, starts every worker at once and loads the data in each; the
        # futures are not waited for (a warm-up that fails leaves the failure to the first child).
        for _ in self.devices:
            pool.submit(_warm_up, self.data_spec)
        return pool

    def _submit_all(self, jobs: list) -> dict:
        from concurrent.futures.process import BrokenProcessPool

        try:
            return {self.pool.submit(train_child, job): job for job in jobs}
        except BrokenProcessPool:
            # A worker died in an earlier run (its children failed then); the stdlib pool stays unusable after
            # that, so the next step gets a fresh pool instead of the whole search stopping.
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = self._new_pool()
            return {self.pool.submit(train_child, job): job for job in jobs}

    def run(self, jobs: Iterable[ChildJob], on_epoch=None) -> Iterator[ChildOutcome]:
        # Children train in other processes: progress arrives per finished child, not per epoch.
        from concurrent.futures import as_completed

        futures = self._submit_all(list(jobs))
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
            try:
                if address:
                    ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
                else:
                    ray.init(num_cpus=max(1, workers), include_dashboard=False, ignore_reinit_error=True,
                             log_to_driver=False)
            except Exception as e:  # noqa: BLE001 - ConnectionError, RuntimeError, ValueError: all mean "cannot run"
                where = f"connect to the Ray cluster at {address}" if address else "start a local Ray instance"
                text = str(e).strip().splitlines()
                raise ExecutorError(f"--executor ray: cannot {where} "
                                    f"({type(e).__name__}: {text[0] if text else ''})") from None
        gpus = 1 if device.startswith("cuda") else 0
        self.remote = ray.remote(num_gpus=gpus, num_cpus=1, max_retries=0)(_ray_train_child)
        self.device = "cuda" if gpus else "cpu"

    def run(self, jobs: Iterable[ChildJob], on_epoch=None) -> Iterator[ChildOutcome]:
        # Children train in other processes: progress arrives per finished child, not per epoch.
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


def _warm_up(data_spec: dict | None) -> None:
    """Import what training a child needs and load the data set, so a new worker's first child does not pay."""
    import easc.backends.torch.module  # noqa: F401
    import easc.backends.torch.train  # noqa: F401
    from .worker import dataset_for

    if data_spec is not None:
        dataset_for(data_spec)


def _ray_train_child(job: ChildJob) -> ChildOutcome:
    import torch

    torch.set_num_threads(1)
    return train_child(job)


def make_executor(kind: str, devices: list, workers: int, ray_address: str | None = None, threads: int = 1,
                  data_spec: dict | None = None):
    """The executor for the options; fails before anything starts when it cannot run. `data_spec` (the jobs'
    data set) lets worker processes load it as they start."""
    if kind == "ray":
        return RayExecutor(ray_address, devices[0] if devices else "cpu", workers)
    if kind not in ("local", "process"):
        raise ExecutorError(f"unknown --executor {kind!r} (local, process, ray)")
    slots = list(devices)
    if len(slots) == 1 and workers > 1:
        slots = slots * workers
    if len(slots) > 1 or kind == "process":
        return ProcessExecutor(slots, threads, data_spec)
    return LocalExecutor(slots[0], threads)

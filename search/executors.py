"""Executors train a step's children: one at a time in-process, in a pool of worker processes (one
per device), or as Ray tasks across machines. All yield outcomes as children finish.

- `local`: in-process on one device. Simplest, and what a single GPU or a laptop wants.
- `process`: `--workers N` / `--devices a,b`: one worker process per device slot (spawned, so CUDA
  works in children); on CPU the machine's cores are split between the workers. A free worker takes the
  costliest child waiting (`ChildJob.cost`, longest-processing-time-first).
- `ray`: one Ray task per child asking for one GPU (or one CPU), so a search spans nodes; the driver
  keeps the controller and the experiment store. Needs `pip install 'easc[ray]'`.

Interface: `submit(job, on_epoch=None)` hands one child over and returns at once; `poll(block)` returns the
outcomes finished since the last call (`block=True`: waits for at least one while any is in flight);
`in_flight` counts the children submitted and not yet returned. The search submits each child as soon as
it is sampled and checked, so the workers train while the driver samples the next one. `run(jobs)` is the
batch form (submit all, yield as they finish).
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

        self.queue = []

    @property
    def in_flight(self) -> int:
        return len(self.queue)

    def submit(self, job: ChildJob, on_epoch=None) -> None:
        # In-process there is no other worker to keep busy, so a job trains when the driver waits for it.
        self.queue.append((job, on_epoch))

    def poll(self, block: bool = False) -> list:
        """Train the oldest submitted job (only when asked to block: training here stops the driver)."""
        if not block or not self.queue:
            return []
        job, on_epoch = self.queue.pop(0)
        job.device = job.device or self.device
        report = None if on_epoch is None else (lambda e, loss, acc, cid=job.child_id: on_epoch(cid, e, loss, acc))
        return [train_child(job, on_epoch=report)]

    def run(self, jobs: Iterable[ChildJob], on_epoch=None) -> Iterator[ChildOutcome]:
        """Train one job after the other; `on_epoch(child_id, epoch, loss, val_acc)` reports progress."""
        yield from _run(self, jobs, on_epoch)

    def close(self):
        self.queue.clear()


class ProcessExecutor:
    name = "process"

    def __init__(self, devices: list, threads: int = 1, data_spec: dict | None = None):
        self.devices = devices
        self.threads = threads
        self.data_spec = data_spec
        self.futures = {}
        self.backlog = []  # submitted, not yet handed to the pool (see _dispatch)
        self.pool = self._new_pool()

    @property
    def in_flight(self) -> int:
        return len(self.futures) + len(self.backlog)

    def _dispatch(self) -> None:
        """Hand jobs to the pool, the costliest first, at most one per free worker.

        A step ends when its last child does, so the children left for the end should be the short ones
        (longest-processing-time-first scheduling, by `cost.training_cost`). Sampling a child takes a
        fraction of training one, so by the time a worker frees most of the step's children are waiting and
        the choice is real. Queuing a job beyond the workers would spare a freed worker the driver's round
        trip (milliseconds) but commits the job early, before the costlier ones are sampled.
        """
        while self.backlog and len(self.futures) < len(self.devices):
            job = max(self.backlog, key=lambda j: (j.cost, -j.child_id))
            self.backlog.remove(job)
            self.futures[self._submit_to_pool(job)] = job

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

    def submit(self, job: ChildJob, on_epoch=None) -> None:
        # Children train in other processes: progress arrives per finished child, not per epoch.
        self.backlog.append(job)
        self._dispatch()

    def _submit_to_pool(self, job: ChildJob):
        from concurrent.futures.process import BrokenProcessPool

        try:
            return self.pool.submit(train_child, job)
        except BrokenProcessPool:
            # A worker died earlier (its children failed then); the stdlib pool stays unusable after that, so
            # the next child gets a fresh pool instead of the whole search stopping.
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = self._new_pool()
            return self.pool.submit(train_child, job)

    def poll(self, block: bool = False) -> list:
        from concurrent.futures import FIRST_COMPLETED, wait

        if not self.futures:
            return []
        done, _ = wait(list(self.futures), timeout=None if block else 0, return_when=FIRST_COMPLETED)
        finished = {f: self.futures.pop(f) for f in done}  # the freed workers get their next child at once,
        self._dispatch()  # before the driver stores this one
        outcomes = []
        for future in sorted(done, key=lambda f: finished[f].child_id):
            job = finished[future]
            try:
                outcomes.append(future.result())
            except Exception as e:  # a worker process died (e.g. killed by the OS)
                outcomes.append(ChildOutcome(job.child_id, "failed",
                                             error=f"worker died: {type(e).__name__}: {e}"[:500]))
        return outcomes

    def run(self, jobs: Iterable[ChildJob], on_epoch=None) -> Iterator[ChildOutcome]:
        yield from _run(self, jobs, on_epoch)

    def close(self):
        self.futures.clear()
        self.backlog.clear()
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
        self.pending = {}

    @property
    def in_flight(self) -> int:
        return len(self.pending)

    def submit(self, job: ChildJob, on_epoch=None) -> None:
        # Children train in other processes: progress arrives per finished child, not per epoch.
        job.device = self.device  # Ray sets CUDA_VISIBLE_DEVICES to the task's one GPU
        self.pending[self.remote.remote(job)] = job

    def poll(self, block: bool = False) -> list:
        if not self.pending:
            return []
        done, _ = self.ray.wait(list(self.pending), num_returns=1, timeout=None if block else 0)
        if done:  # take every other one that is ready too
            done, _ = self.ray.wait(list(self.pending), num_returns=len(self.pending), timeout=0)
        outcomes = []
        for ref in done:
            job = self.pending.pop(ref)
            try:
                outcomes.append(self.ray.get(ref))
            except Exception as e:  # noqa: BLE001 - a lost node or a crashed task fails that child only
                outcomes.append(ChildOutcome(job.child_id, "failed",
                                             error=f"ray task failed: {str(e).splitlines()[0]}"[:500]))
        return sorted(outcomes, key=lambda o: o.child_id)

    def run(self, jobs: Iterable[ChildJob], on_epoch=None) -> Iterator[ChildOutcome]:
        yield from _run(self, jobs, on_epoch)

    def close(self):
        self.pending.clear()


def _run(executor, jobs, on_epoch) -> Iterator[ChildOutcome]:
    """Submit every job, then yield outcomes as they finish."""
    for job in jobs:
        executor.submit(job, on_epoch)
    while executor.in_flight:
        yield from executor.poll(block=True)


def _warm_up(data_spec: dict | None) -> None:
    """Import what training a child needs, load the data set and take one optimiser step on a throwaway weight,
    so that a new worker's first child does not pay for them.

    The step matters: the first `torch.optim` optimiser of a process imports torch._dynamo, about a second on
    our 2 cores, ten digits children's worth. The start net warms only the worker that trains it; without this
    the other worker paid that second in the middle of step 1 (a step 1.4x as long as the next ones).
    """
    import torch

    import easc.backends.torch.module  # noqa: F401
    import easc.backends.torch.train  # noqa: F401
    from .worker import dataset_for

    weight = torch.zeros(2, 2, requires_grad=True)  # no random init: the worker's generators stay untouched
    optimiser = torch.optim.SGD([weight], lr=0.1, momentum=0.9, nesterov=True)
    (weight * weight).sum().backward()
    optimiser.step()
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

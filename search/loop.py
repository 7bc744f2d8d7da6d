"""The EAS search loop: sample children from the best network so far, train them, learn from them.

One run, in a run folder:

    step 0     train the start network (child 0)
    step s>=1  parent = the best child so far (highest validation accuracy, its trained weights)
               for each of `children` networks: encode the parent as layer tokens; the policy samples
               `wider_actions` Net2Wider then `deeper_actions` Net2Deeper decisions, each applied at once
               by a verified pass (so the child computes its parent's function and inherits its weights)
               and the tokens re-encoded after it
               children with a canonical hash already trained are not trained again ('cached')
               the executor trains the rest (in parallel where it can); val accuracy is the reward
               R = tan(acc pi / 2); failed children get R = 0; REINFORCE updates the policy
               the step's figures and the policy's state are committed together
               (`inherit = false` re-initialises each child's weights before training: the
               from-scratch baseline that benchmarks/bench_reuse.py compares against)

Resume: everything above lives in the experiment store (`store.py`) and `children/` (the `.easir` file
of every trained child, written before the child is marked done). `resume` restores the policy as it
was after the last completed step; the passes' generators are derived from (seed, step, index) and
training seeds likewise, so on CPU a resumed search takes the same decisions as one never stopped.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from easc.ir import (Graph, IRError, atomic_write_bytes, graph_to_bytes, init_weights, load_graph, probe_inputs,
                     structural_hash)
from easc.passes.base import FunctionNotPreservedError, ProbeSet

from .config import ConfigError, SearchConfig
from .controller import Episode, ReinforcePolicy, make_policy, reward_from_accuracy
from .executors import make_executor
from .plain_space import PlainSpace, child_rng, default_space, widths_of
from .runlock import check_unlocked
from .store import ExperimentStore, StoreError
from .worker import ChildJob, dataset_for

CHILDREN_DIR = "children"
SPLIT_FILE = "split.json"
CALIBRATION_IMAGES = 128  # enough for per-channel mean / var of a new batchnorm; cheap in numpy
PROBES = 2  # probe images per pass check in the search (the CLI uses more)

DATASET_DEFAULTS = {  # steps, child epochs: the embedded digits default must finish in minutes on 2 cores
    "digits": {"steps": 3, "epochs": 6},
    "synthetic": {"steps": 2, "epochs": 2},
}
PAPER_DEFAULTS = {"steps": 45, "epochs": 20}
# What may change between sessions of one run without changing the search it records.
RESUMABLE_OPTIONS = ("steps", "quiet", "workers", "threads", "devices", "executor", "ray_address", "data_dir",
                     "download")


@dataclass
class SearchSummary:
    run_dir: str
    steps_done: int
    start_val_acc: float | None
    best_child: int | None
    best_val_acc: float | None
    children: int
    failed: int
    seconds: float
    events: list = field(default_factory=list)


class SearchError(ConfigError):
    """A search that cannot start; one line naming the option or folder at fault.

    A ConfigError, so the CLI reports it as one line with exit code 2 like every other bad option.
    """


def resolve_defaults(config: SearchConfig) -> SearchConfig:
    """Fill the options whose default depends on the data set or the space."""
    table = DATASET_DEFAULTS.get(config.dataset, PAPER_DEFAULTS)
    if config.steps is None:
        config.steps = table["steps"]
    if config.epochs is None:
        config.epochs = table["epochs"]
    if config.start_epochs is None:
        config.start_epochs = config.epochs
    if config.wider_actions is None:
        config.wider_actions = 10 if config.space == "densenet" else 4
    from easc.backends.torch.userdata import is_path_dataset

    if config.dataset and is_path_dataset(config.dataset):
        # Recorded as an absolute path, so a resume from another folder finds the same data.
        config.dataset = str(Path(config.dataset).expanduser().resolve())
    if config.devices is None:
        config.devices = ["cpu"]
    for key in ("steps", "children", "epochs", "start_epochs", "workers", "batch_size", "threads"):
        if getattr(config, key) < 1:
            raise ConfigError(f"--{key.replace('_', '-')} must be at least 1, got {getattr(config, key)}")
    for key in ("wider_actions", "deeper_actions"):
        if getattr(config, key) < 0:
            raise ConfigError(f"--{key.replace('_', '-')} must be 0 or more, got {getattr(config, key)}")
    if not (config.widen_noise >= 0 and math.isfinite(config.widen_noise)):
        raise ConfigError(f"--widen-noise must be a finite number >= 0, got {config.widen_noise}")
    if config.strategy not in ("rl", "random"):
        raise ConfigError(f"--strategy {config.strategy!r}: use rl or random")
    if config.space not in ("plain", "densenet", "graph"):
        raise ConfigError(f"--space {config.space!r}: use plain, densenet or graph")
    return config


def data_options(config: SearchConfig) -> dict:
    """Loader options of users' data sets (image folders, .npz) that the config sets."""
    values = {"image_size": config.image_size, "augment": config.augment,
              "skip_bad_images": config.skip_bad_images or None}
    return {k: v for k, v in values.items() if v is not None}


def make_space(config: SearchConfig, input_shape):
    if config.space == "densenet":
        from .densenet_space import DenseNetSpace

        return DenseNetSpace.from_config(config, input_shape)
    if config.space == "graph" or (config.start and Path(config.start).suffix in (".onnx", ".easir")):
        # A model file can have any layout; the graph space reads its blocks and couplings from the IR (on a
        # conv-pool chain it gives the plain space's tokens).
        from .graph_space import GraphSpace

        return GraphSpace(default_space(input_shape, config), config.widen_noise)
    return PlainSpace(default_space(input_shape, config), config.widen_noise)


def default_start(config: SearchConfig, input_shape) -> str:
    if config.space == "densenet":
        return "densenet-digits" if max(input_shape[1:]) <= 16 else "densenet-bc"
    return "digits-small" if max(input_shape[1:]) <= 16 else "eas-small"


def load_start(config: SearchConfig, data) -> Graph:
    from .start_nets import START_NETS, build_start_net

    name = config.start or default_start(config, data.input_shape)
    path = Path(name)
    if path.suffix in (".onnx", ".easir") or path.exists():
        from easc.backends.formats import load_model

        graph = load_model(path)
    else:
        from .densenet_start import DENSENET_START_NETS

        if name not in START_NETS and name not in DENSENET_START_NETS:
            raise ConfigError(f"--start {name!r}: not a built-in start net "
                              f"({', '.join(sorted([*START_NETS, *DENSENET_START_NETS]))}) nor a model file")
        graph = build_start_net(name, data.input_shape, data.num_classes, config.seed)
    inputs = graph.inputs
    if len(inputs) != 1 or inputs[0].type.sample_shape != tuple(data.input_shape):
        raise ConfigError(f"--start {name}: the network takes {[n.type.sample_shape for n in inputs]} but "
                          f"{config.dataset} images are {tuple(data.input_shape)}")
    out = graph.node(next(iter(graph.outputs.values())))
    if out.type.rank != 2 or out.type.channels != data.num_classes:
        raise ConfigError(f"--start {name}: output {out.type} does not match {data.num_classes} classes")
    return graph


def reinitialised(graph: Graph, rng: np.random.Generator) -> Graph:
    """The same architecture with fresh weights, as a new build would have them (`init_weights`).

    For `inherit = false`: the baseline that trains every child from scratch, to measure what weight
    reuse buys (benchmarks/bench_reuse.py). The child is still produced by verified passes; only its
    weights are thrown away before training.
    """
    nodes = [n.replace(weights=init_weights(n.op, {k: w.shape for k, w in n.weights.items()}, n.attrs, rng))
             if n.weights else n for n in graph.nodes]
    return graph.replace(nodes=nodes)


def calibration_images(data, seed: int) -> np.ndarray:
    g = np.random.default_rng(seed)
    n = min(CALIBRATION_IMAGES, len(data.x_train))
    idx = np.sort(g.choice(len(data.x_train), size=n, replace=False))
    return data.x_train[idx].numpy().astype(np.float32)


class Search:
    """One search run. `Search.start(config, out)` for a new run, `Search.resume(out)` to continue one."""

    def __init__(self, config: SearchConfig, run_dir: Path, store: ExperimentStore, on_event=None):
        import torch

        from easc.backends.torch.train import resolve_device

        # The driver's own tensor work (sampling, checking each pass on probes, the controller's update) is
        # small, and with workers training on every core more threads only contend: on 2 cores, a 4-child step
        # with 2 worker processes took 12 s with torch's default threads in the driver and 3 s with one.
        torch.set_num_threads(config.threads)
        self.config = config
        self.run_dir = run_dir
        self.store = store
        self.on_event = on_event or (lambda kind, **info: None)
        for device in config.devices:
            resolve_device(device)
        self.data_spec = {"name": config.dataset, "data_dir": config.data_dir, "seed": config.seed,
                          "download": config.download, "options": data_options(config)}
        self.data = dataset_for(self.data_spec)
        self.space = make_space(config, self.data.input_shape)
        self.start_graph = load_start(config, self.data)
        if config.strategy == "rl":
            self.policy = ReinforcePolicy(self.space.space, config.seed, lr=config.controller_lr,
                                          entropy_bonus=config.entropy)
        else:
            self.policy = make_policy(config.strategy, self.space.space, config.seed)
        self.calibration = calibration_images(self.data, config.seed)
        self.executor = None
        # Made now, not at the first child: an executor that cannot run (Ray missing or unreachable) must fail
        # before `start` creates the run folder or `resume` touches the store.
        self._executor()

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def start(cls, config: SearchConfig, out, on_event=None) -> "Search":
        config = resolve_defaults(config)
        run_dir = Path(out)
        check_unlocked(run_dir)  # a search running there: name its process, not "already holds a search"
        if (run_dir / "search.sqlite").exists():
            raise SearchError(f"{run_dir}: already holds a search; use --resume {run_dir} or another --out")
        if run_dir.exists() and not run_dir.is_dir():
            raise SearchError(f"{run_dir}: exists and is not a folder")
        if run_dir.is_dir() and any(run_dir.iterdir()):
            raise SearchError(f"{run_dir}: is not empty; give a new or empty --out folder")
        # Everything that can fail on bad options is checked before the run folder is created.
        created = not run_dir.exists()
        search = cls(config, run_dir, None, on_event)
        owned = False  # cleaned up on failure only once we hold the lock on a folder no other search took
        try:
            store = ExperimentStore(run_dir, lock=True)  # creates the folder; the lock is held until close()
            if store.config() is not None:  # another `easc search` got there between our checks and the lock
                store.close()
                raise SearchError(f"{run_dir}: already holds a search; use --resume {run_dir} or another --out")
            owned = True
            (run_dir / CHILDREN_DIR).mkdir(exist_ok=True)
            store.record_config(config.to_dict(), strategy=config.strategy)
            if search.data.split_record is not None:  # which image went to which split (users' data sets)
                atomic_write_bytes(run_dir / SPLIT_FILE, json.dumps(search.data.split_record).encode())
        except BaseException:
            search.close()
            if owned:
                store.close()
            if created and owned:
                import shutil

                shutil.rmtree(run_dir, ignore_errors=True)
            raise
        search.store = store
        return search

    @classmethod
    def resume(cls, out, overrides: dict | None = None, on_event=None) -> "Search":
        run_dir = Path(out)
        store = ExperimentStore.open_existing(run_dir, lock=True)
        try:
            saved = store.config()
            if saved is None:
                raise StoreError(f"{run_dir}: the run folder has no saved configuration")
            values = dict(saved)
            for key, value in (overrides or {}).items():
                if value is None:
                    continue
                if key in RESUMABLE_OPTIONS:
                    values[key] = value
                elif value != saved.get(key):
                    # Silently ignoring it would run a different search than the user asked for.
                    raise ConfigError(f"--{key.replace('_', '-')} {value}: cannot change when resuming {run_dir} "
                                      f"(recorded: {saved.get(key)}); only "
                                      f"{', '.join('--' + k.replace('_', '-') for k in RESUMABLE_OPTIONS)} can")
            try:
                config = SearchConfig(**values)
            except TypeError as e:  # e.g. a key this easc does not know: a corrupt (or newer) run, one line
                raise StoreError(f"{run_dir}: the saved configuration cannot be read ({e})") from None
            config = resolve_defaults(config)
            search = cls(config, run_dir, store, on_event)
        except BaseException:
            store.close()
            raise
        lost = store.mark_in_flight_lost()
        if lost:
            search.on_event("lost", count=lost)
        return search

    # -- the loop ----------------------------------------------------------------------------
    def _weights_path(self, child_id: int) -> Path:
        return self.run_dir / CHILDREN_DIR / f"child_{child_id}.easir"

    def _train_config(self, epochs: int, child_seed: int) -> dict:
        c = self.config
        return {"epochs": epochs, "batch_size": c.batch_size, "lr": c.lr, "weight_decay": c.weight_decay,
                "seed": child_seed}

    def _executor(self):
        if self.executor is None:
            kind = self.config.executor
            if kind == "local" and (self.config.workers > 1 or len(self.config.devices) > 1):
                kind = "process"
            self.executor = make_executor(kind, self.config.devices, self.config.workers, self.config.ray_address,
                                          self.config.threads, self.data_spec)
        return self.executor

    def _best_child(self):
        best = None
        for child in self.store.children():
            if child.status in ("done", "cached") and child.val_acc is not None and child.weights_path:
                if best is None or child.val_acc > best.val_acc:
                    best = child
        return best

    def _train_start(self):
        done = [c for c in self.store.children(step=0) if c.status == "done"]
        if done:
            return done[0]
        graph = self.start_graph
        child_id = self.store.add_child(step=0, parent_id=None, actions=[], hash=structural_hash(graph),
                                        widths=widths_of(graph), depth=graph.depth, params=graph.params)
        self.on_event("step_start", step=0, children=1, steps=self.config.steps)
        outcomes = self._train([(child_id, graph, self.config.start_epochs, self.config.seed)])
        outcome = outcomes[child_id]
        if outcome.status != "done":
            raise SearchError(f"the start network failed to train: {outcome.error}")
        return self.store.child(child_id)

    def _train(self, items) -> dict:
        """Train [(child_id, graph, epochs, seed)] through the executor; store each outcome as it lands."""
        jobs = []
        for child_id, graph, epochs, seed in items:
            self.store.start_child(child_id)
            jobs.append(ChildJob(child_id, graph_to_bytes(graph), self.data_spec, self._train_config(epochs, seed)))
        outcomes = {}
        def on_epoch(child_id, epoch, loss, val_acc):
            self.on_event("child_epoch", child=child_id, epoch=epoch, epochs=epochs_of[child_id], val_acc=val_acc)

        epochs_of = {child_id: epochs for child_id, _, epochs, _ in items}
        for outcome in self._executor().run(jobs, on_epoch=on_epoch):
            outcomes[outcome.child_id] = outcome
            if outcome.status == "done":
                path = self._weights_path(outcome.child_id)
                atomic_write_bytes(path, outcome.graph)  # on disk before the store says 'done'
                self.store.finish_child(outcome.child_id, val_acc=outcome.val_acc,
                                        reward=reward_from_accuracy(outcome.val_acc),
                                        train_seconds=outcome.seconds, weights_path=str(path))
            else:
                self.store.fail_child(outcome.child_id, outcome.error, train_seconds=outcome.seconds)
            self.on_event("child_done", child=outcome.child_id, status=outcome.status, val_acc=outcome.val_acc,
                          error=outcome.error, seconds=outcome.seconds)
        return outcomes

    def _sample_child(self, parent: Graph, step: int, index: int):
        """Apply one sampled network's decisions to `parent`: (child graph, decisions, action records)."""
        rng = child_rng(self.config.seed, step, index)
        probes = ProbeSet(probe_inputs(parent, PROBES, seed=step * 1000 + index))  # outputs reused along the chain
        graph, decisions, records = parent, [], []
        for kind, count in (("wider", self.config.wider_actions), ("deeper", self.config.deeper_actions)):
            for _ in range(count):
                tokens = self.space.tokens(graph)
                if kind == "wider":
                    decision = self.policy.sample_wider(tokens)
                    graph, recs = self.space.apply_wider(graph, decision, rng, probes, self.calibration)
                else:
                    decision = self.policy.sample_deeper(tokens)
                    graph, recs = self.space.apply_deeper(graph, decision, rng, probes, self.calibration)
                decisions.append(decision)
                records.extend(recs)
        return graph, decisions, records

    def run_step(self, step: int):
        parent_rec = self._best_child()
        parent = load_graph(self.run_dir / parent_rec.weights_path)
        self.on_event("step_start", step=step, steps=self.config.steps, children=self.config.children,
                      parent=parent_rec.id, parent_acc=parent_rec.val_acc)
        episodes_decisions, child_ids, to_train, same_as = [], [], [], {}
        hashes_this_step = {}
        for index in range(self.config.children):
            try:
                graph, decisions, records = self._sample_child(parent, step, index)
            except (FunctionNotPreservedError, IRError) as e:
                # A pass that broke the function is a bug to report, not a child to train.
                child_id = self.store.add_child(step=step, parent_id=parent_rec.id, actions=[], hash="",
                                                widths=[], depth=0, params=0, status="failed",
                                                error=f"transformation failed: {str(e).splitlines()[0]}",
                                                reward=0.0)
                child_ids.append(child_id)
                episodes_decisions.append([])
                continue
            h = structural_hash(graph)
            common = dict(step=step, parent_id=parent_rec.id, actions=records, hash=h, widths=widths_of(graph),
                          depth=graph.depth, params=graph.params)
            earlier = self.store.find_done_by_hash(h)
            if earlier is not None:
                child_id = self.store.add_child(**common, status="cached", val_acc=earlier.val_acc,
                                                reward=earlier.reward, train_seconds=0.0,
                                                weights_path=str(self.run_dir / earlier.weights_path))
            elif h in hashes_this_step:
                child_id = self.store.add_child(**common)
                same_as[child_id] = hashes_this_step[h]
            else:
                child_id = self.store.add_child(**common)
                hashes_this_step[h] = child_id
                seed = int(np.random.default_rng([self.config.seed, step, index, 7]).integers(2**31))
                if not self.config.inherit:
                    graph = reinitialised(graph, np.random.default_rng([self.config.seed, step, index, 11]))
                to_train.append((child_id, graph, self.config.epochs, seed))
            child_ids.append(child_id)
            episodes_decisions.append(decisions)
        self._train(to_train)
        for child_id, first in same_as.items():
            rec = self.store.child(first)
            if rec.status == "done":
                self.store.update_child(child_id, status="cached", val_acc=rec.val_acc, reward=rec.reward,
                                        train_seconds=0.0, weights_path=str(self.run_dir / rec.weights_path))
            else:
                self.store.update_child(child_id, status="failed", error=f"same architecture as child {first}, "
                                        f"which failed", reward=0.0)
        records = [self.store.child(c) for c in child_ids]
        accs = [r.val_acc if r.status in ("done", "cached") else None for r in records]
        episodes = [Episode.from_accuracy(d, a) for d, a in zip(episodes_decisions, accs) if d]
        stats = self.policy.update(episodes) if episodes else {"mean_reward": 0.0, "baseline": None}
        good = [a for a in accs if a is not None]
        mean_acc = float(np.mean(good)) if good else None
        best_acc = float(max(good)) if good else None
        self.store.record_step(step, mean_val_acc=mean_acc, best_val_acc=best_acc,
                               mean_reward=float(np.mean([reward_from_accuracy(a) for a in accs])),
                               baseline=stats.get("baseline"), n_children=len(records),
                               controller_state=self.policy.state_dict())
        self.on_event("step_done", step=step, mean_val_acc=mean_acc, best_val_acc=best_acc,
                      baseline=stats.get("baseline"))

    def run(self) -> SearchSummary:
        from threadpoolctl import threadpool_limits

        t0 = time.perf_counter()
        # The driver's numpy work (pass checks, calibration) uses BLAS; on a machine whose cores are busy
        # training children, extra BLAS threads only contend with them (10x slower seen on 2 cores).
        try:
            with threadpool_limits(limits=self.config.threads):
                start = self._train_start()
                last = self.store.last_completed_step() or 0
                if last:
                    self.policy.load_state_dict(self.store.load_controller_state(last))
                for step in range(last + 1, self.config.steps + 1):
                    self.run_step(step)
        finally:
            self._close_executor()
        best = self._best_child()
        children = self.store.children()
        return SearchSummary(str(self.run_dir), self.store.last_completed_step() or 0, start.val_acc,
                             best.id if best else None, best.val_acc if best else None, len(children),
                             sum(c.status == "failed" for c in children), time.perf_counter() - t0)

    def _close_executor(self):
        if self.executor is not None:
            self.executor.close()
            self.executor = None  # a later run() makes a new one

    def close(self):
        self._close_executor()
        if self.store is not None:
            self.store.close()


def summary_json(summary: SearchSummary) -> str:
    return json.dumps({"run": summary.run_dir, "steps": summary.steps_done, "start_val_acc": summary.start_val_acc,
                       "best_child": summary.best_child, "best_val_acc": summary.best_val_acc,
                       "children": summary.children, "failed": summary.failed,
                       "seconds": round(summary.seconds, 1)})



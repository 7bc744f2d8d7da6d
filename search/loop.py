"""The EAS search loop: sample children from a stage's start net (or the best so far), train, learn.

One run, in a run folder, in stages (`--stages N1,N2,...` networks each; one stage of `--steps` steps when
not given):

    step 0       train the start network (the start net of stage 1)
    stage k > 1  at its first step: the best network of the earlier stages (highest validation accuracy, of
                 completed steps only) is trained further for `stage_epochs` and becomes the stage's start net
    step s >= 1  parent = the stage's start net (`--parent start`, EAS: every child of a stage is a fresh copy
                 of that net with its trained weights) or the best network so far (`--parent best`, easc's
                 hill climb), in either case taken from completed steps only
                 for each of `children` networks: encode the parent as layer tokens; the policy samples
                 `wider_actions` Net2Wider then `deeper_actions` Net2Deeper decisions, each applied at once
                 by a verified pass (so the child computes its parent's function and inherits its weights)
                 and the tokens re-encoded after it; masks keep every action within the space's limits
                 (layers per block, tokens in all, `--max-params`)
                 each child goes to the executor as soon as it is sampled and checked, so the workers train
                 while the driver samples the next one, and a free worker takes the costliest child waiting
                 (`cost.py`); children of one parent share one probe set and its calibration statistics
                 children with a canonical hash already trained (in an earlier step, or earlier in this
                 step) are not trained again ('cached')
                 after every reward of the step: R = tan(acc pi / 2); failed children get R = 0; REINFORCE
                 updates the policy; the step's figures and the policy's state are committed together
                 (`inherit = false` re-initialises each child's weights before training: the
                 from-scratch baseline that benchmarks/bench_reuse.py compares against)

Resume: everything above lives in the experiment store (`store.py`) and `children/` (the `.easir` file
of every trained child, written before the child is marked done). `resume` restores the policy as it
was after the last completed step and runs the next step again. Every child has a slot (step, index) and
every stage start net one (stage): a rerun step finds its slots, keeps what finished (same architecture
hash) and trains again, in the same row, what was in flight ('lost'). The passes' generators are derived
from (seed, step, index), training seeds likewise, the parent and a stage's start net from completed steps
only, so on CPU a resumed search takes the same decisions, row for row, as one never stopped, whatever
the moment of the kill (tests: `killpoints.py`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from easc.ir import (Graph, IRError, atomic_write_bytes, graph_to_bytes, init_weights, load_graph, probe_inputs,
                     structural_hash)
from easc.passes.base import FunctionNotPreservedError, ProbeSet

from .config import ConfigError, SearchConfig, check_config, validate
from .controller import Episode, ReinforcePolicy, make_policy, reward_from_accuracy
from .cost import training_cost
from .executors import make_executor
from .killpoints import kill_point
from .limits import limit_tokens
from .plain_space import PlainSpace, child_rng, default_space, widths_of
from .runlock import LOCK_FILE, check_unlocked
from .store import ExperimentStore, StoreError
from .tokens import deepen_points
from .worker import ChildJob, dataset_for

CHILDREN_DIR = "children"
SPLIT_FILE = "split.json"
CALIBRATION_IMAGES = 64  # per-channel mean / var of a new batchnorm: 64 x H x W samples per conv channel; cheap in numpy
PROBES = 2  # probe images per pass check in the search (the CLI uses more)

DATASET_DEFAULTS = {  # steps, child epochs: the embedded digits default must finish in minutes on 2 cores
    "digits": {"steps": 3, "epochs": 6},
    "synthetic": {"steps": 2, "epochs": 2},
}
PAPER_DEFAULTS = {"steps": 45, "epochs": 20}
# What may change between sessions of one run without changing the search it records.
RESUMABLE_OPTIONS = ("steps", "quiet", "workers", "threads", "devices", "executor", "ray_address", "data_dir",
                     "download")
PLAIN_LIMITS = {"max_layers_per_block": 10, "max_layers": 50}  # the released EAS code's depth limits


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


def resolve_defaults(config: SearchConfig, where: str | None = None) -> SearchConfig:
    """Check every option against the schema, then fill those whose default depends on the data set or space."""
    check_config(config, where)
    table = DATASET_DEFAULTS.get(config.dataset, PAPER_DEFAULTS)
    if config.steps is None:
        config.steps = sum(stage_steps(config)) if config.stages else table["steps"]
    if config.epochs is None:
        config.epochs = table["epochs"]
    if config.start_epochs is None:
        config.start_epochs = config.epochs
    if config.stage_epochs is None:
        config.stage_epochs = config.epochs
    if config.wider_actions is None:
        config.wider_actions = 10 if config.space == "densenet" else 4
    from easc.backends.torch.userdata import is_path_dataset

    if config.dataset and is_path_dataset(config.dataset):
        # Recorded as an absolute path, so a resume from another folder finds the same data.
        config.dataset = str(Path(config.dataset).expanduser().resolve())
    # DenseNets grow deep by design (the paper's reach depth 76), and so do imported networks (a DenseNet-121
    # has 120 layers): the released code's depth caps apply to plain conv-pool chains only.
    if config.space == "plain" and not uses_graph_space(config):
        for key, value in PLAIN_LIMITS.items():
            if getattr(config, key) is None:
                setattr(config, key, value)
    if config.devices is None:
        config.devices = ["cpu"]
    return config


def stage_steps(config: SearchConfig) -> list:
    """Controller steps per stage: ceil(networks / children) each; one stage of `steps` without --stages."""
    if not config.stages:
        return [config.steps]
    return [math.ceil(n / config.children) for n in config.stages]


def stage_first_steps(config: SearchConfig) -> list:
    """The first step of each stage (stage 1 starts at step 1; its start net is trained at step 0)."""
    firsts, step = [], 1
    for n in stage_steps(config):
        firsts.append(step)
        step += n
    return firsts


def data_options(config: SearchConfig) -> dict:
    """Loader options of users' data sets (image folders, .npz) that the config sets."""
    values = {"image_size": config.image_size, "augment": config.augmentation,
              "skip_bad_images": config.skip_bad_images or None}
    return {k: v for k, v in values.items() if v is not None}


def uses_graph_space(config: SearchConfig) -> bool:
    """--space graph, or the default space with a model file as the start net: any layout can come in a
    file, and the graph space reads its blocks and couplings from the IR (on a conv-pool chain it gives the
    plain space's tokens)."""
    if config.space == "graph":
        return True
    return config.space == "plain" and bool(config.start) and Path(config.start).suffix in (".onnx", ".easir")


def make_space(config: SearchConfig, input_shape):
    if config.space == "densenet":
        from .densenet_space import DenseNetSpace

        return DenseNetSpace.from_config(config, input_shape)
    space = default_space(input_shape, config)
    # 0: no limit (the space's None)
    space = dataclasses.replace(space, max_layers_per_block=config.max_layers_per_block or None,
                                max_layers=config.max_layers or None)
    if uses_graph_space(config):
        from .graph_space import GraphSpace

        return GraphSpace(space, config.widen_noise)
    return PlainSpace(space, config.widen_noise)


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
                          "download": config.download, "augment": config.augment,
                          "options": data_options(config)}
        self.data = dataset_for(self.data_spec)
        self.space = make_space(config, self.data.input_shape)
        self.start_graph = load_start(config, self.data)
        if config.strategy == "rl":
            self.policy = ReinforcePolicy(self.space.space, config.seed, lr=config.controller_lr,
                                          entropy_bonus=config.entropy)
        else:
            self.policy = make_policy(config.strategy, self.space.space, config.seed)
        self.calibration = calibration_images(self.data, config.seed)
        self.first_steps = stage_first_steps(config)
        self._probes = (None, None)  # (parent id, its ProbeSet): one probe set per parent
        self._parent_graph = (None, None)  # (parent id, its graph)
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
            # Two searches started together on one new folder: the other may have created it since our first
            # check. Name what is there (a running search, or one that got started) rather than "not empty".
            check_unlocked(run_dir)
            if (run_dir / LOCK_FILE).exists():
                raise SearchError(f"{run_dir}: already holds a search; use --resume {run_dir} or another --out")
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
        given = {k: v for k, v in (overrides or {}).items() if v is not None}
        validate(given)  # a bad flag is refused before the run folder is opened
        store = ExperimentStore.open_existing(run_dir, lock=True)
        try:
            saved = store.config()
            if saved is None:
                raise StoreError(f"{run_dir}: the run folder has no saved configuration")
            values = {**{f.name: f.default for f in dataclasses.fields(SearchConfig)
                         if f.default is not dataclasses.MISSING}, **saved}
            for key, value in given.items():
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
            config = resolve_defaults(config, where=f"{run_dir} (saved configuration)")
            search = cls(config, run_dir, store, on_event)
        except BaseException:
            store.close()
            raise
        lost = store.mark_in_flight_lost()
        if lost:
            search.on_event("lost", count=lost)
        return search

    # -- stages ------------------------------------------------------------------------------
    def stage_of(self, step: int) -> int:
        """The stage a step belongs to (steps past the last stage's networks continue the last stage)."""
        return max(1, sum(1 for first in self.first_steps if first <= step))

    def _stage_source(self, stage: int):
        """The network a stage starts from: (record of the source network or None, graph)."""
        if stage == 1:
            return None, self.start_graph
        source = self.store.best_before(self.first_steps[stage - 1])
        return source, load_graph(self.run_dir / source.weights_path)

    def _stage_start(self, stage: int):
        """The trained start net of `stage`, trained now if it is not yet (a stage boundary)."""
        rec = self.store.slot(0, "start", stage=stage)
        if rec is not None and rec.status == "done":
            return rec
        first = 0 if stage == 1 else self.first_steps[stage - 1]
        source, graph = self._stage_source(stage)
        if stage == 1:
            epochs, seed = self.config.start_epochs, self.config.seed
        else:
            epochs = self.config.stage_epochs
            seed = int(np.random.default_rng([self.config.seed, first, 5]).integers(2**31))
        fields = dict(parent_id=source.id if source else None, actions=[], hash=structural_hash(graph),
                      widths=widths_of(graph), depth=graph.depth, params=graph.params)
        if rec is None:
            child_id = self.store.add_child(step=first, stage=stage, role="start", **fields)
        else:  # lost in flight (or failed) by an earlier session: trained again in the same row
            child_id = rec.id
            self.store.update_child(child_id, status="pending", error=None, finished=None, **fields)
        self.on_event("stage_start", stage=stage, step=first, source=source.id if source else None,
                      source_acc=source.val_acc if source else None, epochs=epochs)
        if stage == 1:
            self.on_event("step_start", step=0, children=1, steps=self.config.steps)
        kill_point("stage_start", first)
        self._submit(child_id, graph, epochs, seed)
        outcome = self._drain()[child_id]
        if outcome.status != "done":
            what = "the start network" if stage == 1 else f"the start net of stage {stage}"
            raise SearchError(f"{what} failed to train: {outcome.error}")
        kill_point("stage_started", first)
        return self.store.child(child_id)

    # -- training ----------------------------------------------------------------------------
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
            self._outcomes = {}
        return self.executor

    def _submit(self, child_id: int, graph: Graph, epochs: int, seed: int) -> None:
        """Hand one child to the executor at once (it trains while the driver samples the next)."""
        self.store.start_child(child_id)

        def on_epoch(cid, epoch, loss, val_acc):
            self.on_event("child_epoch", child=cid, epoch=epoch, epochs=epochs, val_acc=val_acc)

        job = ChildJob(child_id, graph_to_bytes(graph), self.data_spec, self._train_config(epochs, seed),
                       cost=training_cost(graph, epochs))
        self._executor().submit(job, on_epoch)

    def _collect(self, block: bool) -> list:
        """Store the outcomes that have landed (waiting for one if `block`); returns them."""
        landed = self._executor().poll(block=block)
        for outcome in landed:
            if outcome.status == "done":
                path = self._weights_path(outcome.child_id)
                atomic_write_bytes(path, outcome.graph)  # on disk before the store says 'done'
                self.store.finish_child(outcome.child_id, val_acc=outcome.val_acc,
                                        reward=reward_from_accuracy(outcome.val_acc),
                                        train_seconds=outcome.seconds, weights_path=str(path))
            else:
                self.store.fail_child(outcome.child_id, outcome.error, train_seconds=outcome.seconds)
            self._outcomes[outcome.child_id] = outcome
            self.on_event("child_done", child=outcome.child_id, status=outcome.status, val_acc=outcome.val_acc,
                          error=outcome.error, seconds=outcome.seconds, started=outcome.started,
                          ended=outcome.ended)
        return landed

    def _drain(self) -> dict:
        """Wait for every child in flight; {child id: outcome} of all collected since the last drain."""
        while self._executor().in_flight:
            self._collect(block=True)
        outcomes, self._outcomes = self._outcomes, {}
        return outcomes

    # -- sampling ----------------------------------------------------------------------------
    def _probe_set(self, parent_id: int, parent: Graph) -> ProbeSet:
        """One probe set per parent: its outputs on the probes are computed once for all its children."""
        if self._probes[0] != parent_id:
            self._probes = (parent_id, ProbeSet(probe_inputs(parent, PROBES, seed=parent_id)))
        return self._probes[1]

    def _parent_and_probes(self, parent_rec) -> tuple:
        """The parent's graph, loaded once per parent (under --parent start, once per stage), and its probe set.

        Keeping the same graph object keeps the probe set's memory of its outputs, which is keyed by the graph.
        """
        if self._parent_graph[0] != parent_rec.id:
            self._parent_graph = (parent_rec.id, load_graph(self.run_dir / parent_rec.weights_path))
        parent = self._parent_graph[1]
        return parent, self._probe_set(parent_rec.id, parent)

    def _tokens(self, graph: Graph) -> list:
        tokens = self.space.tokens(graph)
        if self.config.max_params is not None:
            tokens = limit_tokens(graph, tokens, self.space.space, self.config.max_params)
        return tokens

    def _sample_child(self, parent: Graph, probes: ProbeSet, step: int, index: int):
        """Apply one sampled network's decisions to `parent`: (child graph, decisions, action records)."""
        rng = child_rng(self.config.seed, step, index)
        graph, decisions, records = parent, [], []
        self.space.start_chain(parent, self.calibration)  # once per parent: its children's passes carry it on
        for kind, count in (("wider", self.config.wider_actions), ("deeper", self.config.deeper_actions)):
            for _ in range(count):
                tokens = self._tokens(graph)
                if kind == "wider":
                    decision = self.policy.sample_wider(tokens)
                    new, recs = self.space.apply_wider(graph, decision, rng, probes, self.calibration)
                else:
                    if not any(any(block) for block in deepen_points(tokens, self.policy.space)):
                        # Every deepening point is masked (layer limits): there is no action to take, and no
                        # random number is drawn for it.
                        records.append({"pass": "deepen", "skipped": "every layer is at the search's limits"})
                        continue
                    decision = self.policy.sample_deeper(tokens)
                    new, recs = self.space.apply_deeper(graph, decision, rng, probes, self.calibration)
                if self.config.max_params is not None and new.params > self.config.max_params:
                    # The masks use an upper estimate; this exact check is the guarantee.
                    recs = [{**r, "skipped": f"{new.params} parameters would exceed --max-params "
                                             f"{self.config.max_params}"} for r in recs]
                    new = graph
                graph = new
                decisions.append(decision)
                records.extend(recs)
        if hasattr(self.space, "finish_episode"):  # the DenseNet space's stem and transitions
            finished = self.space.finish_episode(graph, rng, probes, records)
            if self.config.max_params is None or finished.params <= self.config.max_params:
                graph = finished
            else:
                records.append({"pass": "widen_transitions", "skipped": f"{finished.params} parameters would "
                                f"exceed --max-params {self.config.max_params}"})
        return graph, decisions, records

    def _parent(self, step: int, stage: int):
        start = self._stage_start(stage)
        if self.config.parent == "start" or step == self.first_steps[stage - 1]:
            return start
        return self.store.best_before(step)

    # -- the loop ----------------------------------------------------------------------------
    def run_step(self, step: int):
        stage = self.stage_of(step)
        parent_rec = self._parent(step, stage)
        parent, probes = self._parent_and_probes(parent_rec)
        self.on_event("step_start", step=step, steps=self.config.steps, children=self.config.children,
                      parent=parent_rec.id, parent_acc=parent_rec.val_acc, stage=stage)
        episodes_decisions, child_ids, same_as, first_of_hash = [], [], {}, {}
        self._outcomes = {}

        def collect(block):
            had = bool(self._outcomes)
            self._collect(block)
            if not had and self._outcomes:
                kill_point("child_done", step)

        for index in range(self.config.children):
            if index == self.config.children // 2:
                kill_point("sampling", step)
            slot = self.store.slot(step, "child", index)
            try:
                graph, decisions, records = self._sample_child(parent, probes, step, index)
            except (FunctionNotPreservedError, IRError) as e:
                # A pass that broke the function is a bug to report, not a child to train.
                fields = dict(parent_id=parent_rec.id, actions=[], hash="", widths=[], depth=0, params=0,
                              status="failed", error=f"transformation failed: {str(e).splitlines()[0]}",
                              reward=0.0)
                child_ids.append(self._place(slot, step, stage, index, fields))
                episodes_decisions.append([])
                continue
            h = structural_hash(graph)
            fields = dict(parent_id=parent_rec.id, actions=records, hash=h, widths=widths_of(graph),
                          depth=graph.depth, params=graph.params)
            if slot is not None and slot.hash == h and slot.status in ("done", "failed", "cached"):
                child_id = slot.id  # finished before the interruption: its result stands
            elif h in first_of_hash:  # trained once per step: this one waits for the first
                child_id = self._place(slot, step, stage, index, {**fields, "status": "pending"})
                same_as[child_id] = first_of_hash[h]
            elif (earlier := self.store.find_done_by_hash(h, before_step=step)) is not None:
                child_id = self._place(slot, step, stage, index, {
                    **fields, "status": "cached", "val_acc": earlier.val_acc, "reward": earlier.reward,
                    "train_seconds": 0.0, "weights_path": str(self.run_dir / earlier.weights_path)})
            else:
                child_id = self._place(slot, step, stage, index, {**fields, "status": "pending"})
                seed = int(np.random.default_rng([self.config.seed, step, index, 7]).integers(2**31))
                if not self.config.inherit:
                    graph = reinitialised(graph, np.random.default_rng([self.config.seed, step, index, 11]))
                self._submit(child_id, graph, self.config.epochs, seed)
            first_of_hash.setdefault(h, child_id)
            child_ids.append(child_id)
            episodes_decisions.append(decisions)
            collect(block=False)
        while self._executor().in_flight:
            collect(block=True)
        self._outcomes = {}
        for child_id, first in same_as.items():
            rec = self.store.child(first)
            if rec.status in ("done", "cached"):
                self.store.update_child(child_id, status="cached", val_acc=rec.val_acc, reward=rec.reward,
                                        train_seconds=0.0, weights_path=str(self.run_dir / rec.weights_path))
            else:
                self.store.update_child(child_id, status="failed", error=f"same architecture as child {first}, "
                                        f"which failed", reward=0.0)
        records = [self.store.child(c) for c in child_ids]
        accs = [r.val_acc if r.status in ("done", "cached") else None for r in records]
        episodes = [Episode.from_accuracy(d, a) for d, a in zip(episodes_decisions, accs) if d]
        stats = self.policy.update(episodes) if episodes else {"mean_reward": 0.0, "baseline": None}
        kill_point("controller_update", step)
        good = [a for a in accs if a is not None]
        mean_acc = float(np.mean(good)) if good else None
        best_acc = float(max(good)) if good else None
        self.store.record_step(step, mean_val_acc=mean_acc, best_val_acc=best_acc,
                               mean_reward=float(np.mean([reward_from_accuracy(a) for a in accs])),
                               baseline=stats.get("baseline"), n_children=len(records),
                               controller_state=self.policy.state_dict(), stage=stage)
        self.on_event("step_done", step=step, mean_val_acc=mean_acc, best_val_acc=best_acc,
                      baseline=stats.get("baseline"), stage=stage)
        kill_point("between_steps", step)

    def _place(self, slot, step: int, stage: int, index: int, fields: dict) -> int:
        """Write a child into its slot: a new row, or the row an interrupted run left (same id)."""
        if slot is None:
            return self.store.add_child(step=step, stage=stage, idx=index, **fields)
        reset = {"val_acc": None, "reward": None, "train_seconds": None, "error": None, "weights_path": None,
                 "finished": None, **fields}
        self.store.update_child(slot.id, **reset)
        return slot.id

    def run(self) -> SearchSummary:
        from threadpoolctl import threadpool_limits

        t0 = time.perf_counter()
        # The driver's numpy work (pass checks, calibration) uses BLAS; on a machine whose cores are busy
        # training children, extra BLAS threads only contend with them (10x slower seen on 2 cores).
        try:
            with threadpool_limits(limits=self.config.threads):
                start = self._stage_start(1)
                last = self.store.last_completed_step() or 0
                if last:
                    self.policy.load_state_dict(self.store.load_controller_state(last))
                for step in range(last + 1, self.config.steps + 1):
                    self.run_step(step)
        finally:
            self._close_executor()
        best = self.store.best_before(self.config.steps + 1)
        children = [c for c in self.store.children() if c.status != "lost"]  # start nets included
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



"""Training engine: fine-tunes (or trains) a child network in place and reports its accuracy.

EAS rewards a child by its validation accuracy after a short, fixed training run (PAPER.md, "Child training
during search"): 20 epochs of SGD with Nesterov momentum 0.9, lr 0.02 decayed to 0 by a per-step cosine,
batch 64, weight decay 1e-4. `TrainConfig` holds exactly those defaults; `train_module` runs them.

Design points:
- The data stay as tensors on the training device; batches are drawn by a seeded permutation and augmented
  on the device (`augment_batch`), so a GPU run has no CPU loader or worker processes in its way.
- Reproducible: batch order, augmentation and any randomness inside the module (dropout) come from `seed`
  alone. Global RNG state is forked, seeded and restored, so the result does not depend on what ran before
  and the caller's RNG stream is untouched. On CPU the same seed gives bit-identical weights.
- A loss that becomes NaN or infinite stops training at once with `TrainingDivergedError`, rather than
  spending the remaining epochs on a network whose reward would be chance level anyway.
- The test split is evaluated only when asked (`evaluate_test`); the search never asks, so test data cannot
  leak into architecture decisions.
"""

from __future__ import annotations

import math
import re
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import DataSplits, augment_batch, calibration_batch

__all__ = [
    "SCHEDULES",
    "DeviceError",
    "TrainConfig",
    "TrainConfigError",
    "TrainResult",
    "TrainingDivergedError",
    "calibration_batch",
    "evaluate",
    "resolve_device",
    "train_module",
]

SCHEDULES: tuple[str, ...] = ("cosine", "constant")

# How often (in steps) the loss is checked for NaN/inf, per device type. On CUDA, reading the loss back every
# step would stall the GPU queue; the losses of recent steps stay on the device and are checked together
# (the error still names the first bad step exactly). On CPU the check is free, so it runs every step,
# before the update, and a diverged loss never reaches the weights.
FINITE_CHECK_EVERY = {"cpu": 1, "cuda": 25}


class DeviceError(ValueError):
    """A device string names no usable device (one line)."""


class TrainConfigError(ValueError):
    """A training option is out of range (one line naming the option)."""


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or infinite (one line: epoch, step, loss)."""


@dataclass
class TrainConfig:
    """How to train a child. Defaults are EAS's child training on CIFAR-10 (PAPER.md).

    `amp` (bf16 autocast) and `channels_last` default to None, meaning: on for CUDA, off for CPU (on CPU both
    are slower for small convs). `schedule` is "cosine" (per step, from `lr` down to 0 over the whole run) or
    "constant".
    """

    epochs: int = 20
    batch_size: int = 64
    lr: float = 0.02
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    seed: int = 0
    device: str = "cpu"
    amp: bool | None = None
    channels_last: bool | None = None
    quiet: bool = False
    eval_batch_size: int = 512

    def __post_init__(self) -> None:
        checks = [
            ("epochs", self.epochs >= 0, "must be >= 0"),
            ("batch_size", self.batch_size >= 1, "must be >= 1"),
            ("eval_batch_size", self.eval_batch_size >= 1, "must be >= 1"),
            ("lr", math.isfinite(self.lr) and self.lr >= 0, "must be a finite number >= 0"),
            ("momentum", 0 <= self.momentum < 1, "must be in [0, 1)"),
            ("weight_decay", self.weight_decay >= 0, "must be >= 0"),
            ("schedule", self.schedule in SCHEDULES, f"must be one of {', '.join(SCHEDULES)}"),
            ("nesterov", not (self.nesterov and self.momentum == 0), "needs momentum > 0"),
        ]
        for option, ok, rule in checks:
            if not ok:
                raise TrainConfigError(f"TrainConfig.{option} = {getattr(self, option)!r}: {rule}")


@dataclass
class TrainResult:
    """Outcome of `train_module`. Accuracies are fractions in [0, 1]; `val_acc` is after the last epoch
    (NaN when the data have no validation split); `test_acc` is None unless the test split was evaluated.
    `history` has one dict per epoch: {"epoch", "loss" (mean training loss), "val_acc", "lr" (at its last step)}.
    """

    val_acc: float
    test_acc: float | None
    epochs: int
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------------
# Devices


_DEVICE_RE = re.compile(r"(cpu|cuda)(?::(\d+))?")


def resolve_device(spec: str | torch.device) -> torch.device:
    """"cpu", "cuda" (the current CUDA device) or "cuda:N" -> torch.device; DeviceError if it does not exist."""
    text = str(spec).strip().lower()
    match = _DEVICE_RE.fullmatch(text)
    if match is None or (match.group(1) == "cpu" and match.group(2) is not None):
        raise DeviceError(f"device {str(spec)!r}: expected 'cpu', 'cuda' or 'cuda:N'")
    if match.group(1) == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError(f"device {str(spec)!r}: CUDA is not available (torch {torch.__version__}, "
                          f"{'no GPU found' if torch.version.cuda else 'a CPU-only build'}); use 'cpu'")
    count = torch.cuda.device_count()
    index = torch.cuda.current_device() if match.group(2) is None else int(match.group(2))
    if index >= count:
        raise DeviceError(f"device {str(spec)!r}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    return torch.device("cuda", index)


# --------------------------------------------------------------------------------------------------------
# Evaluation


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if enabled else nullcontext()


def _module_device(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def _accuracy(module: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, device: torch.device,
              amp: bool, memory_format: torch.memory_format = torch.contiguous_format) -> float:
    was_training = module.training
    module.eval()
    try:
        correct = torch.zeros((), dtype=torch.int64, device=device)
        for start in range(0, len(x), batch_size):
            xb = x[start:start + batch_size].to(device, non_blocking=True)
            if xb.dim() == 4:
                xb = xb.contiguous(memory_format=memory_format)
            with _autocast(device, amp):
                logits = module(xb)
            correct += (logits.argmax(dim=1) == y[start:start + batch_size].to(device)).sum()
        return correct.item() / len(x)  # one device->host sync for the whole split
    finally:
        module.train(was_training)


def evaluate(module: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512,
             device: str | torch.device | None = None, *, amp: bool = False) -> float:
    """Top-1 accuracy of `module` on (x, y), in eval mode without gradients; the module's train/eval mode is
    restored afterwards. With `device`, the module is moved there (in place); by default it is evaluated where
    its parameters are."""
    if len(x) != len(y):
        raise ValueError(f"evaluate: {len(x)} inputs but {len(y)} labels")
    if len(x) == 0:
        raise ValueError("evaluate: no examples to evaluate on")
    if batch_size < 1:
        raise ValueError(f"evaluate: batch_size must be >= 1, got {batch_size}")
    if device is None:
        dev = _module_device(module)
    else:
        dev = resolve_device(device)
        module.to(dev)
    return _accuracy(module, x, y, batch_size, dev, amp)


# --------------------------------------------------------------------------------------------------------
# Training


def _lr_at(config: TrainConfig, step: int, total_steps: int) -> float:
    if config.schedule == "constant" or total_steps == 0:
        return config.lr
    # Half a cosine over the whole run: lr at step 0, approaching 0 at the last step (EAS, SGDR-style).
    return 0.5 * config.lr * (1.0 + math.cos(math.pi * step / total_steps))


def _stream_seeds(seed: int) -> tuple[int, int, int]:
    # Independent streams for batch order, augmentation and the module's own randomness: generators seeded
    # with the same number on the same device would produce the same sequence, correlating the three.
    a, b, c = np.random.SeedSequence(seed).generate_state(3, dtype=np.uint64)
    return int(a >> np.uint64(1)), int(b >> np.uint64(1)), int(c >> np.uint64(1))


@contextmanager
def _progress_bar(progress: Any, quiet: bool, total: int, description: str) -> Iterator[Callable[..., None]]:
    """Yields `advance(**fields)`; draws nothing when quiet or when stdout is not a terminal (logs, CI)."""
    if quiet or (progress is None and not sys.stdout.isatty()):
        yield lambda **_: None
        return
    owned = progress is None
    if owned:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeRemainingColumn(), TextColumn("{task.fields[status]}"), transient=True)
        progress.start()
    task = progress.add_task(description, total=total, status="")
    try:
        yield lambda **fields: progress.update(task, advance=1, **fields)
    finally:
        progress.remove_task(task)
        if owned:
            progress.stop()


def _raise_if_diverged(losses: torch.Tensor, epoch: int, first_step: int) -> None:
    """Raise for the first non-finite loss in `losses`, the losses of steps first_step, first_step + 1, ...
    (0-based within the epoch; the message counts steps from 1)."""
    bad = (~torch.isfinite(losses)).nonzero()
    if len(bad):
        i = int(bad[0, 0])
        raise TrainingDivergedError(
            f"training diverged: loss {losses[i].item()} at epoch {epoch}, step {first_step + i + 1}; "
            f"lower the learning rate or check the network for operations that overflow"
        )


def train_module(
    module: nn.Module,
    data: DataSplits,
    config: TrainConfig,
    *,
    progress: Any = None,
    on_epoch: Callable[[int, float, float], None] | None = None,
    evaluate_test: bool = True,
) -> TrainResult:
    """Train `module` in place on `data.x_train` as `config` says; evaluate on validation after every epoch.

    The module is moved to `config.device` and stays there; its train/eval mode is restored at the end.
    `progress` may be a running `rich.progress.Progress` to draw the epoch bar into (e.g. one line per child);
    otherwise one is created when stdout is a terminal and `config.quiet` is false. `on_epoch(epoch,
    train_loss, val_acc)` is called after each epoch (epochs count from 1). With `epochs=0` nothing is trained
    and the accuracies of the module as given are reported. Raises TrainingDivergedError on a NaN/inf loss.
    """
    start_time = time.perf_counter()
    device = resolve_device(config.device)
    cuda = device.type == "cuda"
    amp = cuda if config.amp is None else config.amp
    image_data = data.x_train.dim() == 4
    channels_last = (cuda if config.channels_last is None else config.channels_last) and image_data
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    was_training = module.training
    if len(data.x_train) == 0:
        raise ValueError(f"train_module: {data.name} has no training examples")

    module.to(device)
    if channels_last:
        module.to(memory_format=torch.channels_last)
    # Data live on the device for the whole run; for CIFAR that is ~600 MB of float32, well within any GPU
    # that trains these networks, and it removes host->device copies from every step.
    x_train = data.x_train.to(device)
    if image_data:
        x_train = x_train.contiguous(memory_format=memory_format)
    y_train = data.y_train.to(device)

    n = len(x_train)
    batch_size = min(config.batch_size, n)
    # Drop the last partial batch: a batch of one would break batch-norm on fully connected layers. Every
    # epoch reshuffles, so the few images left out change from epoch to epoch.
    steps_per_epoch = n // batch_size
    total_steps = config.epochs * steps_per_epoch
    check_every = FINITE_CHECK_EVERY.get(device.type, 1)

    order_seed, augment_seed, module_seed = _stream_seeds(config.seed)
    order_gen = torch.Generator().manual_seed(order_seed)
    augment_gen = torch.Generator(device=device).manual_seed(augment_seed)
    optimizer = torch.optim.SGD(module.parameters(), lr=config.lr, momentum=config.momentum,
                                nesterov=config.nesterov, weight_decay=config.weight_decay)

    # Validation data move once, not once per epoch.
    x_val, y_val = data.x_val.to(device), data.y_val.to(device)

    def val_accuracy() -> float:
        if len(x_val) == 0:
            return float("nan")
        return _accuracy(module, x_val, y_val, config.eval_batch_size, device, amp, memory_format)

    history: list[dict[str, Any]] = []
    step = 0
    try:
        fork_devices = [device.index] if cuda else []
        with torch.random.fork_rng(devices=fork_devices, device_type=device.type), \
                _progress_bar(progress, config.quiet, config.epochs, f"train {data.name}") as advance:
            # Seeds the module's own randomness (dropout) inside the fork, so the caller's streams are
            # untouched; only the training device's generator, as only that one is forked.
            torch.default_generator.manual_seed(module_seed)
            if cuda:
                torch.cuda.default_generators[device.index].manual_seed(module_seed)
            for epoch in range(1, config.epochs + 1):
                module.train()
                order = torch.randperm(n, generator=order_gen).to(device)
                losses = torch.empty(steps_per_epoch, device=device)
                lr = config.lr
                for i in range(steps_per_epoch):
                    lr = _lr_at(config, step, total_steps)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    idx = order[i * batch_size:(i + 1) * batch_size]
                    xb = augment_batch(x_train[idx], data.augment, augment_gen)
                    with _autocast(device, amp):
                        logits = module(xb)
                    # Cross-entropy in float32 even under bf16 autocast: the log-sum-exp needs the precision.
                    loss = F.cross_entropy(logits.float(), y_train[idx])
                    losses[i] = loss.detach()
                    if (i + 1) % check_every == 0 or i + 1 == steps_per_epoch:
                        start = (i // check_every) * check_every
                        _raise_if_diverged(losses[start:i + 1], epoch, start)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    step += 1
                train_loss = losses.mean().item() if steps_per_epoch else float("nan")
                val_acc = val_accuracy()
                history.append({"epoch": epoch, "loss": train_loss, "val_acc": val_acc, "lr": lr})
                advance(status=f"loss {train_loss:.3f}  val {val_acc:.3f}")
                if on_epoch is not None:
                    on_epoch(epoch, train_loss, val_acc)
            final_val = history[-1]["val_acc"] if history else val_accuracy()
            test_acc = None
            if evaluate_test and len(data.x_test):
                test_acc = _accuracy(module, data.x_test, data.y_test, config.eval_batch_size, device, amp,
                                     memory_format)
    finally:
        if channels_last:
            # Back to the default layout, so weights read out of the module (to the IR, to disk) are plain
            # contiguous arrays.
            module.to(memory_format=torch.contiguous_format)
        module.train(was_training)
    return TrainResult(val_acc=final_val, test_acc=test_acc, epochs=config.epochs,
                       seconds=time.perf_counter() - start_time, history=history)

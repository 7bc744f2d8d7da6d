"""Tests for easc.backends.torch.train: training, reproducibility, divergence, devices, evaluation.

Everything runs on CPU with digits (about 1,800 8x8 images) or small synthetic sets; the whole file takes a
few seconds.
"""

from __future__ import annotations

import dataclasses
import io
import math

import pytest
import torch
from rich.console import Console
from rich.progress import Progress
from torch import nn

from easc.backends.torch import train as train_mod
from easc.backends.torch.data import DataSplits, load_dataset
from easc.backends.torch.train import (
    DeviceError,
    TrainConfig,
    TrainConfigError,
    TrainingDivergedError,
    evaluate,
    resolve_device,
    train_module,
)



@pytest.fixture(scope="module")
def digits() -> DataSplits:
    return load_dataset("digits")


def small_convnet(init_seed: int = 0, dropout: float = 0.0, num_classes: int = 10) -> nn.Module:
    """conv16-bn-relu-pool-conv32-bn-relu-gap-fc10, initialised from its own seed."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(init_seed)
    net = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(32, num_classes),
    )
    torch.random.set_rng_state(gen_state)
    return net


def quiet(**overrides) -> TrainConfig:
    return TrainConfig(**{"quiet": True, **overrides})


def weights(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# --------------------------------------------------------------------------------------------------------
# Training


def test_small_convnet_reaches_90_percent_validation_accuracy_on_digits_in_four_epochs(digits):
    net = small_convnet()
    result = train_module(net, digits, quiet(epochs=4, lr=0.1, batch_size=32))
    assert result.val_acc > 0.9
    assert result.test_acc is not None and result.test_acc > 0.9
    assert result.epochs == 4 and len(result.history) == 4 and result.seconds > 0
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_same_seed_gives_bit_identical_weights_and_history_whatever_ran_before(digits):
    nets = [small_convnet(dropout=0.3), small_convnet(dropout=0.3)]
    config = quiet(epochs=2, seed=11)
    first = train_module(nets[0], digits, config)
    # Disturb the global RNG between the runs: training must not depend on it.
    torch.manual_seed(12345)
    torch.rand(100)
    second = train_module(nets[1], digits, config)
    a, b = weights(nets[0]), weights(nets[1])
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert first.history == second.history and first.val_acc == second.val_acc


def test_different_seeds_give_different_weights(digits):
    nets = [small_convnet(), small_convnet()]
    train_module(nets[0], digits, quiet(epochs=1, seed=0))
    train_module(nets[1], digits, quiet(epochs=1, seed=1))
    a, b = weights(nets[0]), weights(nets[1])
    assert not torch.equal(a["0.weight"], b["0.weight"])


def test_training_leaves_the_callers_global_rng_stream_untouched(digits):
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    train_module(small_convnet(dropout=0.5), digits, quiet(epochs=1))
    assert torch.equal(torch.rand(3), expected)


def test_training_with_crop_flip_augmentation_is_seeded_and_the_augmentation_matters():
    augmented = load_dataset("synthetic", shape=(1, 8, 8), num_classes=3, n=60, augment="crop_flip")
    runs = []
    for data in (augmented, augmented, dataclasses.replace(augmented, augment="none")):
        net = small_convnet(num_classes=3)
        train_module(net, data, quiet(epochs=2, batch_size=16))
        runs.append(weights(net))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not torch.equal(runs[0]["0.weight"], runs[2]["0.weight"])


def test_history_has_one_entry_per_epoch_and_the_cosine_lr_decays_towards_zero(digits):
    seen = []
    result = train_module(small_convnet(), digits, quiet(epochs=3, lr=0.05),
                          on_epoch=lambda *args: seen.append(args))
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert seen == [(h["epoch"], h["loss"], h["val_acc"]) for h in result.history]
    lrs = [h["lr"] for h in result.history]
    assert 0.05 > lrs[0] > lrs[1] > lrs[2] > 0 and lrs[2] < 1e-3
    assert result.val_acc == result.history[-1]["val_acc"]


def test_cosine_schedule_starts_at_lr_and_ends_near_zero():
    config = quiet(lr=0.02)
    assert train_mod._lr_at(config, 0, 100) == 0.02
    assert train_mod._lr_at(config, 50, 100) == pytest.approx(0.01)
    assert train_mod._lr_at(config, 99, 100) == pytest.approx(0.02 * (1 + math.cos(math.pi * 0.99)) / 2)
    assert train_mod._lr_at(quiet(lr=0.02, schedule="constant"), 99, 100) == 0.02


def test_test_split_is_evaluated_only_when_asked(digits):
    result = train_module(small_convnet(), digits, quiet(epochs=1), evaluate_test=False)
    assert result.test_acc is None
    assert 0 <= result.val_acc <= 1


def test_zero_epochs_reports_the_accuracy_of_the_module_as_given(digits):
    net = small_convnet()
    before = weights(net)
    result = train_module(net, digits, quiet(epochs=0))
    assert result.history == [] and result.epochs == 0
    assert result.val_acc == evaluate(net, digits.x_val, digits.y_val)
    assert result.test_acc == evaluate(net, digits.x_test, digits.y_test)
    after = weights(net)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_training_restores_the_modules_train_or_eval_mode(digits):
    net = small_convnet().eval()
    train_module(net, digits, quiet(epochs=1))
    assert not net.training


def test_channels_last_training_matches_default_layout_and_returns_contiguous_weights(digits):
    nets = [small_convnet(), small_convnet()]
    train_module(nets[0], digits, quiet(epochs=1, channels_last=True))
    train_module(nets[1], digits, quiet(epochs=1, channels_last=False))
    assert nets[0][0].weight.is_contiguous()
    # Same arithmetic in another memory order: equal up to float32 summation-order rounding over 16 steps.
    a, b = weights(nets[0]), weights(nets[1])
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-4) for k in a)


def test_training_data_without_a_validation_split_reports_nan_validation_accuracy():
    data = load_dataset("synthetic", shape=(1, 8, 8), num_classes=2, n=40)
    empty = DataSplits(data.x_train, data.y_train, data.x_val[:0], data.y_val[:0], data.x_test, data.y_test,
                       num_classes=2, input_shape=data.input_shape, name="no_val")
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    assert math.isnan(train_module(net, empty, quiet(epochs=1)).val_acc)


# --------------------------------------------------------------------------------------------------------
# Divergence


class NaNAfter(nn.Module):
    """A linear classifier whose logits become NaN from its `bad_call`-th training forward pass on."""

    def __init__(self, bad_call: int):
        super().__init__()
        self.fc = nn.Linear(64, 10)
        self.bad_call, self.calls = bad_call, 0

    def forward(self, x):
        out = self.fc(x.flatten(1))
        if self.training:
            self.calls += 1
            if self.calls >= self.bad_call:
                out = out * float("nan")
        return out


def test_nan_loss_raises_training_diverged_error_naming_epoch_and_step(digits):
    net = NaNAfter(bad_call=3)
    with pytest.raises(TrainingDivergedError) as err:
        train_module(net, digits, quiet(epochs=2))
    assert str(err.value).startswith("training diverged: loss nan at epoch 1, step 3;")
    # On CPU the loss is checked before the update, so the NaN never reached the weights.
    assert all(torch.isfinite(p).all() for p in net.parameters())


def test_divergence_found_by_a_delayed_check_still_names_the_first_bad_step(digits, monkeypatch):
    # The CUDA path checks every few steps; exercise that bookkeeping on CPU.
    monkeypatch.setitem(train_mod.FINITE_CHECK_EVERY, "cpu", 4)
    steps_per_epoch = len(digits.y_train) // 64  # 16
    with pytest.raises(TrainingDivergedError, match="at epoch 2, step 6;"):
        train_module(NaNAfter(bad_call=steps_per_epoch + 6), digits, quiet(epochs=3))


def test_huge_learning_rate_diverges_with_training_diverged_error(digits):
    with pytest.raises(TrainingDivergedError, match=r"training diverged: loss (nan|inf) at epoch 1, step \d+"):
        train_module(small_convnet(), digits, quiet(epochs=2, lr=1e6))


# --------------------------------------------------------------------------------------------------------
# Devices


def test_resolve_device_accepts_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("spec", ["tpu", "gpu", "cuda:x", "cpu:1", "", "cuda:-1"])
def test_malformed_device_strings_raise_device_error(spec):
    with pytest.raises(DeviceError, match=r"expected 'cpu', 'cuda' or 'cuda:N'"):
        resolve_device(spec)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_raises_device_error_suggesting_cpu():
    for spec in ("cuda", "cuda:0"):
        with pytest.raises(DeviceError, match=rf"device '{spec}': CUDA is not available .*; use 'cpu'"):
            resolve_device(spec)


def test_a_cuda_index_beyond_the_machines_devices_raises_device_error():
    with pytest.raises(DeviceError, match="device 'cuda:99': "):
        resolve_device("cuda:99")


def test_train_module_rejects_a_bad_device_before_touching_the_module(digits):
    net = small_convnet()
    before = weights(net)
    with pytest.raises(DeviceError):
        train_module(net, digits, quiet(device="cuda:99"))
    after = weights(net)
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_small_convnet_trains_on_cuda_with_bf16_autocast(digits):
    net = small_convnet()
    result = train_module(net, digits, quiet(epochs=4, lr=0.1, batch_size=32, device="cuda"))
    assert result.val_acc > 0.9
    assert net[0].weight.device.type == "cuda" and net[0].weight.is_contiguous()


# --------------------------------------------------------------------------------------------------------
# evaluate


class FixedAnswer(nn.Module):
    """Predicts class round(x[:, 0]) in eval mode and class 0 in train mode (to catch a missing .eval())."""

    def forward(self, x):
        classes = x[:, 0].round().long() if not self.training else torch.zeros(len(x), dtype=torch.long)
        return nn.functional.one_hot(classes, 3).float()


def test_evaluate_counts_correct_predictions_across_batches():
    x = torch.tensor([[0.0], [1.0], [2.0], [1.0], [2.0], [0.0], [1.0]])
    y = torch.tensor([0, 1, 2, 2, 2, 1, 1])  # 5 of 7 right
    assert evaluate(FixedAnswer(), x, y, batch_size=3) == pytest.approx(5 / 7)
    assert evaluate(FixedAnswer(), x, y, batch_size=512) == pytest.approx(5 / 7)


def test_evaluate_runs_in_eval_mode_and_restores_the_previous_mode():
    module = FixedAnswer().train()
    x, y = torch.tensor([[2.0], [1.0]]), torch.tensor([2, 1])
    assert evaluate(module, x, y) == 1.0  # train mode would answer class 0: accuracy 0
    assert module.training


def test_evaluate_rejects_empty_or_mismatched_inputs():
    with pytest.raises(ValueError, match="evaluate: no examples"):
        evaluate(FixedAnswer(), torch.zeros(0, 1), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="evaluate: 2 inputs but 3 labels"):
        evaluate(FixedAnswer(), torch.zeros(2, 1), torch.zeros(3, dtype=torch.long))


def test_evaluate_computes_no_gradients(digits):
    net = small_convnet()
    evaluate(net, digits.x_val, digits.y_val)
    assert all(p.grad is None for p in net.parameters())


# --------------------------------------------------------------------------------------------------------
# Config and progress


def test_config_defaults_are_eas_child_training():
    c = TrainConfig()
    assert (c.epochs, c.batch_size, c.lr, c.momentum, c.nesterov, c.weight_decay, c.schedule) == \
        (20, 64, 0.02, 0.9, True, 1e-4, "cosine")
    assert c.device == "cpu" and c.amp is None and c.channels_last is None


@pytest.mark.parametrize("option, value, rule", [
    ("epochs", -1, "must be >= 0"),
    ("batch_size", 0, "must be >= 1"),
    ("lr", float("nan"), "must be a finite number >= 0"),
    ("momentum", 1.0, r"must be in \[0, 1\)"),
    ("weight_decay", -1e-4, "must be >= 0"),
    ("schedule", "step", "must be one of cosine, constant"),
])
def test_config_rejects_out_of_range_options_naming_the_option(option, value, rule):
    with pytest.raises(TrainConfigError, match=rf"TrainConfig.{option} = .*: {rule}"):
        TrainConfig(**{option: value})


def test_nesterov_without_momentum_is_rejected():
    with pytest.raises(TrainConfigError, match="TrainConfig.nesterov = True: needs momentum > 0"):
        TrainConfig(momentum=0.0)


def test_progress_bar_is_silent_when_stdout_is_not_a_terminal(digits, capsys):
    train_module(small_convnet(), digits, TrainConfig(epochs=1, quiet=False))
    assert capsys.readouterr().out == ""


class RecordingProgress(Progress):
    def __init__(self):
        super().__init__(console=Console(file=io.StringIO(), force_terminal=True))
        self.updates, self.removed = [], []

    def update(self, task_id, **kwargs):
        self.updates.append(kwargs)
        super().update(task_id, **kwargs)

    def remove_task(self, task_id):
        self.removed.append(task_id)
        super().remove_task(task_id)


def test_a_given_rich_progress_gets_one_update_per_epoch_and_its_task_removed(digits):
    progress = RecordingProgress()
    with progress:
        train_module(small_convnet(), digits, TrainConfig(epochs=2, quiet=False), progress=progress)
    assert len(progress.updates) == 2 and progress.updates[-1]["status"].startswith("loss ")
    assert len(progress.removed) == 1 and progress.tasks == []


def test_quiet_config_draws_nothing_even_into_a_given_progress(digits):
    progress = RecordingProgress()
    train_module(small_convnet(), digits, quiet(epochs=1), progress=progress)
    assert progress.updates == [] and progress.removed == []

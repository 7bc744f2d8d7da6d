"""`easc train --final`: the final training of a found network, fresh weights on train + validation by default."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from easc.cli.main import main
from easc.ir import load_graph, save_graph
from easc.search.start_nets import digits_small
from easc.search.worker import dataset_for

TINY_LR = "1e-12"  # training that moves no weight measurably: what is left is how training started


def easc(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def trained(tmp_path, *flags):
    model = tmp_path / "model.easir"
    if not model.exists():
        save_graph(digits_small(seed=3), model)
    out = tmp_path / f"out{len(list(tmp_path.iterdir()))}.easir"
    result = easc("train", model, "--final", "--epochs", 1, "--lr", TINY_LR, "--quiet", "-o", out, *flags)
    assert result.exit_code == 0, result.output
    return load_graph(model), load_graph(out), result.stdout.splitlines(), json.loads(result.stdout.splitlines()[-1])


def largest_weight_change(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(n.weights[k]) - np.asarray(b.node(n.name).weights[k]))))
               for n in a.nodes for k in n.weights if k not in ("mean", "var"))


def test_final_training_starts_from_fresh_weights_on_train_and_validation_and_says_so(tmp_path):
    before, after, lines, summary = trained(tmp_path)
    digits = dataset_for({"name": "digits", "seed": 0})

    assert largest_weight_change(before, after) > 0.01  # re-initialised, not the model's weights
    assert summary["final"] == {"weights": "reinitialised", "data": "train+validation",
                                "train_images": len(digits.y_train) + len(digits.y_val), "augment": "none"}
    assert summary["val_acc"] is None  # nothing held out, so no validation figure
    assert lines[0].startswith("final training: fresh weights (re-initialised, seed 0)")
    assert "nothing held out" in lines[0]


def test_keep_weights_and_hold_out_validation_train_the_models_weights_on_train_only(tmp_path):
    before, after, lines, summary = trained(tmp_path, "--keep-weights", "--hold-out-validation")
    digits = dataset_for({"name": "digits", "seed": 0})

    assert largest_weight_change(before, after) < 1e-6
    assert summary["final"]["weights"] == "kept" and summary["final"]["data"] == "train"
    assert summary["final"]["train_images"] == len(digits.y_train)
    assert 0 <= summary["val_acc"] <= 1
    assert "validation images held out" in lines[0] and "--keep-weights" in lines[0]


def test_keep_weights_without_final_fails_in_one_line(tmp_path):
    save_graph(digits_small(), tmp_path / "m.easir")
    result = easc("train", tmp_path / "m.easir", "--keep-weights")
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: --keep-weights and --hold-out-validation only change --final training; " \
                                    "add --final"

"""`easc train --final` on a network of a run folder records which final training ran, and `easc report`
(table and --json) shows it; the run folder's hardening holds (its lock, its files, a corrupt record)."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3

import pytest
from click.testing import CliRunner

from easc.cli.main import main
from easc.search.runlock import RunLock
from easc.search.store import STORE_FILE

from searches import run_search

FAST = dict(dataset="digits", children=2, epochs=1, start_epochs=1, wider_actions=1, deeper_actions=1,
            threads=1, quiet=True, steps=1, seed=0)
TRAIN = ["--final", "--epochs", "1", "--lr", "1e-12", "--quiet"]


def easc(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def report(run) -> dict:
    result = easc("report", run, "--json", "--no-plots")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def one_line_error(result, *fragments):
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("final") / "run"
    run_search(out, **FAST)
    return out


@pytest.fixture
def run(tmp_path, finished):
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


def test_final_trainings_of_a_runs_child_are_recorded_and_reported(run, tmp_path):
    best = report(run)["best"]["child"]
    child_file = run / "children" / f"child_{best}.easir"

    result = easc("train", child_file, *TRAIN, "-o", tmp_path / "final.easir")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout.splitlines()[-1])
    assert (summary["final"]["run"], summary["final"]["child"]) == (str(run.resolve()), best)
    assert f"as final training 1 (child {best})" in result.stdout

    result = easc("train", child_file, *TRAIN, "--keep-weights", "--hold-out-validation", "-o", run / "final.easir")
    assert result.exit_code == 0, result.stderr
    held_out = json.loads(result.stdout.splitlines()[-1])

    first, second = report(run)["final_trainings"]
    assert (first["child"], first["weights"], first["data"]) == (best, "reinitialised", "train+validation")
    assert first["model"] == f"children/child_{best}.easir" and first["output"] == str(tmp_path / "final.easir")
    assert first["val_acc"] is None and first["test_acc"] == summary["test_acc"] and first["epochs"] == 1
    assert (second["weights"], second["data"], second["output"]) == ("kept", "train", "final.easir")
    assert second["val_acc"] == held_out["val_acc"] and second["train_images"] < first["train_images"]

    table = easc("report", run, "--no-plots").stdout
    assert f"final training: child {best}, fresh weights (re-initialised), on {first['train_images']:,} images " \
           f"(train + validation)" in table
    assert "the network's own weights (--keep-weights)" in table and "(--hold-out-validation)" in table


def test_a_network_exported_from_the_run_is_matched_by_its_architecture_when_its_output_goes_into_the_run(
        run, tmp_path):
    best = report(run)["best"]["child"]
    exported = tmp_path / "best.easir"
    assert easc("export", run, "--best", "--format", "ir", "-o", exported).exit_code == 0
    result = easc("train", exported, *TRAIN, "-o", run / "final.easir")
    assert result.exit_code == 0, result.stderr
    (record,) = report(run)["final_trainings"]
    assert (record["child"], record["model"], record["output"]) == (best, str(exported), "final.easir")


def test_training_without_final_or_outside_any_run_records_nothing(run, tmp_path):
    child_file = sorted((run / "children").iterdir())[-1]
    assert easc("train", child_file, "--epochs", "1", "--quiet").exit_code == 0
    outside = tmp_path / "outside.easir"
    shutil.copy(child_file, outside)
    result = easc("train", outside, *TRAIN, "-o", tmp_path / "out.easir")
    assert result.exit_code == 0 and "recorded in" not in result.stdout
    assert "run" not in json.loads(result.stdout.splitlines()[-1])["final"]
    assert report(run)["final_trainings"] == []


def test_a_final_training_into_a_run_a_search_holds_is_refused_before_it_trains(run, tmp_path):
    child_file = sorted((run / "children").iterdir())[-1]
    lock = RunLock(run)  # a search running there
    try:
        result = easc("train", child_file, *TRAIN, "-o", tmp_path / "final.easir")
    finally:
        lock.release()
    one_line_error(result, "records its training in the run folder", "is in use by process")
    assert not (tmp_path / "final.easir").exists()
    assert report(run)["final_trainings"] == []


@pytest.mark.parametrize("target, message", [
    ("children/child_1.easir", "children/ holds the search's networks"),
    ("children/new.easir", "children/ holds the search's networks"),
    (STORE_FILE, "unknown model format '.sqlite'"),  # an output is a model file: the store cannot be named
])
def test_the_output_may_not_replace_a_childs_file_or_the_runs_own_files(run, tmp_path, target, message):
    model = tmp_path / "model.easir"
    shutil.copy(sorted((run / "children").iterdir())[-1], model)
    before = {p.name: digest(p) for p in run.rglob("*") if p.is_file()}
    one_line_error(easc("train", model, *TRAIN, "-o", run / target), f"{run / target}", message)
    assert {p.name: digest(p) for p in run.rglob("*") if p.is_file()} == before


def test_a_corrupt_final_training_record_is_a_one_line_error(run, tmp_path):
    child_file = sorted((run / "children").iterdir())[-1]
    assert easc("train", child_file, *TRAIN).exit_code == 0
    db = sqlite3.connect(run / STORE_FILE)
    db.execute("UPDATE final_trainings SET train_images = 'many\x1b[2J'")
    db.commit()
    db.close()
    one_line_error(easc("report", run, "--json", "--no-plots"), "is corrupt (final training 1: column train_images")


def test_a_symlink_planted_as_the_store_is_refused_before_training(run, tmp_path):
    child_file = sorted((run / "children").iterdir())[-1]
    (run / STORE_FILE).rename(tmp_path / "elsewhere.sqlite")
    (run / STORE_FILE).symlink_to(tmp_path / "elsewhere.sqlite")
    one_line_error(easc("train", child_file, *TRAIN, "-o", tmp_path / "final.easir"), "is a symlink")
    assert not (tmp_path / "final.easir").exists()

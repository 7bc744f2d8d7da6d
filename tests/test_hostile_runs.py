"""Hostile run folders and outputs: two processes on one run, corrupted databases, a full disk, paths in the
database pointing outside the run, symlinks planted where outputs go, read-only and /proc outputs, the
umask, and the exit codes that tell these apart (0 / 1 / 2 / 3 / 130).

Searches are tiny (synthetic data, 2 children of one Net2Wider step, 1 epoch): a finished one is made once
per module and copied for each test that damages it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from easc.cli.main import main
from easc.ir import GraphBuilder, save_graph
from easc.search.store import STORE_FILE, ExperimentStore

TINY = ["--dataset", "synthetic", "--children", "2", "--epochs", "1", "--wider-actions", "1",
        "--deeper-actions", "0", "--threads", "1", "--quiet"]
WAIT_SECONDS = 240  # a process importing torch on a shared 2-core machine


def easc(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, code: int, *fragments):
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def cli_process(*args, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "easc.cli.main", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kw)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    result = easc("search", *TINY, "--steps", "1", "--out", out)
    assert result.exit_code == 0, result.stderr
    return out


@pytest.fixture
def run(finished_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    (copy / "search.lock").unlink(missing_ok=True)
    return copy


def sql(run_dir, statement, *args):
    db = sqlite3.connect(run_dir / STORE_FILE)
    db.execute(statement, args)
    db.commit()
    db.close()


# ------------------------------------------------------------------------------------------------ the lock

def test_two_searches_started_together_on_one_folder_record_one_search_and_the_other_exits_2(tmp_path):
    out = tmp_path / "race"
    procs = [cli_process("search", *TINY, "--steps", "1", "--out", out) for _ in range(2)]
    results = [(p.wait(timeout=WAIT_SECONDS), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, _, err in results if code == 2)
    assert len(loser.splitlines()) == 1 and str(out) in loser, loser
    assert re.search(r"in use by process \d+|already holds a search", loser), loser
    with ExperimentStore.open_existing(out) as store:
        assert len(store.children(step=0)) == 1  # one start net: one search wrote this database
        assert len(store.children(step=1)) == 2
        assert [s.step for s in store.steps()] == [1]


def test_a_running_search_turns_away_a_second_search_and_a_resume_naming_its_pid_and_a_kill_frees_it(run):
    holder = cli_process("search", "--resume", run, "--steps", "100000")
    try:
        deadline = time.monotonic() + WAIT_SECONDS
        lock = run / "search.lock"
        while not lock.exists() or lock.read_text().strip() != str(holder.pid):
            assert holder.poll() is None, holder.communicate()
            assert time.monotonic() < deadline, "the resumed search never took the lock"
            time.sleep(0.2)
        one_line_error(easc("search", "--resume", run), 2, str(run), f"in use by process {holder.pid}")
        one_line_error(easc("search", *TINY, "--out", run), 2, str(run), f"in use by process {holder.pid}")
        report = easc("report", run, "--json", "--no-plots")  # readers take no lock
        assert report.exit_code == 0, report.stderr
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=WAIT_SECONDS)
    # The operating system released the dead process's lock: the run resumes (and finishes at once).
    with ExperimentStore.open_existing(run) as store:
        done = store.last_completed_step()
    resumed = easc("search", "--resume", run, "--steps", str(done))
    assert resumed.exit_code == 0, resumed.stderr


# ------------------------------------------------------------------------------------- corrupt databases

def test_a_page_of_garbage_in_the_database_is_one_line_exit_2_for_report_resume_and_export(run, tmp_path):
    db = sqlite3.connect(run / STORE_FILE)
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    (root,) = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'children'").fetchone()
    db.close()
    data = bytearray((run / STORE_FILE).read_bytes())
    start = (root - 1) * page_size  # pages are numbered from 1
    data[start:start + page_size] = os.urandom(page_size)  # one page: the children table's root
    (run / STORE_FILE).write_bytes(bytes(data))
    for args in (["report", run, "--no-plots"], ["search", "--resume", run],
                 ["export", run, "--best", "--format", "onnx", "-o", tmp_path / "best.onnx"]):
        one_line_error(easc(*args), 2, str(run), "search.sqlite is corrupt (database disk image is malformed)")
    assert not (tmp_path / "best.onnx").exists()


def test_bad_json_in_a_childs_actions_is_a_corrupt_run_in_one_line(run):
    sql(run, "UPDATE children SET actions = '{not json' WHERE id = 2")
    one_line_error(easc("report", run, "--no-plots"), 2, str(run), "child 2", "actions is not valid JSON")
    one_line_error(easc("search", "--resume", run), 2, str(run), "actions is not valid JSON")


def test_an_unknown_key_in_the_stored_config_is_a_corrupt_run_in_one_line(run):
    with ExperimentStore.open_existing(run) as store:
        config = store.config()
    config["bogus_option"] = 1
    sql(run, "UPDATE run SET value = ? WHERE key = 'config'", json.dumps(config))
    one_line_error(easc("search", "--resume", run), 2, str(run), "saved configuration cannot be read",
                   "bogus_option")
    sql(run, "UPDATE run SET value = '[1, 2' WHERE key = 'config'")
    one_line_error(easc("search", "--resume", run), 2, str(run), "saved configuration is not a JSON object")


@pytest.mark.parametrize("path", ["/etc/passwd", "../../x", "children/../../outside.easir", "children"])
def test_a_stored_child_path_outside_the_children_folder_is_never_read(run, tmp_path, path):
    sql(run, "UPDATE children SET weights_path = ? WHERE id = 1", path)
    out = tmp_path / "child.easir"
    line = one_line_error(easc("export", run, "--child", "1", "--format", "ir", "-o", out), 2, str(run))
    assert "outside children/" in line or "not a path inside children/" in line
    assert not out.exists()
    one_line_error(easc("report", run, "--no-plots"), 2, str(run), "corrupt")


def test_a_child_file_that_is_a_symlink_out_of_the_run_is_never_read(run, tmp_path):
    secret = tmp_path / "secret.easir"
    shutil.copy(run / "children" / "child_1.easir", secret)  # even a valid model outside the run is refused
    (run / "children" / "child_1.easir").unlink()
    os.symlink(secret, run / "children" / "child_1.easir")
    one_line_error(easc("export", run, "--child", "1", "--format", "ir", "-o", tmp_path / "c.easir"), 2,
                   "outside children/")
    assert not (tmp_path / "c.easir").exists()


# ------------------------------------------------------------------------------------------- a full disk

@pytest.fixture
def small_disk(monkeypatch):
    """Every store connection may grow its database by only a few pages beyond its size when opened:
    SQLite's own "database or disk is full" (SQLITE_FULL), raised inside its write path as on a full disk."""
    real_connect = sqlite3.connect

    def connect(*args, **kwargs):
        db = real_connect(*args, **kwargs)
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count = {max(pages, 8) + 12}")
        return db

    monkeypatch.setattr(sqlite3, "connect", connect)


def test_a_disk_that_fills_up_during_a_search_exits_1_in_one_line_and_the_run_stays_readable(tmp_path, small_disk):
    out = tmp_path / "full"
    one_line_error(easc("search", *TINY, "--steps", "2", "--out", out), 1, str(out), "database or disk is full")
    report = easc("report", out, "--json", "--no-plots")
    assert report.exit_code == 0, report.stderr
    assert json.loads(report.stdout)["children"] >= 1  # what was committed before the disk filled is there


def test_a_disk_that_fills_up_during_a_resume_exits_1_in_one_line_and_the_run_stays_readable(run, small_disk):
    with ExperimentStore.open_existing(run) as store:
        before = len(store.children())
    one_line_error(easc("search", "--resume", run, "--steps", "3"), 1, str(run), "database or disk is full")
    report = easc("report", run, "--json", "--no-plots")
    assert report.exit_code == 0, report.stderr
    assert json.loads(report.stdout)["children"] >= before


def test_a_file_size_limit_hit_mid_search_exits_1_in_one_line(tmp_path):
    """The operating system refuses the write (RLIMIT_FSIZE, the signal ignored: EFBIG), not SQLite's pragma."""
    import resource

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    out = tmp_path / "fsize"
    proc = cli_process("search", *TINY, "--steps", "2", "--out", out, preexec_fn=limit)
    code = proc.wait(timeout=WAIT_SECONDS)
    _, err = proc.communicate()
    assert code == 1, err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err


# ---------------------------------------------------------------------------------------------- outputs

def test_report_replaces_a_symlink_planted_as_a_plot_and_leaves_its_target_alone(run, tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    os.symlink(target, run / "accuracy_per_step.png")
    result = easc("report", run)
    assert result.exit_code == 0, result.stderr
    assert target.read_text() == "keep me"
    plot = run / "accuracy_per_step.png"
    assert not plot.is_symlink() and plot.read_bytes().startswith(b"\x89PNG")


def tiny_model(path):
    b = GraphBuilder("t")
    x = b.input("x", (1, 8, 8))
    b.output("y", b.linear(b.flatten(b.global_avgpool(b.conv2d(x, 4, 3, padding=1))), 10))
    save_graph(b.build(), path)
    return path


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_outputs_get_the_mode_the_umask_gives(tmp_path, umask):
    model = tiny_model(tmp_path / "m.easir")
    old = os.umask(umask)
    try:
        result = easc("export", model, "--format", "onnx", "-o", tmp_path / "m.onnx")
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "m.onnx").stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("output", ["/proc/easc-test.onnx", "/proc/self/easc-test.onnx"])
def test_an_output_under_proc_is_reported_under_the_users_path(tmp_path, output):
    model = tiny_model(tmp_path / "m.easir")
    line = one_line_error(easc("export", model, "--format", "onnx", "-o", output), 2, f"{output}: cannot write")
    assert ".tmp" not in line


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _unshare_works(), reason="needs `unshare -rm` (user and mount namespaces) for a read-only mount")
@pytest.mark.parametrize("command", ["export", "train"])
def test_an_output_on_a_read_only_file_system_is_one_line_before_any_work(tmp_path, command):
    """A read-only bind mount in a private mount namespace: EROFS from the kernel, as on a real read-only
    disk. `train` must refuse before training (it would otherwise train for nothing): no epoch line."""
    model = tiny_model(tmp_path / "m.easir")
    ro = tmp_path / "ro"
    ro.mkdir()
    output = ro / "out.onnx"
    easc_args = {"export": ["export", model, "--format", "onnx", "-o", output],
                 "train": ["train", model, "--dataset", "digits", "--epochs", "1", "-o", output]}[command]
    script = (f"mount --bind {ro} {ro} && mount -o remount,ro,bind {ro} && "
              f"exec {sys.executable} -m easc.cli.main " + " ".join(f"'{a}'" for a in easc_args))
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True,
                          timeout=WAIT_SECONDS, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stderr.strip() == f"error: {output}: cannot write (Read-only file system)"
    assert "epoch" not in proc.stdout and proc.stdout == ""


# ------------------------------------------------------------------------------------------- exit codes

def test_an_internal_error_exits_3_with_one_line_naming_a_log_that_holds_the_traceback(tmp_path, monkeypatch):
    import importlib
    import tempfile

    def broken(graph):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(importlib.import_module("easc.ir.describe"), "describe_table", broken)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    line = one_line_error(easc("inspect", tiny_model(tmp_path / "m.easir")), 3,
                          "internal error (ZeroDivisionError: a bug)")
    log = Path(re.search(r"traceback in (\S+)$", line).group(1))
    assert log.parent == tmp_path and log.name.startswith("easc-crash-")
    text = log.read_text()
    assert "Traceback" in text and "raise ZeroDivisionError" in text


def test_an_interrupted_command_exits_130_in_one_line(tmp_path, monkeypatch):
    import importlib

    def interrupted(graph):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module("easc.ir.describe"), "describe_table", interrupted)
    one_line_error(easc("inspect", tiny_model(tmp_path / "m.easir")), 130, "interrupted")


@pytest.mark.parametrize("args", [["train", "M", "--seed", "-1"], ["search", "--seed", "-1"],
                                  ["report", "R", "--top", "-1"], ["train", "M", "--seed", str(2**70)]])
def test_out_of_range_numbers_are_one_line_usage_errors(tmp_path, args):
    args = [str(tiny_model(tmp_path / "m.easir")) if a == "M" else str(tmp_path) if a == "R" else a for a in args]
    one_line_error(easc(*args), 2, "is not in the range")


def test_a_reader_that_goes_away_ends_the_command_quietly_as_sigpipe_would(tmp_path):
    model = tiny_model(tmp_path / "m.easir")
    proc = cli_process("inspect", model, "--json")
    proc.stdout.close()  # `easc inspect ... | head -0`: the reader is gone before easc writes
    code = proc.wait(timeout=WAIT_SECONDS)
    assert code == 141 and proc.stderr.read() == ""


@pytest.mark.parametrize("name", ["search.lock", "search.sqlite-wal", "children"])
def test_a_symlink_planted_in_a_run_folder_is_refused_and_its_target_left_alone(run, tmp_path, name):
    target = tmp_path / "target"
    if name == "children":
        target.mkdir()
        shutil.rmtree(run / "children")
    else:
        target.write_text("keep me")
        (run / name).unlink(missing_ok=True)
    os.symlink(target, run / name)
    one_line_error(easc("search", "--resume", run, "--steps", "2"), 2, str(run), name)
    if name == "children":
        assert list(target.iterdir()) == []
    else:
        assert target.read_text() == "keep me"

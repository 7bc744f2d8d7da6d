"""The benchmark scripts run: each one's --smoke mode finishes and writes the JSON that run_all.py reads.

Benchmarks print figures; nothing here asserts a figure (STYLE.md: no timed assertions in tests). These
tests only keep the scripts from rotting as the library changes under them. Ray is left out (--no-ray):
starting a Ray instance costs more than all the rest together.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def check_report(path: Path, name: str) -> dict:
    report = json.loads(path.read_text())
    assert report["benchmark"] == name
    assert report["mode"] == "smoke"
    assert report["headline"] and all(set(row) == {"metric", "value"} for row in report["headline"])
    return report


def test_bench_reuse_smoke_runs_both_arms_and_writes_json_and_plot(tmp_path):
    out = tmp_path / "bench_reuse.json"
    load("bench_reuse").main(["--smoke", "--out", str(out)])
    report = check_report(out, "bench_reuse")
    (digits,) = report["results"]
    arms = {a["arm"]: a for a in digits["arms"]}
    assert {"reuse", "scratch x1"} <= set(arms)
    assert arms["reuse"]["inherit"] is True and arms["scratch x1"]["inherit"] is False
    assert arms["reuse"]["child_epochs"] > 0 and arms["scratch x1"]["child_epochs"] > 0
    assert out.with_suffix(".png").stat().st_size > 0


def test_bench_rl_vs_random_smoke_reports_both_experiments_per_step(tmp_path):
    out = tmp_path / "bench_rl_vs_random.json"
    load("bench_rl_vs_random").main(["--smoke", "--out", str(out)])
    report = check_report(out, "bench_rl_vs_random")
    for experiment in ("real_digits", "synthetic_reward"):
        for strategy in ("rl", "random"):
            steps = report[experiment]["summary"][strategy]["per_step"]
            assert steps and {"mean_val_acc", "mean_val_acc_sd", "best_so_far"} <= set(steps[0])
            summary = report[experiment]["summary"][strategy]
            assert len(summary["last_step_mean"]) == len(summary["last_step_best"]) == 2  # (mean, sd) over seeds
        assert report[experiment]["parent"] == "start"
    assert out.with_suffix(".png").stat().st_size > 0


def test_bench_executors_smoke_times_in_process_and_worker_pools(tmp_path):
    out = tmp_path / "bench_executors.json"
    load("bench_executors").main(["--smoke", "--no-ray", "--out", str(out)])
    report = check_report(out, "bench_executors")
    assert set(report["results"]) == {"in-process (local)", "process pool x1", "process pool x2"}
    assert all(r["failed"] == 0 and r["children_per_minute"] > 0 for r in report["results"].values())
    assert any("ray" in s for s in report["skipped"])


def test_bench_defaults_smoke_runs_the_readme_commands_and_reads_their_reports(tmp_path):
    # The DenseNet search is the same code path with other flags; left out to keep the test short.
    out = tmp_path / "bench_defaults.json"
    load("bench_defaults").main(["--smoke", "--skip-densenet", "--out", str(out)])
    report = check_report(out, "bench_defaults")
    (demo,) = report["searches"]
    assert demo["command"].startswith("easc search --dataset digits --out runs/demo")
    assert demo["failed"] == 0 and demo["networks"] == 3  # the start net and 2 children
    assert demo["start"]["params"] > 0 and demo["best"]["depth"] >= demo["start"]["depth"]
    assert report["train"]["json"]["epochs"] == 1 and 0 <= report["train"]["json"]["test_acc"] <= 1
    assert len(report["load_average_start"]) == 3


def test_run_all_summarises_results_into_json_and_a_markdown_table(tmp_path):
    run_all = load("run_all")
    ours = {"benchmark": "bench_x", "headline": [{"metric": "speed", "value": "2.0x"}]}
    backend = {"benchmark": "bench_backend", "results": [
        {"input": [1, 8, 8], "paired_ratio": 1.01, "images_per_s": {"to_module": 2000.0, "nn.Sequential": 1980.0}}]}
    entries = [
        {"name": "bench_x", "status": "ok", "seconds": 1.0, "headline": run_all.headline("bench_x", ours)},
        {"name": "bench_backend", "status": "ok", "seconds": 1.0, "headline": run_all.headline("bench_backend", backend)},
        {"name": "bench_other", "status": "ok", "seconds": 1.0,
         "headline": run_all.headline("bench_other", {"benchmark": "bench_other", "speedup": 1.5, "nested": {}})},
        run_all.run_one("bench_not_written_yet", "quick", None),
    ]
    assert entries[3]["status"] == "skipped" and "not found" in entries[3]["message"]
    summary = {"mode": "quick", "machine": run_all.machine_info(), "seconds": 4.0, "benchmarks": entries}
    json_path, md_path = run_all.write_summary(summary, tmp_path)
    assert json.loads(json_path.read_text())["machine"]["cores"] >= 1
    table = md_path.read_text()
    assert "| bench_x | speed | 2.0x |" in table
    assert "to_module / nn.Sequential" in table and "| bench_other | speedup | 1.5 |" in table
    assert "| bench_not_written_yet | skipped |" in table


@pytest.mark.parametrize("name", ["bench_reuse", "bench_rl_vs_random", "bench_executors", "bench_defaults",
                                  "run_all"])
def test_every_benchmark_script_documents_how_to_run_it(name):
    module = load(name)
    assert "python benchmarks/" in module.__doc__


def test_reinitialised_children_keep_the_architecture_and_get_fresh_seeded_weights():
    # The hook bench_reuse.py's from-scratch arms rely on (SearchConfig.inherit = False).
    import numpy as np

    from easc.ir import structural_hash
    from easc.search.loop import reinitialised
    from easc.search.start_nets import build_start_net

    parent = build_start_net("digits-small", (1, 8, 8), 10, seed=0)
    fresh = reinitialised(parent, np.random.default_rng(1))
    again = reinitialised(parent, np.random.default_rng(1))
    assert structural_hash(fresh) == structural_hash(parent)
    convs = [n.name for n in parent.nodes if n.op == "conv2d"]
    assert not np.array_equal(fresh.node(convs[0]).weights["weight"], parent.node(convs[0]).weights["weight"])
    assert all(np.array_equal(a.weights[k], b.weights[k]) for a, b in zip(fresh.nodes, again.nodes) for k in a.weights)
    bn = next(n for n in fresh.nodes if n.op == "batchnorm")
    assert np.all(bn.weights["mean"] == 0) and np.all(bn.weights["var"] == 1)


def test_bench_transform_smoke_times_the_command_against_its_floor(tmp_path):
    out = tmp_path / "bench_transform.json"
    report = load("bench_transform").main(["--smoke", "--out", str(out)])
    check_report(out, "bench_transform")
    (row,) = report["rows"]
    assert row["model"] == "resnet18" and row["chain"] == "widen"
    assert row["wall"] > 0 and row["floor"]["total"] > 0 and row["peak_rss"] > 0 and row["output_bytes"] > 0


def test_bench_driver_smoke_samples_children_with_both_checks(tmp_path):
    out = tmp_path / "bench_driver.json"
    report = load("bench_driver").main(["--smoke", "--out", str(out)])
    check_report(out, "bench_driver")
    assert len(report["seconds"]["local"]) == len(report["seconds"]["full"]) == 2


def test_bench_search_splits_a_steps_idle_time_into_head_tail_update_and_gaps():
    bench = load("bench_search")
    # Two workers, a 10 s step: both busy 2-5, 5-7 and 7.5-8 (5.5 s); the rest is the head (0-2), a mid-step gap
    # (7-7.5), the tail (8-9: the last child alone) and the update (9-10).
    jobs = [(1, 4), (2, 5), (4, 8), (5, 7), (7.5, 9)]
    assert bench.all_busy_fraction((0, 10), jobs, 2) == pytest.approx(0.55)
    assert bench.idle_breakdown((0, 10), jobs, 2) == pytest.approx({"head": 2, "tail": 1, "update": 1, "gaps": 0.5})
    assert bench.idle_breakdown((0, 10), [(1, 4)], 2) == {"head": 4, "tail": 0.0, "update": 6, "gaps": 0.0}


def test_bench_ab_smoke_runs_both_sides_from_their_own_trees_and_writes_json(tmp_path):
    import shutil
    import subprocess

    repo = BENCH.parent
    if shutil.which("git") is None or subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo,
                                                     capture_output=True).returncode:
        pytest.skip("needs git and a git checkout of the project (it checks out HEAD as the base)")
    out = tmp_path / "bench_ab.json"
    bench = load("bench_ab")
    report = bench.main(["--smoke", "--out", str(out)])
    assert check_report(out, "bench_ab") == json.loads(json.dumps(report))
    (row,) = report["rows"]
    assert (row["model"], row["chain"]) == ("resnet18", "widen")
    assert row["base_wall"] > 0 and row["new_wall"] > 0 and row["wall_ratio"] > 0
    assert row["base_rss"] > 0 and row["new_rss"] > 0
    assert report["base"] == subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                                            text=True).stdout.strip()
    worktrees = subprocess.run(["git", "worktree", "list"], cwd=repo, capture_output=True, text=True).stdout
    assert str(tmp_path) not in worktrees and "base-tree" not in worktrees  # its checkout is gone


def test_bench_ab_package_folder_imports_the_tree_it_was_made_from(tmp_path):
    import os
    import subprocess

    bench = load("bench_ab")
    folder = bench.package_folder(BENCH.parent, tmp_path / "pkg")
    found = subprocess.run([sys.executable, "-P", "-c", "import easc.ir; print(easc.ir.__file__)"],
                           env={**os.environ, "PYTHONPATH": str(folder)}, capture_output=True, text=True)
    assert Path(found.stdout.strip()).parent == folder / "easc" / "ir"
    assert Path(found.stdout.strip()).resolve().parent == (BENCH.parent / "eas_ir").resolve()


def test_bench_fold_smoke_times_both_checks_of_a_widened_pair(tmp_path):
    out = tmp_path / "fold.json"
    load("bench_fold").main(["--smoke", "--out", str(out)])
    report = check_report(out, "bench_fold")
    (row,) = report["rows"]
    assert row["positions"] == 64 and row["fold_seconds"] > 0 and row["whole_seconds"] > 0
    assert (tmp_path / "fold.log").read_text().startswith("bench_fold: ")

"""Hostile inputs through every command: one line, the right exit code, nothing left behind, no code run.

The corpus (tests/hostile_corpus.py) is generated: truncated and garbage files of each format, cycles,
unknown ops, huge / zero / negative dimensions, NaN weights, external data outside the model's folder,
bombs in constant folding, and names built to break out of generated code. Every file goes through
`inspect`, `transform`, `train`, `export` (onnx, ir, torch) and `search --start` in a worker process that runs under a
memory limit (`resource.setrlimit(RLIMIT_AS)`) and a time limit per command (SIGALRM), so a bomb that
got past the importer fails the test instead of taking the machine down. The worker runs the CLI
in-process, many cases per process, so the corpus costs one torch import, not hundreds.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import hostile_corpus as corpus

MEMORY_LIMIT = 3 * 2**30  # address space of the worker: torch, onnxruntime and matplotlib take < 1 GiB of it
CASE_SECONDS = 60  # per command; generous for a shared 2-core machine, far below a bomb's hours
WORKER_SECONDS = 900

WORKER = textwrap.dedent("""
    import contextlib, io, json, os, signal, sys, traceback
    from easc.cli.main import main

    cases = json.load(open(sys.argv[1]))
    seconds = int(sys.argv[2])
    current = None

    def timeout(signum, frame):
        print(json.dumps({"timeout": current}), flush=True)
        os._exit(99)

    signal.signal(signal.SIGALRM, timeout)
    results = []
    for case in cases:
        current = case["id"]
        out, err = io.StringIO(), io.StringIO()
        signal.alarm(seconds)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                main.main(case["args"], prog_name="easc", standalone_mode=True)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            code = "escaped"
            err.write(traceback.format_exc())
        signal.alarm(0)
        results.append({"id": case["id"], "code": code, "stderr": err.getvalue(), "stdout": out.getvalue()})
    print(json.dumps({"results": results}), flush=True)
""")


def _limits():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_worker(cases: list, tmp_path: Path) -> dict:
    """Run CLI cases [{"id", "args"}] in one memory-limited process; {id: {"code", "stderr", "stdout"}}."""
    spec = tmp_path / "cases.json"
    spec.write_text(json.dumps(cases))
    crash_dir = tmp_path / "crash-logs"
    crash_dir.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(crash_dir), PYTHONPATH=str(Path(__file__).parent))
    proc = subprocess.run([sys.executable, "-c", WORKER, str(spec), str(CASE_SECONDS)], capture_output=True,
                          stdin=subprocess.DEVNULL, text=True, timeout=WORKER_SECONDS, preexec_fn=_limits, env=env, cwd=tmp_path)
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "{}"
    report = json.loads(last)
    assert "timeout" not in report, f"case {report.get('timeout')} ran over {CASE_SECONDS} s"
    assert proc.returncode == 0 and "results" in report, proc.stderr[-3000:]
    # Internal errors (exit 3) leave a crash log; a hostile input must never be one.
    logs = list(crash_dir.glob("easc-crash-*.log"))
    assert not logs, [p.read_text()[-2000:] for p in logs]
    return {r["id"]: r for r in report["results"]}


def commands(model: Path, out: Path) -> dict:
    """Every command a user can point at a model file, each writing into `out`."""
    return {
        "inspect": ["inspect", str(model)],
        "inspect-json": ["inspect", str(model), "--json"],
        "transform": ["transform", str(model), "--widen", "-o", str(out / "t.onnx")],
        "train": ["train", str(model), "--dataset", "digits", "--epochs", "1", "-o", str(out / "trained.easir")],
        "export-onnx": ["export", str(model), "--format", "onnx", "-o", str(out / "e.onnx")],
        "export-ir": ["export", str(model), "--format", "ir", "-o", str(out / "e.easir")],
        "export-torch": ["export", str(model), "--format", "torch", "-o", str(out / "torch")],
        "search": ["search", "--start", str(model), "--dataset", "synthetic", "--steps", "1", "--children", "1",
                   "--epochs", "1", "--quiet", "--out", str(out / "run")],
    }


def assert_one_line_error(result, code=2):
    stderr = result["stderr"]
    assert result["code"] == code, (result["id"], result["code"], stderr[-2000:])
    assert "Traceback" not in stderr, (result["id"], stderr[-2000:])
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), (result["id"], stderr)


def test_every_hostile_file_fails_every_command_in_one_line_with_exit_2_and_writes_nothing(tmp_path):
    cases, outs = [], {}
    for name, build in corpus.CASES.items():
        folder = tmp_path / name.replace(".", "_")
        folder.mkdir()
        model = build(folder)
        out = folder / "out"
        out.mkdir()
        for command, args in commands(model, out).items():
            cases.append({"id": f"{name} {command}", "args": args})
            outs[f"{name} {command}"] = out
    fifo = tmp_path / "fifo.onnx"
    os.mkfifo(fifo)
    for device in ("/dev/zero", str(fifo)):  # endless, or blocking until a writer comes: never read
        out = tmp_path / f"out{len(outs)}"
        out.mkdir()
        for command, args in commands(Path(device), out).items():
            cases.append({"id": f"{device} {command}", "args": args})
            outs[f"{device} {command}"] = out
    results = run_worker(cases, tmp_path)
    assert len(results) == len(cases)
    for case in cases:
        result = results[case["id"]]
        assert_one_line_error(result)
        left = sorted(p.name for p in outs[case["id"]].iterdir())
        assert left == [], (case["id"], left)  # no output, no temporary file
    # The external-data files outside the model's folder were never read into an output, and are intact.
    assert (tmp_path / "outside.bin").read_bytes() == b"\0" * 4096


def test_the_corpus_errors_name_the_problem(tmp_path):
    """A few messages, checked word for word where the issue names the failure."""
    expect = {
        "bomb_loop.onnx": "Loop over constants is not evaluated at import",
        "bomb_constant_of_shape.onnx": "over the import budget",
        "bomb_range.onnx": "over the import budget",
        "bomb_concat_doubling.onnx": "over the import budget",
        "negative_dims.onnx": "has dimension -3 after the batch; dimensions must be positive",
        "zero_dims.onnx": "has dimension 0 after the batch",
        "external_parent.onnx": "keeps its data in '../outside.bin', which is not a file in the model's folder",
        "external_absolute.onnx": "keeps its data in '/etc/passwd'",
        "external_symlink.onnx": "keeps its data in 'weights.bin', which is not a file in the model's folder",
        "huge_conv_5e6.easir": "has shape (4, 1, 3, 3) in the file but the graph declares (5000000, 1, 3, 3)",
        "huge_conv_4e8.easir": "more than easc's limit",
        "negative_dims.easir": "dimension -3",
        "zero_dims.easir": "dimension 0",
        "huge_input.easir": "more than easc's limit",
        "nan_weights.easir": "NaN or infinite values",
        "nan_weights.onnx": "NaN or infinite values",
        "header_too_long.easir": "is it truncated?",
        "f64_weights.easir": "not float32",
        "cycle.easir": "not defined above it",
    }
    cases = []
    for name in expect:
        folder = tmp_path / name.replace(".", "_")
        folder.mkdir()
        cases.append({"id": name, "args": ["inspect", str(corpus.CASES[name](folder))]})
    results = run_worker(cases, tmp_path)
    for name, words in expect.items():
        assert_one_line_error(results[name])
        assert words in results[name]["stderr"], (name, results[name]["stderr"])


def _injection_run(tmp_path, fmt, wanted):
    marker = tmp_path / corpus.MARKER_NAME
    folder = tmp_path / "model"
    folder.mkdir()
    model = (corpus.injection_onnx if fmt == "onnx" else corpus.injection_easir)(folder, marker)
    out = tmp_path / "out"
    out.mkdir()
    cases = [{"id": c, "args": args} for c, args in commands(model, out).items() if c in wanted]
    return model, out, marker, run_worker(cases, tmp_path)


@pytest.mark.parametrize("fmt", ["onnx", "easir"])
def test_names_built_to_break_out_of_generated_code_are_data_to_every_command(tmp_path, fmt):
    """Graph, output and layer names that close a docstring or a string literal and call os.system: inspect,
    transform, train and the ONNX / IR exports treat them as data (and keep them), and run nothing."""
    model, out, marker, results = _injection_run(
        tmp_path, fmt, ("inspect", "inspect-json", "transform", "train", "export-onnx", "export-ir"))
    for command, result in results.items():
        assert result["code"] == 0, (command, result["stderr"])
    assert not marker.exists(), "a name in the model file ran a shell command"
    from easc.backends.formats import load_model

    names = list(load_model(model).outputs)
    assert corpus.payload(marker) in names
    assert list(load_model(out / "e.easir").outputs) == names
    assert list(load_model(out / "e.onnx").outputs) == names


@pytest.mark.parametrize("fmt", ["onnx", "easir"])
def test_export_torch_of_names_built_to_break_out_of_generated_code_runs_no_command(tmp_path, fmt):
    """`export --format torch` must neither run such a name while checking the code it generates nor write a
    model.py that runs it when imported."""
    model, out, marker, results = _injection_run(tmp_path, fmt, ("export-torch",))
    result = results["export-torch"]
    assert result["code"] in (0, 2), result["stderr"]  # exported, or refused in one line
    if result["code"] == 2:
        assert_one_line_error(result)
    assert not marker.exists(), "a name in the model file ran a shell command during the export"
    model_py = out / "torch" / "model.py"
    if model_py.exists():
        subprocess.run([sys.executable, "-c", f"import runpy; runpy.run_path({str(model_py)!r})"],
                       capture_output=True, timeout=300, cwd=tmp_path)
        assert not marker.exists(), "importing the exported model.py ran a shell command"

"""The `easc` command line (`easc.cli`): inspect, transform, train, export, and how each fails.

Most tests call the CLI in-process through click's CliRunner; a few run it as a real subprocess, which
is what a user or a script sees (exit codes, stderr, no traceback). The contract (issues 2 and 3):

- transform runs passes in command-line order, verifies each with onnxruntime as the oracle, prints
  what changed and the max abs difference; exit 0 only when every pass verified, 1 when one failed
  verification (nothing written).
- bad input (unreadable file, unsupported op, unknown layer, smaller width, cycle, bad syntax, unknown
  suffix, a model that does not fit the data set) is ONE line on stderr, exit 2, no traceback, and the
  output path is left as it was.

Models are digits-sized (1x8x8, a few thousand parameters) and training runs 1-2 epochs on one thread,
so the whole file stays well under two minutes on a shared 2-core machine.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from easc.backends.formats import load_model
from easc.backends.onnx import run_onnx, save_onnx
from easc.cli.main import main
from easc.ir import load_graph, print_graph, probe_inputs, save_graph
from easc.search.start_nets import digits_small, eas_small

# The contract's tolerance for "the output file computes what the input did", as in passes/base.py:
# float32 weights, about 1e-5 relative after a few thousand accumulated roundings.
RTOL = 1e-5
SENTINEL = b"an output file that was here before the command ran"


# -- helpers ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """Shared input files: digits_small as ONNX and .easir, a truncated file, non-ONNX bytes, an
    unsupported operator, and a CIFAR-shaped net (does not fit digits)."""
    folder = tmp_path_factory.mktemp("models")
    save_onnx(digits_small(), folder / "digits.onnx")
    save_graph(digits_small(), folder / "digits.easir")
    data = (folder / "digits.onnx").read_bytes()
    (folder / "truncated.onnx").write_bytes(data[: len(data) // 3])
    (folder / "notes.onnx").write_bytes(b"these are my notes, not a network\n")
    _unsupported_model(folder / "sine.onnx")
    save_onnx(eas_small(), folder / "cifar.onnx")
    return folder


def _unsupported_model(path):
    """A valid ONNX model whose second node, `my_sine`, is a Sin (outside easc's op set)."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="my_relu"),
             helper.make_node("Sin", ["r"], ["y"], name="my_sine")]
    model = helper.make_model(helper.make_graph(nodes, "sine", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def easc(*args):
    """Run `easc ARGS` in-process; stdout and stderr come back separately."""
    return CliRunner().invoke(main, [str(a) for a in args], prog_name="easc")


def _ok(result):
    assert result.exit_code == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}\n{result.exception!r}"
    return result


def _one_line_error(stderr: str, code: int, exit_code: int, *fragments):
    """stderr is exactly one `error: ...` line holding every fragment; no traceback."""
    assert exit_code == code, stderr
    lines = stderr.strip("\n").splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert lines[0].startswith("error: ")
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def _usage_error(result, *fragments):
    """Exit 2 through sys.exit (not an escaped exception), one line naming what is wrong."""
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    return _one_line_error(result.stderr, 2, result.exit_code, *fragments)


def _outputs(path, feeds):
    return run_onnx(str(path), feeds) if str(path).endswith(".onnx") else run_onnx(load_model(path), feeds)


def _assert_same_function(before_path, after_path):
    """The two model files compute the same outputs in onnxruntime within RTOL * (1 + max |out|)."""
    feeds = probe_inputs(load_model(before_path), batch=8, seed=1)
    a, b = _outputs(before_path, feeds), _outputs(after_path, feeds)
    assert a.keys() == b.keys()
    for name in a:
        scale = float(np.max(np.abs(a[name])))
        np.testing.assert_allclose(b[name], a[name], rtol=0, atol=RTOL * (1 + scale))


def _widths(path) -> dict:
    return {n.name: n.width for n in load_model(path).nodes if n.op in ("conv2d", "linear")}


def _subprocess(*args, cwd=None):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "easc.cli.main", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=120)


# -- inspect ---------------------------------------------------------------------------------
def test_inspect_prints_a_table_with_each_node_its_op_output_shape_and_parameters(model_dir):
    out = _ok(easc("inspect", model_dir / "digits.onnx")).stdout
    header = out.splitlines()[0].split()
    assert header[:5] == ["node", "op", "inputs", "shape", "params"]
    rows = {line.split()[0]: line for line in out.splitlines()[2:] if line.strip()}
    assert rows["conv_1"].split()[1] == "conv2d" and "['N', 8, 8, 8]" in rows["conv_1"]
    assert " 80 " in rows["conv_1"] and "kernel=3" in rows["conv_1"]
    assert rows["fc_1"].split()[1] == "linear" and " 272 " in rows["fc_1"]
    assert "1,770 parameters" in out and "logits ['N', 10]" in out


def test_inspect_json_follows_the_documented_schema(model_dir):
    info = json.loads(_ok(easc("inspect", model_dir / "digits.onnx", "--json")).stdout)
    assert info["inputs"] == [{"name": "image", "shape": ["N", 1, 8, 8]}]
    assert info["outputs"] == [{"name": "logits", "shape": ["N", 10]}]
    assert isinstance(info["params"], int) and info["params"] == 1770
    assert sum(n["params"] for n in info["nodes"]) == info["params"]
    for node in info["nodes"]:
        assert {"name", "op", "inputs", "shape", "params"} <= node.keys()
        assert node["shape"][0] == "N" and isinstance(node["inputs"], list)
        if node["op"] == "conv2d":
            assert isinstance(node["width"], int) and node["kernel"] == 3
        if node["op"] == "linear":
            assert isinstance(node["width"], int)
    by_name = {n["name"]: n for n in info["nodes"]}
    assert by_name["conv_2"]["width"] == 16 and by_name["conv_2"]["inputs"] == ["maxpool_1"]
    assert by_name["fc_2"]["width"] == 10


def test_inspect_json_names_are_the_names_transform_accepts(model_dir, tmp_path):
    info = json.loads(_ok(easc("inspect", model_dir / "digits.onnx", "--json")).stdout)
    convs = [n for n in info["nodes"] if n["op"] == "conv2d"]
    relus = [n["name"] for n in info["nodes"] if n["op"] == "relu"]
    target = convs[0]["width"] + 4
    out = tmp_path / "out.onnx"
    _ok(easc("transform", model_dir / "digits.onnx", "--widen", f"{convs[0]['name']}={target}",
             "--deepen", relus[0], "--widen-kernel", convs[1]["name"], "-o", out))
    after = {n["name"]: n for n in json.loads(_ok(easc("inspect", out, "--json")).stdout)["nodes"]}
    assert after[convs[0]["name"]]["width"] == target
    assert after[convs[1]["name"]]["kernel"] == 5
    assert f"deepen_{relus[0]}" in after


def test_inspect_reads_the_ir_file_format_as_well_as_onnx(model_dir):
    from_ir = json.loads(_ok(easc("inspect", model_dir / "digits.easir", "--json")).stdout)
    from_onnx = json.loads(_ok(easc("inspect", model_dir / "digits.onnx", "--json")).stdout)
    assert from_ir["nodes"] == from_onnx["nodes"] and from_ir["params"] == from_onnx["params"]


# -- transform -------------------------------------------------------------------------------
def test_widen_alone_doubles_every_widenable_layer_and_keeps_the_function(model_dir, tmp_path):
    out = tmp_path / "wider.onnx"
    result = _ok(easc("transform", model_dir / "digits.onnx", "--widen", "-o", out))
    assert _widths(out) == {"conv_1": 16, "conv_2": 32, "fc_1": 32, "fc_2": 10}  # fc_2 makes the output
    _assert_same_function(model_dir / "digits.onnx", out)
    assert result.stdout.count("verified exact") == 3  # a plain chain of layers: one widen each


def test_widen_with_factor_3_triples_every_widenable_layer(model_dir, tmp_path):
    out = tmp_path / "wider.onnx"
    _ok(easc("transform", model_dir / "digits.onnx", "--widen", "--factor", "3", "-o", out))
    assert _widths(out) == {"conv_1": 24, "conv_2": 48, "fc_1": 48, "fc_2": 10}
    _assert_same_function(model_dir / "digits.onnx", out)


def test_widen_one_layer_by_name_uses_the_factor_and_leaves_the_others(model_dir, tmp_path):
    out = tmp_path / "wider.onnx"
    _ok(easc("transform", model_dir / "digits.onnx", "--widen=conv_2", "--factor", "1.5", "-o", out))
    assert _widths(out) == {"conv_1": 8, "conv_2": 24, "fc_1": 16, "fc_2": 10}


def test_widen_takes_a_comma_separated_list_of_layers_and_widths(model_dir, tmp_path):
    out = tmp_path / "wider.onnx"
    stdout = _ok(easc("transform", model_dir / "digits.onnx", "--widen", "conv_1,fc_1=20", "-o", out)).stdout
    assert _widths(out) == {"conv_1": 16, "conv_2": 16, "fc_1": 20, "fc_2": 10}
    assert stdout.index("widen layer=conv_1") < stdout.index("widen layer=fc_1")
    _assert_same_function(model_dir / "digits.onnx", out)


def test_transform_prints_per_pass_what_changed_and_the_max_difference(model_dir, tmp_path):
    out = tmp_path / "out.onnx"
    stdout = _ok(easc("transform", model_dir / "digits.onnx", "--widen", "conv_2=48", "--deepen", "relu_2",
                      "--kernel", "3", "--skip", "relu_1:conv_2", "-o", out)).stdout
    lines = stdout.splitlines()
    headers = [line for line in lines if not line.startswith(" ") and "verified" in line]
    assert [h.split()[0] for h in headers] == ["widen", "deepen", "skip"]
    assert all("max |diff|" in h for h in headers)
    assert "  conv_2: 16 -> 48 channels" in lines
    assert any(line.startswith("  gap_1 now reads deepen_relu_2") for line in lines)
    assert lines[-1].startswith(f"wrote {out}") and "end to end max |diff|" in lines[-1]
    assert _widths(out)["conv_2"] == 48
    _assert_same_function(model_dir / "digits.onnx", out)


def test_transform_applies_passes_in_command_line_order(model_dir, tmp_path):
    src = model_dir / "digits.onnx"
    deepen_first, widen_first = tmp_path / "a.onnx", tmp_path / "b.onnx"
    first = _ok(easc("transform", src, "--deepen", "relu_1", "--widen", "conv_1=12", "-o", deepen_first)).stdout
    second = _ok(easc("transform", src, "--widen", "conv_1=12", "--deepen", "relu_1", "-o", widen_first)).stdout
    assert first.index("deepen after=relu_1") < first.index("widen layer=conv_1")
    assert second.index("widen layer=conv_1") < second.index("deepen after=relu_1")
    # Deepening first inserts an 8 -> 8 identity that widening conv_1 only feeds wider;
    # widening first makes the inserted layer 12 -> 12.
    assert _widths(deepen_first)["deepen_relu_1"] == 8
    assert _widths(widen_first)["deepen_relu_1"] == 12
    assert print_graph(load_model(deepen_first)) != print_graph(load_model(widen_first))
    _assert_same_function(src, deepen_first)
    _assert_same_function(src, widen_first)


def test_transform_reads_and_writes_the_ir_file_format(model_dir, tmp_path):
    out = tmp_path / "wider.easir"
    _ok(easc("transform", model_dir / "digits.easir", "--widen", "fc_1=20", "-o", out))
    assert load_graph(out).node("fc_1").width == 20  # the IR's own reader: not ONNX under another name
    _assert_same_function(model_dir / "digits.onnx", out)


def test_transform_replaces_an_existing_output_file_when_every_pass_verifies(model_dir, tmp_path):
    out = tmp_path / "out.onnx"
    out.write_bytes(SENTINEL)
    _ok(easc("transform", model_dir / "digits.onnx", "--widen-kernel", "conv_1=5", "-o", out))
    _assert_same_function(model_dir / "digits.onnx", out)


# Each bad input: the arguments after `transform`, with {src} for the input folder and {out} for the
# output path, and fragments the one-line message must hold.
BAD_TRANSFORMS = {
    "truncated_file": (["{src}/truncated.onnx", "--widen"], ["truncated.onnx", "not an ONNX model"]),
    "non_onnx_bytes": (["{src}/notes.onnx", "--widen"], ["notes.onnx", "not an ONNX model"]),
    "missing_file": (["{src}/absent.onnx", "--widen"], ["absent.onnx", "no such file"]),
    "unsupported_op": (["{src}/sine.onnx", "--widen"], ["'Sin'", "my_sine", "not supported"]),
    "unknown_layer": (["{src}/digits.onnx", "--widen", "conv_9=32"],
                      ["'conv_9'", "valid: conv_1, conv_2, fc_1, fc_2"]),
    "unknown_node_to_deepen": (["{src}/digits.onnx", "--deepen", "relu_9"], ["'relu_9'", "valid:", "relu_2"]),
    "smaller_width": (["{src}/digits.onnx", "--widen", "conv_2=8"], ["conv_2", "smaller", "16"]),
    "cycle_skip": (["{src}/digits.onnx", "--skip", "relu_2:conv_1"], ["relu_2", "conv_1", "cycle"]),
    "skip_without_colon": (["{src}/digits.onnx", "--skip", "relu_1-conv_2"], ["--skip", "SRC:DST"]),
    "skip_missing_dst": (["{src}/digits.onnx", "--skip", "relu_1:"], ["--skip", "SRC:DST"]),
    "width_not_a_number": (["{src}/digits.onnx", "--widen", "conv_1=wide"], ["conv_1=wide", "whole number"]),
    "widen_the_output_layer": (["{src}/digits.onnx", "--widen", "fc_2=20"], ["fc_2", "output"]),
    "factor_not_above_1": (["{src}/digits.onnx", "--widen", "--factor", "0.5"], ["--factor", "0.5"]),
    "factor_not_above_1_for_one_layer": (["{src}/digits.onnx", "--widen", "conv_1", "--factor", "1"],
                                         ["--factor", "greater than 1"]),
    "infinite_factor": (["{src}/digits.onnx", "--widen", "conv_1", "--factor", "inf"], ["--factor", "inf"]),
    "nan_factor": (["{src}/digits.onnx", "--widen", "--factor", "nan"], ["--factor", "nan"]),
    "nothing_to_do": (["{src}/digits.onnx"], ["nothing to do"]),
    "second_pass_fails": (["{src}/digits.onnx", "--widen", "conv_1=16", "--widen", "conv_1=12"],
                          ["conv_1", "smaller"]),
}


@pytest.mark.parametrize("preexisting", [False, True], ids=["no_output_yet", "output_exists"])
@pytest.mark.parametrize("case", sorted(BAD_TRANSFORMS))
def test_bad_transform_input_is_one_line_exit_2_and_leaves_the_output_path_alone(model_dir, tmp_path, case,
                                                                                  preexisting):
    args, fragments = BAD_TRANSFORMS[case]
    out = tmp_path / "out.onnx"
    if preexisting:
        out.write_bytes(SENTINEL)
    result = easc("transform", *[a.format(src=model_dir) for a in args], "-o", out)
    _usage_error(result, *fragments)
    if preexisting:
        assert out.read_bytes() == SENTINEL
    else:
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == (["out.onnx"] if preexisting else [])


@pytest.mark.parametrize("preexisting", [False, True], ids=["no_output_yet", "output_exists"])
@pytest.mark.parametrize("suffix", [".txt", ".pt", ""])
def test_an_unknown_output_suffix_is_refused_before_any_work(model_dir, tmp_path, suffix, preexisting):
    out = tmp_path / f"out{suffix}"
    if preexisting:
        out.write_bytes(SENTINEL)
    result = easc("transform", model_dir / "digits.onnx", "--widen", "-o", out)
    _usage_error(result, "unknown model format", ".onnx or .easir")
    assert (out.read_bytes() == SENTINEL) if preexisting else not out.exists()
    assert len(list(tmp_path.iterdir())) == int(preexisting)


def test_click_usage_errors_are_one_line_too(model_dir, tmp_path):
    _usage_error(easc("transform", model_dir / "digits.onnx", "--widen"), "Missing option", "--output",
                 "easc transform --help")
    _usage_error(easc("transform", model_dir / "digits.onnx", "--widen", "--factor", "two", "-o",
                      tmp_path / "o.onnx"), "--factor", "'two'")
    _usage_error(easc("export", model_dir / "digits.onnx", "-o", tmp_path / "o.easir"),
                 "Missing option '--format'", "onnx, torch, ir")
    _usage_error(easc("transfrom", "x.onnx"), "No such command 'transfrom'")
    assert list(tmp_path.iterdir()) == []


def test_a_pass_that_fails_verification_exits_1_and_writes_nothing(model_dir, tmp_path, monkeypatch):
    # `easc.passes.widen` the attribute is the function (the package re-exports it); the module is in sys.modules.
    widen_module = sys.modules["easc.passes.widen"]

    real_widen = widen_module.widen

    def corrupting_widen(graph, **kwargs):
        result = real_widen(graph, **kwargs)
        layer = result.graph.node(kwargs["layer"])
        broken = layer.replace(weights={**layer.weights, "bias": layer.weights["bias"] + np.float32(0.5)})
        result.graph = result.graph.replace(nodes=[broken if n.name == layer.name else n
                                                   for n in result.graph.nodes])
        return result

    monkeypatch.setattr(widen_module, "widen", corrupting_widen)
    out, other = tmp_path / "out.onnx", tmp_path / "new.onnx"
    out.write_bytes(SENTINEL)
    for path in (out, other):
        result = easc("transform", model_dir / "digits.onnx", "--deepen", "relu_1", "--widen", "conv_2=20",
                      "-o", path)
        assert "deepen after=relu_1" in result.stdout  # the pass before the failing one ran and verified
        _one_line_error(result.stderr, 1, result.exit_code, "widen", "did not preserve the function")
    assert out.read_bytes() == SENTINEL and not other.exists()


# -- the real command line (a subprocess, as a user or a script runs it) ----------------------
def test_the_installed_command_line_transforms_and_exits_0(model_dir, tmp_path):
    out = tmp_path / "wider.onnx"
    proc = _subprocess("transform", model_dir / "digits.onnx", "--widen", "--deepen", "relu_2", "--skip",
                       "relu_1:conv_2", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and "Traceback" not in proc.stdout
    _assert_same_function(model_dir / "digits.onnx", out)


_WITH_TEARDOWN_MARK = ("import atexit, sys\n"
                       "atexit.register(lambda: print('teardown ran', file=sys.stderr))\n"
                       "from easc.cli.main import run\n"
                       "sys.argv = ['easc'] + sys.argv[1:]\n"
                       "run()\n")


@pytest.mark.parametrize("good", [True, False], ids=["verified", "bad_input"])
def test_a_transform_process_that_succeeds_ends_without_teardown_and_with_its_output_and_report_whole(
        model_dir, tmp_path, good):
    """The console script ends a successful transform at once (`main.run`): no interpreter teardown (an exit
    handler does not run), yet the output file is complete and stdout's report is all there. A failing run
    ends as usual."""
    out = tmp_path / "wider.onnx"
    layer = "relu_2" if good else "no_such_node"
    proc = subprocess.run([sys.executable, "-c", _WITH_TEARDOWN_MARK, "transform", str(model_dir / "digits.onnx"),
                           "--widen", "--deepen", layer, "-o", str(out)], capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=120)
    if good:
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == ""  # the exit handler did not run
        assert proc.stdout.splitlines()[-1].startswith(f"wrote {out}: ") and proc.stdout.endswith("result)\n")
        _assert_same_function(model_dir / "digits.onnx", out)
    else:
        assert proc.returncode == 2 and "no_such_node" in proc.stderr
        assert proc.stderr.splitlines()[-1] == "teardown ran" and not out.exists()


@pytest.mark.parametrize("args, fragments", [
    (["inspect", "{src}/truncated.onnx"], ["truncated.onnx", "not an ONNX model"]),
    (["transform", "{src}/sine.onnx", "--widen", "-o", "{out}"], ["my_sine", "not supported"]),
    (["transform", "{src}/digits.onnx", "--skip", "relu_2:conv_1", "-o", "{out}"], ["cycle"]),
    (["transform", "{src}/digits.onnx", "--widen", "-o", "{out}.txt"], ["unknown model format"]),
], ids=["truncated_inspect", "unsupported_op", "cycle_skip", "unknown_suffix"])
def test_the_installed_command_line_reports_bad_input_in_one_line_with_exit_2(model_dir, tmp_path, args,
                                                                              fragments):
    out = tmp_path / "out.onnx"
    proc = _subprocess(*[a.format(src=model_dir, out=out) for a in args])
    _one_line_error(proc.stderr, 2, proc.returncode, *fragments)
    assert list(tmp_path.iterdir()) == []


# -- train -----------------------------------------------------------------------------------
def _val_accuracy_from_file(path, data) -> float:
    logits = _outputs(path, {"image": data.x_val.numpy()})["logits"]
    return float(np.mean(np.argmax(logits, axis=1) == data.y_val.numpy()))


def test_train_prints_a_closing_json_line_and_writes_a_trained_model(model_dir, tmp_path):
    from easc.backends.torch.data import load_dataset

    out = tmp_path / "trained.onnx"
    result = _ok(easc("train", model_dir / "digits.onnx", "--dataset", "digits", "--epochs", "2", "--threads", "1",
                      "-o", out))
    lines = result.stdout.strip().splitlines()
    assert [line.startswith("epoch ") for line in lines[:2]] == [True, True]
    summary = json.loads(lines[-1])
    assert set(summary) == {"val_acc", "test_acc", "epochs", "seconds"} and summary["epochs"] == 2
    # The file holds the trained weights: its accuracy on the validation split is the reported one
    # (up to one borderline image between torch and onnxruntime), far above the untrained net's.
    data = load_dataset("digits", seed=0)
    from_file = _val_accuracy_from_file(out, data)
    assert abs(from_file - summary["val_acc"]) <= 1.5 / len(data.y_val)
    assert from_file > _val_accuracy_from_file(model_dir / "digits.onnx", data) + 0.2


def test_train_accepts_an_ir_file_and_is_reproducible_with_a_seed(model_dir, tmp_path):
    a, b = tmp_path / "a.easir", tmp_path / "b.easir"
    runs = [_ok(easc("train", model_dir / "digits.easir", "--epochs", "1", "--threads", "1", "--quiet",
                     "--seed", "3", "-o", path)).stdout for path in (a, b)]
    first, second = (json.loads(r.strip().splitlines()[-1]) for r in runs)
    assert first["val_acc"] == second["val_acc"] and first["test_acc"] == second["test_acc"]
    assert not any(line.startswith("epoch ") for line in runs[0].splitlines())
    wa, wb = load_model(a).node("conv_1").weights["weight"], load_model(b).node("conv_1").weights["weight"]
    np.testing.assert_array_equal(wa, wb)


def test_train_rejects_a_model_whose_input_shape_does_not_fit_the_dataset(model_dir, tmp_path):
    out = tmp_path / "trained.onnx"
    result = easc("train", model_dir / "cifar.onnx", "--dataset", "digits", "--epochs", "1", "-o", out)
    _usage_error(result, "cifar.onnx", "(3, 32, 32)", "(1, 8, 8)")
    assert not out.exists()


@pytest.mark.parametrize("args, fragments", [
    (["--epochs", "0"], ["--epochs", "at least 1"]),
    (["--lr", "-1"], ["--lr", "-1"]),
    (["--dataset", "imagenet"], ["'imagenet'", "digits"]),
    (["-o", "{tmp}/trained.h5"], ["unknown model format"]),
    (["--lr", "1e6", "-o", "{tmp}/trained.onnx"], ["training diverged", "learning rate"]),
], ids=["zero_epochs", "negative_lr", "unknown_dataset", "unknown_suffix", "diverging_lr"])
def test_train_reports_bad_options_in_one_line(model_dir, tmp_path, args, fragments):
    args = [a.format(tmp=tmp_path) for a in args]
    _usage_error(easc("train", model_dir / "digits.onnx", "--epochs", "1", *args), *fragments)
    assert list(tmp_path.iterdir()) == []


def test_train_rejects_unreadable_and_unsupported_models_in_one_line(model_dir, tmp_path):
    out = tmp_path / "trained.onnx"
    _usage_error(easc("train", model_dir / "truncated.onnx", "-o", out), "not an ONNX model")
    _usage_error(easc("train", model_dir / "sine.onnx", "-o", out), "my_sine")
    assert not out.exists()


# -- export ----------------------------------------------------------------------------------
def _import_generated(model_py):
    spec = importlib.util.spec_from_file_location(f"easc_exported_{abs(hash(str(model_py)))}", model_py)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("source", ["digits.onnx", "digits.easir"])
def test_export_torch_writes_model_py_and_weights_that_reproduce_the_outputs(model_dir, tmp_path, source):
    import torch

    outdir = tmp_path / "exported"
    _ok(easc("export", model_dir / source, "--format", "torch", "-o", outdir))
    assert sorted(p.name for p in outdir.iterdir()) == ["model.py", "weights.safetensors"]
    model = _import_generated(outdir / "model.py").load(outdir / "weights.safetensors")
    feeds = probe_inputs(load_model(model_dir / "digits.onnx"), batch=8, seed=2)
    with torch.no_grad():
        got = model(torch.from_numpy(feeds["image"])).numpy()
    want = run_onnx(str(model_dir / "digits.onnx"), feeds)["logits"]
    np.testing.assert_allclose(got, want, rtol=0, atol=RTOL * (1 + float(np.max(np.abs(want)))))


def test_export_ir_round_trips_through_onnx(model_dir, tmp_path):
    ir, back = tmp_path / "model.easir", tmp_path / "back.onnx"
    _ok(easc("export", model_dir / "digits.onnx", "--format", "ir", "-o", ir))
    _ok(easc("export", ir, "--format", "onnx", "-o", back))
    original, via_ir, via_onnx = (load_model(p) for p in (model_dir / "digits.onnx", ir, back))
    def body(graph):  # the text form without its first line: an imported graph is named after its file
        return print_graph(graph).split("\n", 1)[1]

    assert body(via_ir) == body(original) == body(via_onnx)
    for node in original.nodes:
        for key, w in node.weights.items():
            np.testing.assert_array_equal(via_ir.node(node.name).weights[key], w)
            np.testing.assert_array_equal(via_onnx.node(node.name).weights[key], w)


def test_export_refuses_a_suffix_that_does_not_match_the_format(model_dir, tmp_path):
    _usage_error(easc("export", model_dir / "digits.onnx", "--format", "ir", "-o", tmp_path / "model.onnx"),
                 "--format ir", ".easir")
    _usage_error(easc("export", model_dir / "digits.onnx", "--format", "onnx", "-o", tmp_path / "model.easir"),
                 "--format onnx", ".onnx")
    assert list(tmp_path.iterdir()) == []


def test_export_of_an_unreadable_model_creates_no_output_folder(model_dir, tmp_path):
    outdir = tmp_path / "exported"
    _usage_error(easc("export", model_dir / "notes.onnx", "--format", "torch", "-o", outdir), "not an ONNX model")
    assert not outdir.exists()


def test_export_torch_that_fails_halfway_leaves_no_weights_behind(model_dir, tmp_path, monkeypatch):
    import errno

    from easc.backends.torch import codegen

    real_stage = codegen._stage

    def stage(path, data):  # the disk fills up after the weights were written
        if path.name == "model.py":
            raise codegen.OutputError(errno.ENOSPC, "cannot write (No space left on device)", str(path))
        return real_stage(path, data)

    monkeypatch.setattr(codegen, "_stage", stage)
    outdir = tmp_path / "exported"
    result = easc("export", model_dir / "digits.onnx", "--format", "torch", "-o", outdir)
    assert result.exit_code != 0 and "Traceback" not in result.stderr
    assert "model.py" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not outdir.exists()


def test_any_command_module_can_be_imported_first_without_a_circular_import():
    for module in ("transform_cmd", "train_cmd", "export_cmd", "search_cmd", "report_cmd", "inspect_cmd"):
        proc = subprocess.run([sys.executable, "-c", f"import easc.cli.{module}"], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr.splitlines()[-1:]

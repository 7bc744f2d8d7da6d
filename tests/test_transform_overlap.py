"""`easc transform` syncs the output file in a thread beside the end-to-end check (`cli/background.py`): the
guarantees of the sequential command still hold. Nothing is written when the end-to-end check or the sync
fails, and no thread outlives the command. With them, two guarantees about onnxruntime's run of the user's
file (the end-to-end reference): it never starts for a file the size checks refuse, and its failure is the
one reported, whatever the passes would have made of the file."""

import threading

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import easc.backends.onnx as onnx_backend
import easc.ir.serialize as serialize
from easc.cli.background import Background
from easc.ir import IRError
from transform_cli import one_line_error, transform


@pytest.fixture
def no_thread_left():
    before = set(threading.enumerate())
    yield
    assert set(threading.enumerate()) <= before  # every Background joined, whatever the path


def test_background_returns_the_value_or_raises_the_error_in_the_caller():
    assert Background(sum, [1, 2, 3]).result() == 6

    def broken():
        raise IRError("the reference failed")

    call = Background(broken)
    assert isinstance(call.wait(), IRError)
    with pytest.raises(IRError, match="the reference failed"):
        call.result()


def test_the_written_model_is_the_checked_one_and_no_staged_file_stays(digits_onnx, tmp_path, no_thread_left):
    out = tmp_path / "out.onnx"
    result = transform(digits_onnx, "--widen", "-o", out)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]
    onnx.checker.check_model(onnx.load(out), full_check=True)


def test_a_failed_end_to_end_check_writes_nothing_while_the_sync_ran_in_a_thread(digits_onnx, tmp_path, monkeypatch,
                                                                                 no_thread_left):
    import easc.backends.formats as formats

    real = formats.load_model
    synced = []
    real_sync = serialize.sync_file

    def wrong_import(path):  # the IR differs from the file: only the end-to-end check can see it
        graph = real(path)
        node = graph.node("conv_1")
        bias = node.weights["bias"] + np.float32(1.0)
        return graph.replace(nodes=[node.replace(weights={**node.weights, "bias": bias}) if n.name == "conv_1"
                                    else n for n in graph.nodes])

    def recorded_sync(staged, path):
        synced.append(staged)
        real_sync(staged, path)

    monkeypatch.setattr(formats, "load_model", wrong_import)
    monkeypatch.setattr(serialize, "sync_file", recorded_sync)
    out = tmp_path / "out.onnx"
    line = one_line_error(transform(digits_onnx, "--deepen", "relu_1", "-o", out), 1)
    assert "end to end: the final model did not preserve the original's function" in line
    assert synced, "the staged file was synced in the background"
    assert list(tmp_path.iterdir()) == []  # no output, no staged file


def test_a_failed_sync_writes_nothing_and_names_the_output(digits_onnx, tmp_path, monkeypatch, no_thread_left):
    import errno

    def full_disk(staged, path):
        raise serialize.OutputError(errno.ENOSPC, "cannot write (No space left on device)", str(path))

    monkeypatch.setattr(serialize, "sync_file", full_disk)
    out = tmp_path / "out.onnx"
    line = one_line_error(transform(digits_onnx, "--widen", "-o", out), 1)
    assert line.startswith(f"error: {out}: cannot write") and "No space left" in line
    assert list(tmp_path.iterdir()) == []


def test_the_reference_session_never_starts_for_a_file_the_size_checks_refuse(tmp_path, monkeypatch,
                                                                              no_thread_left):
    calls = []
    monkeypatch.setattr(onnx_backend, "run_onnx", lambda *a, **k: calls.append(a))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8192, 8192])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 8192, 8192])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "huge", [x], [y])
    path = tmp_path / "huge.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    line = one_line_error(transform(path, "--deepen", "x", "-o", tmp_path / "out.onnx"), 2)
    assert "numbers on 4 probe inputs" in line
    assert calls == []
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("request_args", [["--widen"], ["--widen", "no_such_layer"]])
def test_the_references_failure_is_reported_first_as_it_would_run_in_order(digits_onnx, tmp_path, monkeypatch,
                                                                          request_args, no_thread_left):
    # onnxruntime refusing the user's file comes before any pass: a pass's refusal must not hide it
    def refuses(source, feeds, *rest):
        raise IRError(f"{source}: onnxruntime cannot run it")

    monkeypatch.setattr(onnx_backend, "run_onnx", refuses)
    out = tmp_path / "out.onnx"
    line = one_line_error(transform(digits_onnx, *request_args, "-o", out), 2)
    assert line == f"error: {digits_onnx}: onnxruntime cannot run it"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("outcome", ["written", "refused"])
def test_the_command_gives_back_the_process_state_it_changes(digits_onnx, tmp_path, outcome):
    """`transform` freezes the collector's view of the imports and stops numpy's huge-page advice for its own
    arrays; a command run inside a longer-lived process (these tests, a notebook) hands both back, whether it
    wrote its output or refused its input."""
    import gc

    advise = np._core.multiarray._set_madvise_hugepage
    before = advise(True)  # a known state: advice on
    try:
        args = ["--widen"] if outcome == "written" else ["--deepen", "no_such_node"]
        result = transform(digits_onnx, *args, "-o", tmp_path / "out.onnx")
        assert result.exit_code == (0 if outcome == "written" else 2), result.output
        assert gc.get_freeze_count() == 0
        assert advise(True) is True  # the advice was on again when the command ended
    finally:
        advise(before)

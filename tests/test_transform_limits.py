"""`easc transform` refuses impossible sizes and values in one line (exit 2, nothing written), and checks the
chain end to end against the user's original file."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from transform_cli import one_line_error, transform


def refused(result, *fragments):
    line = one_line_error(result, 2)
    for fragment in fragments:
        assert fragment in line, line


@pytest.mark.parametrize("args, fragments", [
    (["--widen", "conv_1=1000000000"], ["widen layer=conv_1, width=1000000000", "parameters", "--max-params"]),
    (["--widen", "--factor", "1e6"], ["the result would have about", "--max-params"]),
    (["--deepen", "relu_1", "--kernel", "100001"], ["deepen", "--max-params"]),
    (["--widen-kernel", "conv_1=100001"], ["widen_kernel", "--max-params"]),
    (["--widen", "conv_1=20", "--max-params", "10"], ["over the limit of 10"]),
    (["--widen", "--seed", "-1"], ["--seed"]),
    (["--widen", "--noise", "1e30"], ["--noise must be a finite number at least 0 and at most 1, got 1e+30"]),
    (["--widen", "--noise", "nan"], ["--noise must be a finite number", "got nan"]),
    (["--widen", "--factor", "inf"], ["--factor must be a finite number greater than 1"]),
])
def test_an_impossible_request_is_one_line_exit_2_and_writes_nothing(digits_onnx, tmp_path, args, fragments):
    out = tmp_path / "out.onnx"
    refused(transform(digits_onnx, *args, "-o", out), *fragments)
    assert not out.exists()


def _relu_model(path, side: int):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, side, side])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, side, side])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "huge", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("side, fragments", [
    (8192, ["value of x", "numbers on 4 probe inputs", "over the limit"]),  # fits the IR, not the checks
    (1_000_000_000, ["elements per sample"]),  # the IR itself refuses it
])
def test_an_input_too_large_for_the_checks_is_refused_naming_the_value(tmp_path, side, fragments):
    path = _relu_model(tmp_path / "huge.onnx", side)
    out = tmp_path / "out.onnx"
    refused(transform(path, "--deepen", "x", "-o", out), str(path), *fragments)
    assert not out.exists()


def test_the_end_to_end_check_runs_the_users_file_not_a_re_export(digits_onnx, tmp_path, monkeypatch):
    # An importer that gets one weight wrong makes every before/after comparison of easc's own graphs agree;
    # only the user's file, run as given, shows that the result does not compute what the file computes.
    import easc.backends.formats as formats

    real = formats.load_model

    def wrong_import(path):
        graph = real(path)
        node = graph.node("conv_1")
        bias = node.weights["bias"] + np.float32(1.0)
        return graph.replace(nodes=[node.replace(weights={**node.weights, "bias": bias}) if n.name == "conv_1"
                                    else n for n in graph.nodes])

    monkeypatch.setattr(formats, "load_model", wrong_import)
    out = tmp_path / "out.onnx"
    result = transform(digits_onnx, "--deepen", "relu_1", "-o", out)
    assert result.exit_code == 1, result.output
    assert "end to end: the final model did not preserve the original's function" in result.stderr
    assert "deepen after=relu_1 calibrated=False kernel=3: verified exact" in result.output  # the pass itself was right
    assert not out.exists()


# -- memory: onnxruntime's session on the user's file with its large blocks mapped alone ---------------------
class _RecordingLibc:
    def __init__(self, calls):
        self.calls = calls

    def mallopt(self, parameter, value):
        self.calls.append((parameter, value))
        return 1


@pytest.mark.parametrize("fails", [False, True], ids=["runs", "raises"])
def test_the_reference_session_maps_large_blocks_alone_then_leaves_glibcs_threshold_at_its_ceiling(fails):
    from easc.cli import transform_cmd as cmd

    calls = []
    if fails:
        with pytest.raises(RuntimeError):
            with cmd._large_blocks_mapped_alone(libc=_RecordingLibc(calls)):
                calls.append("reference")
                raise RuntimeError("onnxruntime failed")
    else:
        with cmd._large_blocks_mapped_alone(libc=_RecordingLibc(calls)):
            calls.append("reference")
    assert calls == [(cmd.M_MMAP_THRESHOLD, 1 << 20), "reference", (cmd.M_MMAP_THRESHOLD, 32 << 20),
                     (cmd.M_TRIM_THRESHOLD, 64 << 20)]


def test_without_mallopt_the_reference_runs_as_it_is():
    from easc.cli import transform_cmd as cmd

    ran = []
    with cmd._large_blocks_mapped_alone(libc=object()):
        ran.append("reference")
    assert ran == ["reference"]


def _large_activations_model(path):
    """x -> 1x1 conv with bias 1e4 -> relu -> 1x1 conv -> batchnorm whose mean takes the ~2e4 values back to ~1:
    float32 holds the inner values to ~2e-3, so any two float32 runs of this function differ by that much at the
    outputs, 1e-3 of their scale, 100x the tolerance of exact arithmetic."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    c = 4
    w2 = rng.standard_normal((c, c, 1, 1)).astype(np.float32)
    mean = (1e4 * w2[:, :, 0, 0].astype(np.float64).sum(1)).astype(np.float32)
    inits = {"W1": rng.standard_normal((c, 2, 1, 1)), "B1": np.full(c, 1e4), "W2": w2, "S": np.ones(c),
             "Bb": np.zeros(c), "M": mean, "V": np.ones(c)}
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["h"], name="conv1", kernel_shape=[1, 1]),
             helper.make_node("Relu", ["h"], ["r"], name="relu1"),
             helper.make_node("Conv", ["r", "W2"], ["g"], name="conv2", kernel_shape=[1, 1]),
             helper.make_node("BatchNormalization", ["g", "S", "Bb", "M", "V"], ["y"], name="bn")]
    graph = helper.make_graph(nodes, "large", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", c, 8, 8])],
                              initializer=[numpy_helper.from_array(np.asarray(v, np.float32), k)
                                           for k, v in inits.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_an_exact_chain_on_a_network_whose_float32_rounding_exceeds_the_tolerance_is_checked_against_it(tmp_path):
    """The widen is exact in float64 (its local check passes); onnxruntime's float32 runs of the original and the
    result differ by their rounding, which the end-to-end check measures on the original and allows for (before,
    it refused with exit 1). A difference beyond that margin is refused: `test_pass_manager`."""
    import re

    model, out = tmp_path / "large.onnx", tmp_path / "wide.onnx"
    _large_activations_model(model)
    result = transform(model, "--widen", "conv1", "--factor", "3", "-o", out)
    assert result.exit_code == 0, result.output
    line = result.output.strip().splitlines()[-1]
    found = re.search(r"end to end max \|diff\| ([0-9.e-]+) .*within float32 rounding: the original's float32 "
                      r"outputs are up to ([0-9.e-]+) off its float64 ones", line)
    assert found, line
    diff, rounding = map(float, found.groups())
    assert diff > 1e-5 * 10 and diff <= 4 * rounding  # over the exact-arithmetic tolerance, within the margin
    assert out.exists()

"""The importer's model check (`importer._check_model`) rejects what `onnx.checker.check_model` rejects.

It checks the graph without serialising the weights and applies the checker's initializer rules itself, so
every malformed initializer below must still be refused, with a one-line `OnnxImportError`, and every valid
one accepted. A valid constant of the wrong kind where the importer reads numbers (a string tensor as a weight,
a vector as Clip's bound) is refused the same way, never a traceback."""

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from easc.backends.onnx.importer import OnnxImportError, _check_model, import_model


def _model(init: TensorProto, ir_version: int = 8) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", init.name], ["y"])], "g", [x], [y], [init])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = ir_version
    return model


def _floats(**extra) -> TensorProto:
    t = numpy_helper.from_array(np.eye(3, dtype=np.float32), "w")
    for field, values in extra.items():
        getattr(t, field).extend(values)
    return t


MALFORMED = {
    "two value fields": _floats(float_data=[1.0] * 9),
    "no values": TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[3, 3]),
    "values in the wrong field": TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[3, 3], int64_data=[1] * 9),
    "no data type": TensorProto(name="w", dims=[3, 3], float_data=[1.0] * 9),
    "data in a 0-element tensor": TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[0], float_data=[1]),
    "strings in raw_data": TensorProto(name="w", data_type=TensorProto.STRING, dims=[3, 3], raw_data=b"abcdefghi"),
    "external and inline": TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[3, 3], raw_data=b"x" * 36,
                                       data_location=TensorProto.EXTERNAL),
    "an unknown data type": TensorProto(name="w", data_type=999, dims=[3, 3], int32_data=[1] * 9),
    "a negative dimension": TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[-1, 3],
                                        raw_data=np.eye(3, dtype=np.float32).tobytes()),
    "a dimension product over 64 bits": TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2 ** 40, 2 ** 40],
                                                    raw_data=b"abcd"),
}
VALID = {
    "raw_data": _floats(),
    "float_data": TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[3, 3], float_data=[1.0] * 9),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_initializer_is_refused_as_the_checker_refuses_it(case):
    model = _model(MALFORMED[case])
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(model)
    with pytest.raises(onnx.checker.ValidationError):
        _check_model(model)
    with pytest.raises(OnnxImportError, match=r"^<model>: not a valid ONNX model \(.*w"):
        import_model(model)


@pytest.mark.parametrize("case", sorted(VALID))
def test_a_valid_initializer_is_accepted_and_read(case):
    model = _model(VALID[case])
    onnx.checker.check_model(model)
    _check_model(model)
    graph = import_model(model)
    assert graph.op_count >= 1


def test_before_ir_version_4_an_initializer_must_be_a_graph_input():
    model = _model(_floats(), ir_version=3)
    with pytest.raises(onnx.checker.ValidationError, match="not in graph input"):
        _check_model(model)
    model.graph.input.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [3, 3]))
    _check_model(model)


def test_raw_data_of_the_wrong_size_is_refused_when_read():
    """The checker compares raw_data's size with the dims; `_check_model` leaves that to the read of the
    weights, which refuses it naming the initializer (without copying the data to measure it first)."""
    for raw in (b"ab", b"x" * 40):
        model = _model(TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[3, 3], raw_data=raw))
        with pytest.raises(OnnxImportError, match=r"^<model>: initializer 'w' cannot be read"):
            import_model(model)


def test_duplicate_initializer_names_are_refused():
    model = _model(_floats())
    model.graph.initializer.append(_floats())
    with pytest.raises(OnnxImportError, match="not a valid ONNX model"):
        import_model(model)


def test_a_string_initializer_used_as_a_weight_is_refused_naming_it():
    model = _model(TensorProto(name="w", data_type=TensorProto.STRING, dims=[3, 3], string_data=[b"1"] * 9))
    with pytest.raises(OnnxImportError, match=r"weight \(second input\) 'w' holds object values, not real numbers"):
        import_model(model)


def test_a_clip_bound_that_is_not_one_number_is_refused_naming_it():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])
    bound = numpy_helper.from_array(np.zeros(3, dtype=np.float32), "lo")
    graph = helper.make_graph([helper.make_node("Clip", ["x", "lo"], ["y"])], "g", [x], [y], [bound])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(OnnxImportError, match=r"min 'lo' must be one real number, not float32 values of shape \[3\]"):
        import_model(model)


_FIELDS = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data")


@st.composite
def _initializers(draw):
    """Initializers with any mix of the fields the checker looks at, valid or not."""
    t = TensorProto(name="w")
    if draw(st.booleans()):
        t.data_type = draw(st.sampled_from([0, 1, 2, 6, 7, 8, 10, 11, 12, 16, 999]))
    t.dims.extend(draw(st.sampled_from([[3, 3], [9], [0], [-1, 3], [3, 3, 1], [2 ** 62, 4], []])))
    for field in draw(st.lists(st.sampled_from(_FIELDS), max_size=2, unique=True)):
        count = draw(st.sampled_from([9, 3]))
        getattr(t, field).extend([b"1"] * count if field == "string_data" else [1] * count)
    if draw(st.booleans()):
        t.raw_data = np.eye(3, dtype=np.float32).tobytes()[:draw(st.sampled_from([36, 8, 0]))]
    if draw(st.integers(0, 9)) == 0:
        t.data_location = TensorProto.EXTERNAL
    return t


@settings(max_examples=300, deadline=None)
@given(_initializers())
def test_no_initializer_the_checker_refuses_is_imported_and_none_escapes_as_another_error(init):
    model = _model(init)
    try:
        onnx.checker.check_model(model)
        checker_accepts = True
    except onnx.checker.ValidationError:
        checker_accepts = False
    try:
        import_model(model)  # anything but OnnxImportError fails the test (a traceback for the user)
        imported = True
    except OnnxImportError as e:
        assert "\n" not in str(e)
        imported = False
    assert checker_accepts or not imported

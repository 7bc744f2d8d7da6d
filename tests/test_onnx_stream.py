"""Writing an ONNX file straight from the IR's arrays (`backends.onnx.stream`) gives the model export_model gives."""

import io

import numpy as np
import onnx

from easc.backends.onnx import export_model, import_model, run_onnx
from easc.backends.onnx.exporter import export_parts
from easc.backends.onnx.stream import write_model
from easc.ir import print_graph, probe_inputs
from easc.search.start_nets import eas_small


def test_a_streamed_model_reads_back_as_the_exported_one_initializers_in_order():
    graph = eas_small()
    buffer = io.BytesIO()
    write_model(*export_parts(graph), buffer)
    streamed = onnx.load_from_string(buffer.getvalue())
    exported = export_model(graph)
    onnx.checker.check_model(streamed, full_check=True)
    assert [t.name for t in streamed.graph.initializer] == [t.name for t in exported.graph.initializer]
    for a, b in zip(streamed.graph.initializer, exported.graph.initializer):
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(a), onnx.numpy_helper.to_array(b))
    streamed.graph.ClearField("initializer")
    exported.graph.ClearField("initializer")
    assert streamed == exported
    assert print_graph(import_model(onnx.load_from_string(buffer.getvalue()))) == print_graph(graph)
    feeds = probe_inputs(graph, 2)
    out = run_onnx(buffer.getvalue(), feeds)
    ref = run_onnx(graph, feeds)
    assert all(np.array_equal(out[k], ref[k]) for k in ref)


def test_transform_of_an_onnx_file_imports_neither_torch_nor_networkx_unless_a_pass_needs_it(tmp_path):
    import subprocess
    import sys

    source = tmp_path / "small.onnx"
    onnx.save(export_model(eas_small()), str(source))
    code = ("import sys; from easc.cli.main import main\n"
            "try:\n"
            f"    main(['transform', {str(source)!r}, '--widen', '-o', {str(tmp_path / 'out.onnx')!r}])\n"
            "except SystemExit as e:\n"
            "    assert not e.code, e.code\n"
            "print(sorted(m for m in ('torch', 'networkx', 'scipy', 'sklearn') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "out.onnx").exists()

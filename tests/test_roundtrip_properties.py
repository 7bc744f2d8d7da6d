"""Property tests over random valid graphs: the IR's file format and ONNX export/import round-trip,
and exported models compute what the IR's reference interpreter computes."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from easc.backends.onnx import export_model, import_model, run_onnx
from easc.ir import graph_from_bytes, graph_to_bytes, print_graph, probe_inputs, run
from easc.passes.base import PRESERVATION_RTOL
from strategies import cnn_graphs

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _same_weights(a, b):
    for x, y in zip(a.nodes, b.nodes):
        assert set(x.weights) == set(y.weights)
        for key in x.weights:
            np.testing.assert_array_equal(x.weights[key], y.weights[key])


@SETTINGS
@given(cnn_graphs())
def test_easir_bytes_round_trip_structure_and_weights_exactly(graph):
    back = graph_from_bytes(graph_to_bytes(graph))
    assert print_graph(back) == print_graph(graph)
    _same_weights(graph, back)


@SETTINGS
@given(cnn_graphs())
def test_onnx_export_then_import_gives_the_same_graph_and_onnxruntime_agrees_with_the_interpreter(graph):
    model = export_model(graph)
    back = import_model(model)
    assert print_graph(back).split("\n", 1)[1] == print_graph(graph).split("\n", 1)[1]  # graph names may differ
    _same_weights(graph, back)
    probes = probe_inputs(graph, batch=3, seed=1)
    ours, theirs = run(graph, probes), run_onnx(model, probes)
    for name in ours:
        scale = float(np.max(np.abs(ours[name])))
        assert float(np.max(np.abs(ours[name] - theirs[name]))) <= PRESERVATION_RTOL * (1 + scale)


@settings(max_examples=40, deadline=None)
@given(cnn_graphs(), st.data())
def test_reaches_is_networkx_has_path(graph, data):
    """`Graph.reaches` (the skip pass's cycle test, without networkx) answers as networkx's has_path on the
    graph's data flow, for pairs in either order and a node with itself."""
    import networkx as nx

    flow = graph.to_networkx()
    names = [n.name for n in graph.nodes]
    for _ in range(20):
        a, b = data.draw(st.sampled_from(names)), data.draw(st.sampled_from(names))
        assert graph.reaches(a, b) == nx.has_path(flow, a, b), (a, b)

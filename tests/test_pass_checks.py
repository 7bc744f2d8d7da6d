"""The check that follows every pass: signature, numbers, and probe outputs reused along a chain."""

import numpy as np
import pytest

from easc.ir import parse_graph, probe_inputs, run
from easc.passes.base import (FunctionNotPreservedError, PassResult, ProbeSet, checked, max_output_difference)
from easc.passes.deepen import deepen
from easc.passes.widen import widen

NET = """
graph net
  x = input() : f32[N,2,6,6]
  conv_1 = conv2d(x) {out=3, kernel=(3,3), stride=(1,1), padding=(1,1), dilation=(1,1), groups=1, bias=true} : f32[N,3,6,6]
  relu_1 = relu(conv_1) : f32[N,3,6,6]
  gap_1 = global_avgpool(relu_1) : f32[N,3,1,1]
  flatten_1 = flatten(gap_1) : f32[N,3]
  fc_1 = linear(flatten_1) {out=4, bias=true} : f32[N,4]
  output y = fc_1
"""


def counting(executor):
    calls = []

    def wrapped(graph, feeds):
        calls.append(graph)
        return executor(graph, feeds)

    return wrapped, calls


def test_a_probe_set_computes_each_graphs_outputs_once_along_a_chain_of_passes():
    g0 = parse_graph(NET)
    executor, calls = counting(run)
    probes = ProbeSet(probe_inputs(g0, 3))
    g1 = checked(g0, widen(g0, "conv_1", 5, rng=np.random.default_rng(0)), probes, executor).graph
    g2 = checked(g1, deepen(g1, "relu_1"), probes, executor).graph
    assert calls == [g0, g1, g2]  # g1's outputs were computed once, as 'after' and then reused as 'before'
    plain = max_output_difference(g0, g2, probe_inputs(g0, 3), run)
    assert max_output_difference(g0, g2, probes, executor) == plain  # same figures as without the memory
    assert len(calls) == 3


def test_the_check_rejects_a_pass_that_changed_the_function_and_names_it():
    g0 = parse_graph(NET)
    conv = g0.node("conv_1")
    broken = g0.replace(nodes=[conv.replace(weights={**conv.weights, "bias": conv.weights["bias"] + 1.0})
                               if n.name == "conv_1" else n for n in g0.nodes])
    with pytest.raises(FunctionNotPreservedError, match=r"^widen did not preserve the function: max \|difference\|"):
        checked(g0, PassResult(broken, record={"pass": "widen"}), ProbeSet(probe_inputs(g0, 3)))


def test_the_check_rejects_a_pass_that_changed_the_graphs_signature():
    g0 = parse_graph(NET)
    renamed = g0.replace(outputs={"logits": "fc_1"})
    with pytest.raises(FunctionNotPreservedError, match="changed the graph's inputs or outputs"):
        checked(g0, PassResult(renamed, record={"pass": "deepen"}))

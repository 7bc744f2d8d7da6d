"""Kernel widening (`passes/widen_kernel.py`): a zero border around the kernel, padding grown to match."""

import numpy as np
import pytest

from easc.ir import UnknownNodeError, parse_graph, print_graph
from easc.passes.base import PRESERVATION_RTOL, PassError, checked
from easc.passes.widen_kernel import kernel_widenable, widen_kernel
from strategies import randomise_weights

NET = """
graph net
  x = input() : f32[N,2,8,8]
  conv_1 = conv2d(x) {out=4, kernel=(1,1), stride=(1,1), padding=(0,0), dilation=(1,1), groups=1, bias=true} : f32[N,4,8,8]
  relu_1 = relu(conv_1) : f32[N,4,8,8]
  conv_2 = conv2d(relu_1) {out=4, kernel=(3,3), stride=(1,1), padding=(1,1), dilation=(1,1), groups=1, bias=true} : f32[N,4,8,8]
  conv_3 = conv2d(conv_2) {out=6, kernel=(3,3), stride=(2,2), padding=(1,1), dilation=(1,1), groups=2, bias=true} : f32[N,6,4,4]
  conv_4 = conv2d(conv_3) {out=6, kernel=(1,3), stride=(1,1), padding=(0,1), dilation=(1,1), groups=1, bias=false} : f32[N,6,4,4]
  conv_5 = conv2d(conv_4) {out=6, kernel=(3,3), stride=(1,1), padding=(2,2), dilation=(2,2), groups=1, bias=true} : f32[N,6,4,4]
  conv_6 = conv2d(conv_5) {out=6, kernel=(2,2), stride=(1,1), padding=(0,0), dilation=(1,1), groups=1, bias=true} : f32[N,6,3,3]
  flatten_1 = flatten(conv_6) : f32[N,54]
  fc_1 = linear(flatten_1) {out=3, bias=true} : f32[N,3]
  output logits = fc_1
"""


def net():
    return randomise_weights(parse_graph(NET), np.random.default_rng(1))


def _run_pass_and_check(graph, layer, **kwargs):
    """Widen a kernel, verify + signature + numeric check, and make sure the input graph was not touched."""
    text = print_graph(graph)
    weights = {(n.name, k): w.copy() for n in graph.nodes for k, w in n.weights.items()}
    result = checked(graph, widen_kernel(graph, layer, **kwargs))
    assert result.max_diff <= PRESERVATION_RTOL * (1 + result.max_output)
    assert print_graph(graph) == text
    for (name, key), w in weights.items():
        np.testing.assert_array_equal(graph.node(name).weights[key], w)
    assert result.record["pass"] == "widen_kernel" and result.record["layer"] == layer
    before, after = graph.node(layer), result.graph.node(layer)
    assert after.type == before.type and after.inputs == before.inputs
    return result


def _assert_zero_border(old, new, dh, dw):
    kh, kw = old.shape[2:]
    np.testing.assert_array_equal(new[:, :, dh:dh + kh, dw:dw + kw], old)
    inner = np.zeros(new.shape, bool)
    inner[:, :, dh:dh + kh, dw:dw + kw] = True
    assert not new[~inner].any()


def test_widen_kernel_1x1_to_3x3_pads_the_weights_and_the_input():
    g = net()
    result = _run_pass_and_check(g, "conv_1")
    node = result.graph.node("conv_1")
    assert node.attrs["kernel"] == (3, 3) and node.attrs["padding"] == (1, 1)
    _assert_zero_border(g.node("conv_1").weights["weight"], node.weights["weight"], 1, 1)
    np.testing.assert_array_equal(node.weights["bias"], g.node("conv_1").weights["bias"])
    assert result.changes == ["conv_1: kernel 1x1 -> 3x3 (zero border), padding 0x0 -> 1x1"]
    assert result.record == {"pass": "widen_kernel", "layer": "conv_1", "kernel": 3}


def test_widen_kernel_3x3_to_5x5_by_default_and_to_7x7_on_request():
    g = net()
    node = _run_pass_and_check(g, "conv_2").graph.node("conv_2")
    assert node.attrs["kernel"] == (5, 5) and node.attrs["padding"] == (2, 2)
    node = _run_pass_and_check(g, "conv_2", kernel=7).graph.node("conv_2")
    assert node.attrs["kernel"] == (7, 7) and node.attrs["padding"] == (3, 3)
    _assert_zero_border(g.node("conv_2").weights["weight"], node.weights["weight"], 2, 2)


def test_widen_kernel_keeps_a_strided_grouped_conv_exact():
    node = _run_pass_and_check(net(), "conv_3").graph.node("conv_3")
    assert node.attrs["kernel"] == (5, 5) and node.attrs["groups"] == 2 and node.weights["weight"].shape == (6, 2, 5, 5)


def test_widen_kernel_grows_each_axis_of_a_rectangular_kernel():
    g = net()
    node = _run_pass_and_check(g, "conv_4").graph.node("conv_4")
    assert node.attrs["kernel"] == (3, 5) and node.attrs["padding"] == (1, 2) and "bias" not in node.weights
    result = _run_pass_and_check(g, "conv_4", kernel=(1, 5))
    assert result.graph.node("conv_4").attrs["padding"] == (0, 2)
    assert result.record["kernel"] == [1, 5]


def test_widen_kernel_grows_an_even_kernel_by_an_even_amount():
    node = _run_pass_and_check(net(), "conv_6").graph.node("conv_6")
    assert node.attrs["kernel"] == (4, 4) and node.attrs["padding"] == (1, 1)


def test_widening_a_kernel_repeatedly_stays_exact():
    g = net()
    for _ in range(3):
        g = _run_pass_and_check(g, "conv_2").graph
    assert g.node("conv_2").attrs["kernel"] == (9, 9)


def test_kernel_widenable_lists_undilated_convs():
    assert kernel_widenable(net()) == ["conv_1", "conv_2", "conv_3", "conv_4", "conv_6"]


# -- every refusal -------------------------------------------------------------------------------

def test_widen_kernel_refuses_an_unknown_layer_and_lists_the_convs():
    with pytest.raises(UnknownNodeError, match=r"no layer named 'conv_9' in the graph \(valid: conv_1, conv_2, "
                                               r"conv_3, conv_4, conv_5, conv_6\)"):
        widen_kernel(net(), "conv_9")


def test_widen_kernel_refuses_a_node_that_is_not_a_conv():
    with pytest.raises(PassError, match=r"widen_kernel fc_1: it is a linear, not a conv2d \(only conv kernels "
                                        r"can grow\)"):
        widen_kernel(net(), "fc_1")


def test_widen_kernel_refuses_a_dilated_conv():
    with pytest.raises(PassError, match=r"widen_kernel conv_5: dilation \(2, 2\) is not \(1, 1\); only undilated "
                                        r"kernels are widened"):
        widen_kernel(net(), "conv_5")


@pytest.mark.parametrize("kernel", [3, 1, (3, 1), (5, 1)])
def test_widen_kernel_refuses_a_kernel_that_is_not_larger(kernel):
    th, tw = (kernel, kernel) if isinstance(kernel, int) else kernel
    with pytest.raises(PassError, match=f"widen_kernel conv_2: kernel {th}x{tw} is not larger than the current 3x3"):
        widen_kernel(net(), "conv_2", kernel=kernel)


@pytest.mark.parametrize("kernel", [4, (5, 6)])
def test_widen_kernel_refuses_growth_by_an_odd_amount(kernel):
    th, tw = (kernel, kernel) if isinstance(kernel, int) else kernel
    with pytest.raises(PassError, match=rf"widen_kernel conv_2: 3x3 -> {th}x{tw} grows by an odd amount, but the "
                                        rf"zero border must be equally wide on both sides \(choose 5x5\)"):
        widen_kernel(net(), "conv_2", kernel=kernel)


@pytest.mark.parametrize("kernel", ["big", 5.0, (3, 5, 7), (5, 5.5)])
def test_widen_kernel_refuses_a_kernel_that_is_not_a_size(kernel):
    with pytest.raises(PassError, match=r"widen_kernel conv_2: kernel .* is neither a size nor a "
                                        r"\(height, width\) pair"):
        widen_kernel(net(), "conv_2", kernel=kernel)

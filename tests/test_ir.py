"""The IR: shape rules, verifier messages, text form, structural hash, the .easir file, interpreter."""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from easc.ir import (Graph, GraphBuilder, IRError, IRFileError, ParseError, TensorType, UnknownNodeError,
                     VerificationError, load_graph, nonnegative_values, parse_graph, print_graph, probe_inputs,
                     run, save_graph, structural_hash, verify)
from easc.ir.builder import make_node

TINY = """
graph tiny
  x = input() : f32[N,1,8,8]
  conv_1 = conv2d(x) {out=4, kernel=(3,3), stride=(1,1), padding=(1,1), dilation=(1,1), groups=1, bias=true} : f32[N,4,8,8]
  bn_1 = batchnorm(conv_1) {eps=1e-05, momentum=0.1} : f32[N,4,8,8]
  relu_1 = relu(bn_1) : f32[N,4,8,8]
  maxpool_1 = maxpool2d(relu_1) {kernel=(2,2), stride=(2,2), padding=(0,0), ceil=false} : f32[N,4,4,4]
  flatten_1 = flatten(maxpool_1) : f32[N,64]
  fc_1 = linear(flatten_1) {out=10, bias=true} : f32[N,10]
  output logits = fc_1
"""


def tiny():
    return parse_graph(TINY)


def test_text_form_round_trips_exactly():
    g = tiny()
    text = print_graph(g)
    assert print_graph(parse_graph(text)) == text
    assert text.strip() == TINY.strip()


def test_names_that_are_not_identifiers_are_quoted_and_parse_back():
    b = GraphBuilder("onnx_like")
    x = b.input("input.1", (3, 4, 4))
    c = b.conv2d(x, 2, 1, name="/layer1/conv/Conv")
    b.output("out put", c)
    g = b.build()
    text = print_graph(g)
    assert '"/layer1/conv/Conv" = conv2d(input.1)' in text
    assert print_graph(parse_graph(text)) == text


def test_parse_rejects_a_declared_type_that_disagrees_with_the_shape_rule():
    bad = TINY.replace("f32[N,4,4,4]", "f32[N,4,8,8]")
    with pytest.raises(ParseError, match=r"'maxpool_1' is declared f32\[N,4,8,8\] but its shape rule gives f32\[N,4,4,4\]"):
        parse_graph(bad)


def test_parse_rejects_use_before_definition_and_unknown_ops():
    with pytest.raises(ParseError, match="reads 'nope', which is not defined above it"):
        parse_graph("x = input() : f32[N,4]\ny = relu(nope) : f32[N,4]\n")
    with pytest.raises(ParseError, match="unknown op 'lstm'"):
        parse_graph("x = input() : f32[N,4]\ny = lstm(x) : f32[N,4]\n")


def test_verify_accepts_built_graphs_and_returns_them():
    g = tiny()
    assert verify(g) is g


def test_verify_names_a_node_whose_type_disagrees_with_its_inputs():
    g = tiny()
    nodes = list(g.nodes)
    i = g.position("relu_1")
    nodes[i] = nodes[i].replace(type=TensorType(("N", 5, 8, 8)))
    with pytest.raises(VerificationError) as err:
        verify(g.replace(nodes=nodes))
    assert "node 'relu_1' (relu): declared type f32[N,5,8,8] but the shape rule gives f32[N,4,8,8]" in str(err.value)
    assert "> relu_1 = relu(bn_1)" in err.value.details  # context shows the node and its neighbours
    assert "fix:" in err.value.details


def test_verify_rejects_out_of_order_nodes_duplicate_names_and_bad_weights():
    g = tiny()
    nodes = list(g.nodes)
    swapped = nodes[:1] + [nodes[2], nodes[1]] + nodes[3:]
    with pytest.raises(VerificationError, match="input 'conv_1' is defined later"):
        verify(g.replace(nodes=swapped))
    dup = nodes[:3] + [nodes[3].replace(name="bn_1")] + nodes[4:]
    with pytest.raises(VerificationError, match="the name is used by an earlier node too"):
        verify(g.replace(nodes=dup))
    conv = g.node("conv_1")
    wrong = conv.replace(weights={**conv.weights, "weight": np.zeros((4, 1, 5, 5), np.float32)})
    with pytest.raises(VerificationError, match=r"weight 'weight' has shape \(4, 1, 5, 5\), expected \(4, 1, 3, 3\)"):
        verify(g.replace(nodes=[wrong if n.name == "conv_1" else n for n in nodes]))
    nan = conv.replace(weights={**conv.weights, "bias": np.full(4, np.nan, np.float32)})
    with pytest.raises(VerificationError, match="NaN or infinite"):
        verify(g.replace(nodes=[nan if n.name == "conv_1" else n for n in nodes]))
    with pytest.raises(VerificationError, match="output 'y' names 'ghost', which is not a node"):
        verify(g.replace(outputs={"y": "ghost"}))


def test_weights_are_read_only_so_passes_cannot_corrupt_a_parent():
    g = tiny()
    with pytest.raises(ValueError):
        g.node("conv_1").weights["weight"][0, 0, 0, 0] = 1.0


def test_unknown_node_error_lists_valid_names():
    with pytest.raises(UnknownNodeError, match=r"no layer named 'conv_9' in the graph \(valid: conv_1, fc_1\)"):
        raise UnknownNodeError(tiny(), "conv_9", kinds=("conv2d", "linear"))


def test_structural_hash_ignores_names_weights_and_the_order_of_independent_nodes():
    a = tiny()
    renamed = parse_graph(TINY.replace("conv_1", "c1").replace("relu_1", "r"), rng=np.random.default_rng(5))
    assert structural_hash(a) == structural_hash(renamed)
    wider = parse_graph(TINY.replace("out=10", "out=11").replace("f32[N,10]", "f32[N,11]"))
    assert structural_hash(a) != structural_hash(wider)

    def two_branches(order):
        b = GraphBuilder()
        x = b.input("x", (2, 4, 4))
        branch = {}
        for k in order:
            branch[k] = b.conv2d(x, 3, 1 if k == "p" else 3, padding=0 if k == "p" else 1, name=f"b{k}")
        b.output("y", b.concat([branch["p"], branch["q"]]))
        return b.build()

    assert structural_hash(two_branches("pq")) == structural_hash(two_branches("qp"))


def test_add_is_commutative_for_the_hash_but_concat_is_not():
    def net(op, swap):
        b = GraphBuilder()
        x = b.input("x", (2, 4, 4))
        p, q = b.conv2d(x, 2, 1), b.conv2d(x, 2, 3, padding=1)
        b.output("y", b.add(op, [q, p] if swap else [p, q]))
        return b.build()

    assert structural_hash(net("add", False)) == structural_hash(net("add", True))
    assert structural_hash(net("concat", False)) != structural_hash(net("concat", True))


def test_ir_file_round_trips_structure_and_weights(tmp_path):
    g = tiny()
    path = tmp_path / "tiny.easir"
    save_graph(g, path)
    back = load_graph(path)
    assert print_graph(back) == print_graph(g)
    for a, b in zip(g.nodes, back.nodes):
        for k in a.weights:
            np.testing.assert_array_equal(a.weights[k], b.weights[k])
    assert not list(tmp_path.glob(".*tmp"))  # the temporary file was renamed into place


def test_ir_file_errors_name_the_file(tmp_path):
    junk = tmp_path / "junk.easir"
    junk.write_bytes(b"this is not a model at all")
    with pytest.raises(IRFileError, match=r"junk.easir: not an easc IR file"):
        load_graph(junk)
    good = tmp_path / "good.easir"
    save_graph(tiny(), good)
    cut = tmp_path / "cut.easir"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(IRFileError, match=r"cut.easir: not an easc IR file"):
        load_graph(cut)
    with pytest.raises(IRFileError, match=r"missing.easir: cannot read"):
        load_graph(tmp_path / "missing.easir")


def test_interpreter_matches_torch_on_every_op():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    b = GraphBuilder("all_ops", rng=np.random.default_rng(3))
    x = b.input("x", (3, 9, 9))
    c = b.conv2d(x, 4, 3, stride=2, padding=1)
    n = b.batchnorm(c)
    r = b.relu(n)
    m = b.maxpool2d(r, 3, 2, padding=1, ceil=True)
    a = b.avgpool2d(r, 3, 2, padding=1, ceil=True, count_include_pad=False)
    cat = b.concat([m, a])
    g = b.global_avgpool(cat)
    f = b.flatten(g)
    d = b.dropout(f, 0.3)
    l1 = b.linear(d, 8)
    l2 = b.linear(d, 8)
    s = b.add_([l1, l2])
    b.output("probs", b.softmax(b.linear(s, 5)))
    graph = b.build()
    feeds = probe_inputs(graph, batch=2)
    ours = run(graph, feeds)["probs"]

    W = {n.name: {k: torch.tensor(v) for k, v in n.weights.items()} for n in graph.nodes}
    t = torch.tensor(feeds["x"])
    t = F.conv2d(t, W[c]["weight"], W[c]["bias"], 2, 1)
    t = F.batch_norm(t, W[n]["mean"], W[n]["var"], W[n]["scale"], W[n]["bias"], False, 0.1, 1e-5).relu()
    t = torch.cat([F.max_pool2d(t, 3, 2, 1, ceil_mode=True),
                   F.avg_pool2d(t, 3, 2, 1, ceil_mode=True, count_include_pad=False)], 1)
    t = t.mean((2, 3))
    t = F.linear(t, W[l1]["weight"], W[l1]["bias"]) + F.linear(t, W[l2]["weight"], W[l2]["bias"])
    ref = torch.softmax(F.linear(t, W["fc_3"]["weight"], W["fc_3"]["bias"]), 1).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(kernel=st.integers(1, 5), stride=st.integers(1, 3), padding=st.integers(0, 2), ceil=st.booleans(),
       include_pad=st.booleans(), size=st.tuples(st.integers(5, 12), st.integers(5, 12)), seed=st.integers(0, 99))
def test_pools_match_torch_for_every_kernel_stride_padding_and_ceil_mode(kernel, stride, padding, ceil, include_pad,
                                                                          size, seed):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    assume(2 * padding <= kernel)  # torch's own limit (padding at most half the kernel)
    b = GraphBuilder("pools")
    x = b.input("x", (3,) + size)
    b.output("max", b.maxpool2d(x, kernel, stride, padding=padding, ceil=ceil))
    b.output("avg", b.avgpool2d(x, kernel, stride, padding=padding, ceil=ceil, count_include_pad=include_pad))
    graph = b.build()
    feeds = probe_inputs(graph, batch=2, seed=seed)
    ours = run(graph, feeds)
    t = torch.tensor(feeds["x"], dtype=torch.float64)
    np.testing.assert_array_equal(ours["max"], F.max_pool2d(t, kernel, stride, padding, ceil_mode=ceil).numpy())
    np.testing.assert_allclose(ours["avg"], F.avg_pool2d(t, kernel, stride, padding, ceil_mode=ceil,
                                                         count_include_pad=include_pad).numpy(), rtol=1e-12,
                               atol=1e-12)


def test_sign_analysis_marks_values_after_relu_and_sign_keeping_ops():
    g = tiny()
    assert nonnegative_values(g) == {"relu_1", "maxpool_1", "flatten_1"}


def test_make_node_reports_shape_errors_naming_the_node():
    with pytest.raises(IRError, match=r"node 'bad' \(linear\): linear expects a rank-2 input"):
        make_node("bad", "linear", ["x"], [TensorType(("N", 3, 4, 4))], {"out": 2})
    with pytest.raises(IRError, match=r"node 'c' \(conv2d\): conv2d has no attribute 'kernal'"):
        make_node("c", "conv2d", ["x"], [TensorType(("N", 3, 4, 4))], {"out": 2, "kernal": 3})


def test_graph_helpers_give_consumers_depth_params_and_fresh_names():
    g = tiny()
    assert g.consumers("relu_1") == ["maxpool_1"]
    assert g.depth == 2
    assert g.params == 4 * 9 + 4 + 4 * 2 + 64 * 10 + 10
    assert g.fresh_name("conv_1") == "conv_1_2"
    assert g.fresh_name("deepen_conv_1") == "deepen_conv_1"
    assert isinstance(g, Graph)


@pytest.mark.parametrize("stride, padding, bias", [(1, 0, False), (2, 1, True), (3, 0, True)])
def test_a_1x1_conv_is_the_same_convolution_as_torchs(stride, padding, bias):
    torch = pytest.importorskip("torch")
    from easc.ir.kernels import conv2d_array

    rng = np.random.default_rng(stride)
    x, w = rng.standard_normal((2, 5, 7, 6)), rng.standard_normal((4, 5, 1, 1))
    b = rng.standard_normal(4) if bias else None
    ours = conv2d_array(x, w, b, (stride, stride), (padding, padding), (1, 1), 1)
    ref = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(w), None if b is None else torch.tensor(b),
                                     stride, padding).numpy()
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=1e-12)

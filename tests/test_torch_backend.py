"""The PyTorch backend: IR -> nn.Module, write-back, nn.Module -> IR (torch.fx), readable source export."""

from __future__ import annotations

import ast
import copy
import importlib.util
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from easc.backends.torch import (TorchBackendError, TorchImportError, export_torch_source, from_module, to_module,
                                 write_back)
from easc.backends.torch.module import python_names
from easc.ir import GraphBuilder, IRError, probe_inputs, run, verify

# to_module runs float32 kernels, the interpreter float64: float32 rounding over a few layers.
RTOL = 1e-5

_module_counter = itertools.count()


def _close(want, got, rtol=RTOL):
    want = np.asarray(want, dtype=np.float64)
    got = got.detach().cpu().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    assert want.shape == got.shape
    err = float(np.abs(want - got).max())
    assert err <= rtol * (1 + float(np.abs(want).max())), f"max error {err:.3g}"


def _as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


def _assert_module_matches_interpreter(graph, module=None, batch=3):
    module = (module if module is not None else to_module(graph)).eval()
    feeds = probe_inputs(graph, batch=batch)
    want = run(graph, feeds)
    with torch.no_grad():
        got = _as_tuple(module(*[torch.from_numpy(feeds[n.name]) for n in graph.inputs]))
    assert len(got) == len(want)
    for w, g in zip(want.values(), got):
        _close(w, g)


def _assert_roundtrip(model: nn.Module, example: torch.Tensor, batch=5):
    """from_module then to_module computes what `model` computes in eval mode."""
    graph = from_module(model, example)
    verify(graph)
    x = torch.randn((batch,) + tuple(example.shape[1:]), generator=torch.Generator().manual_seed(1))
    model.eval()
    with torch.no_grad():
        want, got = _as_tuple(model(x)), _as_tuple(to_module(graph).eval()(x))
    for w, g in zip(want, got):
        _close(w.numpy(), g)
    return graph


def _random_bn_weights(rng, c):
    return {"scale": rng.uniform(0.5, 1.5, c), "bias": rng.normal(0, 0.1, c),
            "mean": rng.normal(0, 0.5, c), "var": rng.uniform(0.5, 2.0, c)}


def _randomise_batchnorms(model: nn.Module, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


def every_op_graph():
    """Every op of the IR, with non-default attributes where an op has them; two outputs."""
    rng = np.random.default_rng(3)
    b = GraphBuilder("every_op", rng=rng)
    x = b.input("x", (3, 11, 11))
    h = b.conv2d(x, 8, 3, padding=1)
    h = b.relu(b.batchnorm(h, eps=1e-3, weights=_random_bn_weights(rng, 8)))
    g = b.conv2d(h, 8, (3, 1), stride=(2, 1), padding=(2, 0), dilation=2, groups=4, bias=False)
    mp = b.maxpool2d(h, 3, stride=2, padding=1, ceil=True)
    ap = b.avgpool2d(h, 3, stride=2, padding=1, ceil=True, count_include_pad=False)
    ap2 = b.avgpool2d(h, 2, stride=2, ceil=True)
    s = b.add_([mp, ap, ap2])
    c = b.concat([s, mp])
    f = b.flatten(b.global_avgpool(c))
    f = b.batchnorm(f, weights=_random_bn_weights(rng, 16))
    logits = b.linear(b.dropout(f, p=0.3), 5)
    b.output("logits", logits)
    b.output("prob", b.softmax(logits))
    b.output("features", b.flatten(g))
    return b.build()


def two_input_graph():
    b = GraphBuilder("two_inputs", rng=np.random.default_rng(4))
    x, y = b.input("x", (2, 6, 6)), b.input("y", (2, 6, 6))
    h = b.add_([b.conv2d(x, 4, 3, padding=1), b.conv2d(y, 4, 1)])
    b.output("out", b.linear(b.flatten(b.maxpool2d(h, 2)), 3, bias=False))
    return b.build()


def small_cnn_graph(name="small_cnn"):
    b = GraphBuilder(name, rng=np.random.default_rng(5))
    x = b.input("x", (1, 8, 8))
    h = b.relu(b.batchnorm(b.conv2d(x, 8, 3, padding=1)))
    h = b.relu(b.batchnorm(b.conv2d(h, 8, 3, padding=1)))
    b.output("logits", b.linear(b.flatten(b.global_avgpool(b.maxpool2d(h, 2))), 10))
    return b.build()


# -- to_module ---------------------------------------------------------------------------------
def test_to_module_matches_the_interpreter_on_a_graph_using_every_op():
    graph = every_op_graph()
    assert {n.op for n in graph.nodes} == {"input", "conv2d", "batchnorm", "relu", "maxpool2d", "avgpool2d",
                                           "global_avgpool", "flatten", "linear", "dropout", "concat", "add",
                                           "softmax"}
    _assert_module_matches_interpreter(graph)


def test_to_module_takes_inputs_in_graph_order_and_returns_outputs_in_graph_order():
    graph = two_input_graph()
    _assert_module_matches_interpreter(graph)
    module = to_module(every_op_graph())
    assert module.easc_outputs == ("logits", "prob", "features")
    out = module.eval()(torch.randn(2, 3, 11, 11))
    assert isinstance(out, tuple) and [o.shape[1] for o in out] == [5, 5, 8 * 6 * 11]
    assert isinstance(to_module(small_cnn_graph())(torch.randn(2, 1, 8, 8)), torch.Tensor)


def test_to_module_generates_real_layers_named_after_the_nodes():
    module = to_module(small_cnn_graph())
    assert isinstance(module, torch.fx.GraphModule)
    assert type(module.conv_1) is nn.Conv2d and type(module.bn_1) is nn.BatchNorm2d
    assert type(module.gap_1) is nn.AdaptiveAvgPool2d and type(module.fc_1) is nn.Linear
    assert "self.conv_1(x)" in module.code
    assert module.easc_names["conv_1"] == "conv_1"
    assert module.conv_1.padding == (1, 1) and module.bn_1.eps == 1e-5
    assert type(to_module(every_op_graph()).bn_2) is nn.BatchNorm1d


def test_to_module_starts_in_training_mode_like_any_new_module():
    assert to_module(small_cnn_graph()).training


def test_to_module_sanitises_names_that_are_not_identifiers():
    rng = np.random.default_rng(0)
    b = GraphBuilder("onnx import", rng=rng)
    x = b.input("input.1", (2, 5, 5))
    h = b.conv2d(x, 4, 3, padding=1, name="/layer1/conv/Conv")
    h = b.batchnorm(h, name="/layer1/bn/BatchNormalization", weights=_random_bn_weights(rng, 4))
    h = b.relu(h, name="forward")
    h2 = b.conv2d(h, 4, 1, name="0")
    h3 = b.conv2d(h, 4, 1, name="a.b")
    h4 = b.conv2d(h, 4, 1, name="a_b")
    s = b.add_([h2, h3, h4], name="class")
    b.output("out:0", b.linear(b.flatten(b.global_avgpool(s), name="flatten 1"), 3, name="fc/MatMul"))
    graph = b.build()
    _assert_module_matches_interpreter(graph)
    module = to_module(graph)
    names = module.easc_names
    assert names["/layer1/conv/Conv"] == "layer1_conv_Conv"
    assert names["forward"] != "forward" and names["0"].isidentifier()
    assert names["a.b"] == "a_b" and names["a_b"] == "a_b_2"
    for sub in names.values():
        assert sub.isidentifier() and isinstance(module.get_submodule(sub), nn.Module)
    assert set(python_names(graph).values()) >= set(names.values())


def test_easc_names_survive_deepcopy():
    module = to_module(small_cnn_graph())
    clone = copy.deepcopy(module)
    assert clone.easc_names == module.easc_names and clone.easc_outputs == ("logits",)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_to_module_on_cuda_matches_the_interpreter():
    graph = every_op_graph()
    module = to_module(graph, device="cuda").eval()
    feeds = probe_inputs(graph)
    want = run(graph, feeds)
    with torch.no_grad():
        got = module(*[torch.from_numpy(feeds[n.name]).cuda() for n in graph.inputs])
    for w, g in zip(want.values(), got):
        _close(w, g, rtol=1e-4)  # TF32 / other kernels


# -- write_back --------------------------------------------------------------------------------
def _train_one_step(module, graph, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((16,) + graph.inputs[0].type.sample_shape, generator=g)
    y = torch.randint(0, 10, (16,), generator=g)
    module.train()
    opt = torch.optim.SGD(module.parameters(), lr=0.5)
    loss = F.cross_entropy(module(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_write_back_after_a_training_step_changes_the_weights_and_reproduces_the_trained_module():
    graph = small_cnn_graph()
    before = {n.name: {k: w.copy() for k, w in n.weights.items()} for n in graph.nodes}
    module = to_module(graph)
    _train_one_step(module, graph)
    trained = write_back(graph, module)
    verify(trained)
    assert [(n.name, n.op, n.attrs) for n in trained.nodes] == [(n.name, n.op, n.attrs) for n in graph.nodes]
    for name in ("conv_1", "fc_1"):
        assert not np.allclose(trained.node(name).weights["weight"], before[name]["weight"])
    assert not np.allclose(trained.node("bn_1").weights["mean"], before["bn_1"]["mean"])  # running stats moved
    assert not np.allclose(trained.node("bn_1").weights["scale"], before["bn_1"]["scale"])
    for n in graph.nodes:  # the parent graph is untouched
        for k, w in n.weights.items():
            np.testing.assert_array_equal(w, before[n.name][k])
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        _close(module.eval()(x).numpy(), to_module(trained).eval()(x))
    _assert_module_matches_interpreter(trained, module)


def test_write_back_reads_through_data_parallel_and_without_easc_names():
    graph = small_cnn_graph()
    module = to_module(graph)
    _train_one_step(module, graph)
    wrapped = nn.DataParallel(module)
    plain = nn.Module()  # a module that merely has the layers under their python names
    for node, sub in module.easc_names.items():
        plain.add_module(sub, module.get_submodule(sub))
    a, b = write_back(graph, wrapped), write_back(graph, plain)
    for na, nb in zip(a.nodes, b.nodes):
        for k in na.weights:
            np.testing.assert_array_equal(na.weights[k], nb.weights[k])


def test_write_back_names_the_node_when_the_module_does_not_fit_the_graph():
    graph = small_cnn_graph()
    other = GraphBuilder("other")
    x = other.input("x", (1, 8, 8))
    other.output("y", other.conv2d(x, 3, 3, name="conv_1"))
    with pytest.raises(TorchBackendError, match=r"conv_1.*shape"):
        write_back(graph, to_module(other.build()))
    with pytest.raises(TorchBackendError, match=r"no submodule 'bn_1' for node 'bn_1'"):
        write_back(graph, _without(graph, "bn_1"))


def _without(graph, node_name):
    module = to_module(graph)
    delattr(module, node_name)
    module.easc_names = {}
    return module


def test_write_back_refuses_non_finite_weights():
    graph = small_cnn_graph()
    module = to_module(graph)
    with torch.no_grad():
        module.fc_1.weight[0, 0] = float("nan")
    with pytest.raises(TorchBackendError, match=r"fc_1.*non-finite"):
        write_back(graph, module)


# -- from_module ---------------------------------------------------------------------------------
def test_from_module_lowers_a_sequential_under_its_module_paths():
    model = _randomise_batchnorms(nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, stride=2, padding="valid", bias=False), nn.BatchNorm2d(16, eps=1e-3), nn.ReLU(),
        nn.AvgPool2d(2, ceil_mode=True, count_include_pad=False), nn.Flatten(), nn.Dropout(0.25),
        nn.Linear(16, 10), nn.BatchNorm1d(10), nn.Softmax(dim=1)))
    graph = _assert_roundtrip(model, torch.randn(2, 3, 12, 12))
    assert [n.name for n in graph.nodes][:3] == ["input", "0", "1"]
    assert [n.op for n in graph.nodes] == ["input", "conv2d", "batchnorm", "relu", "maxpool2d", "conv2d", "batchnorm",
                                           "relu", "avgpool2d", "flatten", "dropout", "linear", "batchnorm",
                                           "softmax"]
    assert graph.node("5").attrs["eps"] == 1e-3 and graph.node("9").attrs["p"] == 0.25
    assert graph.node("4").attrs["bias"] is False and graph.node("4").attrs["stride"] == (2, 2)
    assert graph.name == "Sequential" and list(graph.outputs) == ["output"]


class LeNet(nn.Module):
    """Functional relu and pooling, a view to flatten: the classic tutorial network."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 16, 3)
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, image):
        x = F.max_pool2d(F.relu(self.conv1(image)), 2)
        x = F.max_pool2d(torch.relu(self.conv2(x)), kernel_size=(2, 2), stride=1)
        x = x.view(x.size(0), -1)
        x = F.dropout(x, 0.2, training=self.training)
        x = self.fc1(x).relu()
        return F.softmax(self.fc2(x), dim=1)


def test_from_module_lowers_functional_relu_pooling_and_view():
    graph = _assert_roundtrip(LeNet(), torch.randn(1, 1, 8, 8))
    assert graph.inputs[0].name == "image"
    assert graph.node("view").op == "flatten" and graph.node("conv1").op == "conv2d"
    assert [n.op for n in graph.nodes].count("relu") == 3


class ResidualBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding="same", bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        return self.relu(out)


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.layer1 = nn.Sequential(ResidualBlock(8), ResidualBlock(8))
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = self.layer1(self.stem(x))
        x = F.adaptive_avg_pool2d(x, 1)
        return self.head(torch.flatten(x, 1))


def test_from_module_lowers_residual_adds_with_a_shared_in_place_relu():
    graph = _assert_roundtrip(_randomise_batchnorms(TinyResNet()), torch.randn(2, 3, 8, 8))
    assert [n.op for n in graph.nodes].count("add") == 2
    assert "layer1.0.relu" in graph and "layer1.0.relu_2" in graph and "stem.0" in graph


class DenseCat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(2, 3, 3, padding=1)
        self.b = nn.Conv2d(5, 4, 1)
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(9, 2)

    def forward(self, x):
        h = torch.cat([x, F.relu(self.a(x))], dim=1)
        h = torch.cat((h, self.b(h).relu()), -3)
        return self.fc(self.pool(h).flatten(1))


def test_from_module_lowers_channel_concatenation():
    graph = _assert_roundtrip(DenseCat(), torch.randn(2, 2, 6, 6))
    assert [n.op for n in graph.nodes].count("concat") == 2


class AdaptivePools(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.down = nn.AdaptiveAvgPool2d((4, 4))  # 8x8 -> 4x4 divides evenly: an average pool
        self.same = nn.AdaptiveAvgPool2d(4)  # 4x4 -> 4x4: the identity
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = self.same(self.down(self.conv(x)))
        return self.fc(self.gap(h).reshape(h.shape[0], -1)), x.contiguous().flatten(1)


def test_from_module_lowers_adaptive_pooling_and_returns_a_tuple():
    graph = _assert_roundtrip(AdaptivePools(), torch.randn(2, 3, 8, 8))
    assert graph.node("down").op == "avgpool2d" and "same" not in graph
    assert graph.node("gap").op == "global_avgpool"
    assert list(graph.outputs) == ["output_0", "output_1"]


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.left, self.right = nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, left_image, right_image):
        return {"sum": self.left(left_image) + self.right(right_image)}


def test_from_module_names_inputs_after_forward_arguments_and_outputs_after_dict_keys():
    model = TwoInputs()
    a, b = torch.randn(3, 1, 5, 5), torch.randn(3, 1, 5, 5)
    graph = from_module(model, (a, b))
    assert [n.name for n in graph.inputs] == ["left_image", "right_image"] and list(graph.outputs) == ["sum"]
    with torch.no_grad():
        _close(model(a, b)["sum"].numpy(), to_module(graph)(a, b))


def test_from_module_leaves_a_training_module_untouched_and_lowers_eval_semantics():
    model = _randomise_batchnorms(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5)))
    model.train()
    mean = model[1].running_mean.clone()
    graph = from_module(model, torch.randn(8, 1, 6, 6) * 5 + 3)
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(model[1].running_mean, mean) and int(model[1].num_batches_tracked) == 0
    np.testing.assert_array_equal(graph.node("1").weights["mean"], mean.numpy())
    _assert_roundtrip(model, torch.randn(2, 1, 6, 6))


def test_from_module_error_names_an_unsupported_module_and_where_it_is():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sequential(nn.GELU()), nn.Flatten())
    with pytest.raises(TorchImportError) as info:
        from_module(model, torch.randn(1, 1, 5, 5))
    message = str(info.value)
    assert "call_module '1.0' (GELU) at node 2" in message and "supported modules are" in message
    assert "\n" not in message and isinstance(info.value, IRError)


def test_from_module_error_names_an_unsupported_function():
    class Tanh(nn.Module):
        def forward(self, x):
            return torch.tanh(x)

    with pytest.raises(TorchImportError, match=r"cannot lower call_function .*tanh at node 1 'tanh'"):
        from_module(Tanh(), torch.randn(2, 3))


def test_from_module_error_names_an_unsupported_tensor_method():
    class Tanh(nn.Module):
        def forward(self, x):
            return x.tanh()

    with pytest.raises(TorchImportError, match=r"call_method 'tanh' \(Tensor.tanh\) at node 1"):
        from_module(Tanh(), torch.randn(2, 3))


@pytest.mark.parametrize("forward, pattern", [
    (lambda self, x: self.conv(self.conv(x)), r"'conv' \(Conv2d\) .*called a second time"),
    (lambda self, x: x.view(2, -1), r"only a flatten to \(batch, -1\)"),
    (lambda self, x: torch.flatten(x), r"start_dim=0"),
    (lambda self, x: torch.cat([x, x], dim=2), r"dim=2"),
    (lambda self, x: x + 1, r"adding the constant 1"),
    (lambda self, x: F.relu(x, inplace=True) + x, r"overwrites 'x' in place .* reads it afterwards"),
    (lambda self, x: F.avg_pool2d(x, 2, divisor_override=3), r"divisor_override=3"),
    (lambda self, x: self.conv.weight * 2, r"get_attr 'conv.weight'"),
    (lambda self, x: x if x.sum() > 0 else -x, r"cannot trace M with torch.fx"),
    (lambda self, x: self.fc(x), r"linear expects a rank-2 input"),
])
def test_from_module_refuses_what_it_cannot_lower_with_one_line(forward, pattern):
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1)
            self.fc = nn.Linear(4, 2)

    M.forward = forward
    with pytest.raises(TorchImportError, match=pattern) as info:
        from_module(M(), torch.randn(2, 2, 4, 4))
    assert "\n" not in str(info.value)


def test_from_module_reports_an_example_input_the_module_cannot_run_on():
    with pytest.raises(TorchImportError, match=r"cannot run LeNet on the example input at node \d+ 'fc1': mat1"):
        from_module(LeNet(), torch.randn(1, 1, 12, 12))
    with pytest.raises(TorchImportError, match=r"forward takes 1 input\(s\) but 2 example"):
        from_module(nn.Sequential(nn.ReLU()), (torch.randn(1, 2), torch.randn(1, 2)))


@pytest.mark.parametrize("model, example, pattern", [
    (nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"), (1, 1, 5, 5), r"padding_mode='reflect'"),
    (nn.Conv2d(1, 2, 2, padding="same"), (1, 1, 5, 5), r"padding='same' with an even kernel"),
    (nn.MaxPool2d(2, dilation=2), (1, 1, 6, 6), r"dilation=2"),
    (nn.MaxPool2d(2, return_indices=True), (1, 1, 4, 4), r"return_indices=True"),
    (nn.AdaptiveAvgPool2d(3), (1, 1, 4, 4), r"output size \(3, 3\) does not divide the input size \(4, 4\)"),
    (nn.Softmax(dim=0), (2, 3), r"softmax over dim=0 of a rank-2 value"),
    (nn.Dropout2d(0.1), (1, 2, 3, 3), r"\(Dropout2d\)"),
    (nn.Linear(3, 2), (3,), r"example must be a batched tensor"),
])
@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_from_module_refuses_layer_settings_the_ir_lacks(model, example, pattern):
    with pytest.raises(TorchImportError, match=pattern) as info:
        from_module(model, torch.randn(example))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("forward, pattern", [
    (lambda self, x: torch.add(x, x, alpha=2), r"alpha=2"),
    (lambda self, x: F.softmax(x, dim=1, dtype=torch.float64), r"dtype=torch.float64"),
    (lambda self, x: (x, 3), r"output 'output_1' is the constant 3"),
    (lambda self, x: x.size(0), r"'size' \(a size, not a tensor\)"),
])
def test_from_module_refuses_function_calls_the_ir_lacks(forward, pattern):
    class M(nn.Module):
        pass

    M.forward = forward
    with pytest.raises(TorchImportError, match=pattern):
        from_module(M(), torch.randn(2, 4))


def test_from_module_refuses_batchnorm_without_running_statistics():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, track_running_stats=False))
    with pytest.raises(TorchImportError, match=r"'1' \(BatchNorm2d\).*track_running_stats=False"):
        from_module(model, torch.randn(2, 1, 5, 5))


def test_from_module_treats_a_subclass_keeping_the_layer_forward_as_that_layer():
    class TaggedConv(nn.Conv2d):
        tag = "stem"

    graph = _assert_roundtrip(nn.Sequential(TaggedConv(1, 2, 3), nn.Identity()), torch.randn(1, 1, 5, 5))
    assert [n.op for n in graph.nodes] == ["input", "conv2d"]


def test_from_module_lowers_a_lone_layer_as_one_node():
    graph = _assert_roundtrip(nn.Conv2d(1, 2, 3), torch.randn(1, 1, 5, 5))
    assert [(n.name, n.op) for n in graph.nodes] == [("x", "input"), ("conv2d", "conv2d")]
    assert graph.name == "Conv2d"


# -- codegen -----------------------------------------------------------------------------------
def _import_fresh(path):
    spec = importlib.util.spec_from_file_location(f"easc_exported_{next(_module_counter)}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_exported_source_imports_only_torch_and_reproduces_the_outputs(tmp_path):
    import safetensors.torch

    graph = every_op_graph()
    result = export_torch_source(graph, tmp_path / "out")
    source = result.model_py.read_text()
    imported = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
    assert imported == {"torch"}
    mod = _import_fresh(result.model_py)
    model = getattr(mod, result.class_name)()
    model.load_state_dict(safetensors.torch.load_file(str(result.weights)))
    _assert_module_matches_interpreter(graph, model)
    _assert_module_matches_interpreter(graph, mod.load())  # the helper finds the weights next to the file
    assert result.class_name == "EveryOp" and mod.EveryOp.output_names == ("logits", "prob", "features")


def test_exported_source_reads_like_hand_written_pytorch(tmp_path):
    source = export_torch_source(small_cnn_graph(), tmp_path).model_py.read_text()
    for line in ("class SmallCnn(nn.Module):",
                 "self.conv_1 = nn.Conv2d(1, 8, kernel_size=3, padding=1)",
                 "self.bn_1 = nn.BatchNorm2d(8)",
                 "self.maxpool_1 = nn.MaxPool2d(2)",
                 "self.fc_1 = nn.Linear(8, 10)",
                 "def forward(self, x):",
                 "x = self.conv_1(x)",
                 "x = self.relu_1(x)",
                 "return x"):
        assert line in source, line
    residual = two_input_graph()
    text = export_torch_source(residual, tmp_path / "two").model_py.read_text()
    assert "def forward(self, x, y):" in text and "x = x + y  # add_1" in text


def test_export_replaces_its_two_files_and_keeps_everything_else(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    export_torch_source(small_cnn_graph(), tmp_path)
    graph = every_op_graph()
    result = export_torch_source(graph, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "__pycache__") == \
        ["model.py", "notes.txt", "weights.safetensors"]
    assert (tmp_path / "notes.txt").read_text() == "mine"
    _assert_module_matches_interpreter(graph, _import_fresh(result.model_py).load())
    with pytest.raises(TorchBackendError, match="not a folder"):
        export_torch_source(graph, tmp_path / "notes.txt")


def _fail_on(monkeypatch, name: str, when: str):
    """Make the export's rename of (when="rename") or write to (when="stage") the file `name` fail with ENOSPC."""
    import errno
    import os

    from easc.backends.torch import codegen

    if when == "stage":
        real_stage = codegen._stage

        def stage(path, data):
            if path.name == name:
                raise codegen.OutputError(errno.ENOSPC, "cannot write (No space left on device)", str(path))
            return real_stage(path, data)
        monkeypatch.setattr(codegen, "_stage", stage)
    else:
        real_replace = os.replace

        def replace(src, dst):
            if os.path.basename(dst) == name and os.path.basename(src).startswith("." + name):
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_replace(src, dst)
        monkeypatch.setattr(codegen.os, "replace", replace)


@pytest.mark.parametrize("when", ["stage", "rename"])
def test_a_failed_export_into_a_new_folder_leaves_no_folder_and_no_weights(tmp_path, monkeypatch, when):
    from easc.ir.serialize import OutputError

    _fail_on(monkeypatch, "model.py", when)
    outdir = tmp_path / "new" / "export"
    with pytest.raises(OutputError) as err:
        export_torch_source(small_cnn_graph(), outdir)
    assert err.value.filename == str(outdir / "model.py")
    assert list(tmp_path.iterdir()) == []  # neither weights.safetensors nor the folders it created


@pytest.mark.parametrize("when", ["stage", "rename"])
def test_a_failed_export_over_an_earlier_one_keeps_the_earlier_pair_and_the_other_files(tmp_path, monkeypatch, when):
    from easc.ir.serialize import OutputError

    (tmp_path / "notes.txt").write_text("mine")
    old = small_cnn_graph()
    export_torch_source(old, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    _fail_on(monkeypatch, "model.py", when)
    with pytest.raises(OutputError):
        export_torch_source(every_op_graph(), tmp_path)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert after == before  # the old model.py with its own weights, no temporary file left
    monkeypatch.undo()
    _assert_module_matches_interpreter(old, _import_fresh(tmp_path / "model.py").load())


def test_export_of_names_that_are_not_identifiers_and_write_back_from_the_exported_class(tmp_path):
    b = GraphBuilder("7 resnet-ish", rng=np.random.default_rng(0))
    x = b.input("input.1", (1, 4, 4))
    h = b.relu(b.conv2d(x, 2, 3, padding=1, name="/conv/Conv"), name="while")
    b.output("out", b.linear(b.flatten(h, name="Flatten_0"), 2, name="self"))
    graph = b.build()
    result = export_torch_source(graph, tmp_path)
    assert result.class_name == "Net7ResnetIsh"
    mod = _import_fresh(result.model_py)
    model = mod.load()
    _assert_module_matches_interpreter(graph, model)
    back = write_back(graph, model)
    np.testing.assert_array_equal(back.node("self").weights["weight"], graph.node("self").weights["weight"])


def test_from_module_round_trips_an_exported_model(tmp_path):
    graph = every_op_graph()
    model = _import_fresh(export_torch_source(graph, tmp_path).model_py).load()
    again = from_module(model, torch.randn(2, 3, 11, 11))
    assert [(n.name, n.op) for n in again.layers()] == [(n.name, n.op) for n in graph.layers()]
    assert [n.op for n in again.nodes].count("add") == 2  # a + b + c traces as two adds
    _assert_module_matches_interpreter(graph, to_module(again))


def test_importing_the_package_imports_no_backend_module_until_a_name_is_used():
    import subprocess
    import sys

    code = ("import sys, easc.backends.torch as b; "
            "assert not any(m.startswith('easc.backends.torch.') for m in sys.modules), sorted(sys.modules); "
            "assert callable(b.export_torch_source) and 'easc.backends.torch.codegen' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)

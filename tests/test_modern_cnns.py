"""The figure: the standard CNN families in, every pass through them, and the results still exact.

Each layout of `easc.backends.torch.zoo` is built at reduced width on 3x32x32 inputs (AlexNet 3x64x64), with
random batchnorm statistics, and brought into easc three ways: `torch.onnx.export(dynamo=False)`,
`torch.onnx.export(dynamo=True)` and `from_module`. On each graph: `easc inspect`, widening every layer (a
layer easc refuses must be refused for a genuinely non-preservable reason), a deepen after an activation, a
skip and a widen-kernel. Every result runs in onnxruntime against the original model in onnxruntime (the
torch exporter's file): relative error at most 1e-5.

The dynamo exporter costs several seconds per model, so those cases are marked slow (they run in CI).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from easc.backends.onnx import import_model, run_onnx
from easc.backends.torch import export_torch_source, from_module
from easc.backends.torch.zoo import ARCHITECTURES, MIN_INPUT
from easc.cli.main import main
from easc.ir import save_graph, verify
from easc.ir.ops import ACTIVATION_OPS
from easc.passes.base import PassError
from easc.passes.deepen import deepen
from easc.passes.skip import skip
from easc.passes.widen import widen, widen_reason
from easc.passes.widen_kernel import widen_kernel
from onnx_export import export_onnx

RELATIVE_TOLERANCE = 1e-5
"""max |result - original| / max |original| in onnxruntime: float32 sums over a few thousand terms."""
WIDTH = 0.25
BATCH = 2

# Refusals that are a property of the architecture, not a gap: the reasons `widen` gives for them.
GENUINE_REFUSALS = (
    r"it is a depthwise conv",  # its width is its input's: widening the producer widens it
    r"grouped conv \(groups=\d+\)",  # copies would make the groups unequal
    r"graph output",  # the output's shape would change
)

ROUTES = ["torchscript", pytest.param("dynamo", marks=pytest.mark.slow), "fx"]


def _randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.2)
    return model


_MODELS: dict = {}


def _model(arch: str):
    """(module, example input, the torch exporter's ONNX model): built once per architecture."""
    if arch not in _MODELS:
        torch.manual_seed(0)
        size = MIN_INPUT.get(arch, 32)
        build = ARCHITECTURES[arch]
        kwargs = {"input_size": size} if "input_size" in build.__code__.co_varnames else {}
        model = _randomise_batchnorm(build(num_classes=10, width_mult=WIDTH, **kwargs)).eval()
        x = torch.randn(BATCH, 3, size, size, generator=torch.Generator().manual_seed(1))
        _MODELS[arch] = (model, x, export_onnx(model, x, dynamo=False))
    return _MODELS[arch]


def _graph(arch: str, route: str):
    model, x, legacy = _model(arch)
    if route == "fx":
        return from_module(model, x, name=arch)
    return import_model(legacy if route == "torchscript" else export_onnx(model, x, dynamo=True), arch)


def _assert_matches(graph, reference: np.ndarray, x: np.ndarray, what: str):
    verify(graph)
    got = next(iter(run_onnx(graph, {graph.inputs[0].name: x}).values()))
    err = float(np.abs(got - reference).max() / np.abs(reference).max())
    assert err <= RELATIVE_TOLERANCE, f"{what}: relative error {err:.3g} in onnxruntime"


def _widen_every_layer(graph):
    """Every conv / linear layer doubled (coupled ones once); the refused ones with their reasons."""
    refused = {}
    for layer in [n.name for n in graph.layers()]:
        node = graph.node(layer)
        reason = widen_reason(graph, layer)
        if reason is not None:
            refused[layer] = reason
            continue
        if node.width >= 2 * _original_widths[layer]:
            continue  # already widened with a layer it is coupled to
        graph = widen(graph, layer, 2 * node.width, rng=np.random.default_rng(0)).graph
    return graph, refused


_original_widths: dict = {}


def _activation(graph):
    """The last NCHW activation whose value is read (not the output): the place to deepen."""
    outputs = set(graph.outputs.values())
    for node in reversed(graph.nodes):
        if node.op in ACTIVATION_OPS and node.type.rank == 4 and node.name not in outputs \
                and graph.consumers(node.name):
            return node.name
    raise AssertionError("no activation to deepen after")


def _a_skip(graph):
    """A dense path into the last plain conv from some earlier activation, trying nearer sources first."""
    convs = [n for n in graph.nodes if n.op == "conv2d" and n.attrs["groups"] == 1]
    for dst in reversed(convs):
        before = graph.nodes[:graph.position(dst.name)]
        for src in reversed(before):
            if src.op in ACTIVATION_OPS and src.name != dst.inputs[0]:
                try:
                    return skip(graph, src.name, dst.name)
                except PassError:
                    continue
    raise AssertionError("no skip connection is possible")


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_pass_stays_exact_on_the_standard_architectures(arch, route, tmp_path):
    model, x, legacy = _model(arch)
    graph = _graph(arch, route)
    xs = x.numpy()
    reference = next(iter(run_onnx(legacy, {legacy.graph.input[0].name: xs}).values()))
    _assert_matches(graph, reference, xs, f"{arch} via {route}, as imported")

    path = tmp_path / f"{arch}.easir"
    save_graph(graph, path)
    result = CliRunner().invoke(main, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    if route == "torchscript":  # PyTorch source of the imported network, checked against to_module when written
        export_torch_source(graph, tmp_path / "torch")

    _original_widths.clear()
    _original_widths.update({n.name: n.width for n in graph.layers()})
    wide, refused = _widen_every_layer(graph)
    for layer, reason in refused.items():
        assert any(re.search(p, reason) for p in GENUINE_REFUSALS), f"{arch}: {reason}"
    # depthwise convs are widened with their producer; of the rest, most layers must widen
    others = [layer for layer, reason in refused.items() if "depthwise" not in reason]
    assert len(others) < len(graph.layers()) / 2, f"{arch}: most layers refused: {refused}"
    if arch == "shufflenet_v2":  # through every shuffle and split: only the classifier refuses
        assert len(others) == 1 and "graph output" in refused[others[0]], refused
    _assert_matches(wide, reference, xs, f"{arch} via {route}, every layer widened")

    after = _activation(graph)
    deep = deepen(graph, after)
    _assert_matches(deep.graph, reference, xs, f"{arch} via {route}, deepened after {after}")

    _assert_matches(_a_skip(graph).graph, reference, xs, f"{arch} via {route}, with a skip")

    conv = next(n.name for n in graph.nodes if n.op == "conv2d" and n.attrs["dilation"] == (1, 1)
                and n.attrs["groups"] > 1) if any(n.op == "conv2d" and n.attrs["groups"] > 1 for n in graph.nodes) \
        else next(n.name for n in graph.nodes if n.op == "conv2d")
    _assert_matches(widen_kernel(graph, conv).graph, reference, xs, f"{arch} via {route}, kernel of {conv} widened")

"""The graph search space: tokens, blocks and coupling groups read from the IR, and a search that grows an
imported ResNet-18 on an image folder.
"""

from __future__ import annotations

import json
import sqlite3
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from easc.cli.main import main
from easc.ir import GraphBuilder, probe_inputs
from easc.passes.base import PRESERVATION_RTOL, ProbeSet
from easc.search.controller import DeeperDecision, WiderDecision
from easc.search.graph_space import GraphSpace, graph_tokens
from easc.search.tokens import SearchSpace, apply_wider, blocks, deepen_points, token_string, widen_mask

SPACE = SearchSpace(conv_widths=(4, 8, 12, 16, 24, 32), fc_widths=(16, 32), kernels=(1, 3))


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EASC_CACHE_DIR", str(tmp_path / "cache"))


def easc(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def residual_net():
    """stem s; residual block (c1, c2) + s; stride-2 block d with 1x1 shortcut e; conv f concatenated; fc."""
    b = GraphBuilder("resnet_like", rng=np.random.default_rng(0))
    x = b.input("x", (3, 8, 8))
    s = b.relu(b.batchnorm(b.conv2d(x, 8, 3, padding=1, name="s")))
    c1 = b.relu(b.batchnorm(b.conv2d(s, 8, 3, padding=1, name="c1")))
    c2 = b.batchnorm(b.conv2d(c1, 8, 3, padding=1, name="c2"))
    r = b.relu(b.add_([c2, s], name="add1"))
    d = b.batchnorm(b.conv2d(r, 16, 3, stride=2, padding=1, name="d"))
    e = b.conv2d(r, 16, 1, stride=2, name="e")
    r2 = b.relu(b.add_([d, e], name="add2"))
    f = b.relu(b.conv2d(r2, 4, 3, padding=1, name="f"))
    h = b.flatten(b.global_avgpool(b.concat([r2, f], name="cat")))
    b.output("logits", b.linear(h, 10, name="fc"))
    return b.build()


def test_tokens_end_blocks_where_the_resolution_drops_and_group_coupled_layers():
    g = residual_net()
    tokens = graph_tokens(g)
    assert [token_string(t) if t.kind == "pool" else t.name for t in tokens] == \
        ["s", "c1", "c2", "pool", "d", "e", "f", "pool", "fc"]
    assert [[tokens[i].name for i in blk] for blk in blocks(tokens)] == [["s", "c1", "c2"], ["d", "e", "f"], ["fc"]]
    by = {t.name: t for t in tokens}
    assert by["c2"].coupled == (("s", 1),) and by["e"].coupled == (("d", 1),)
    assert by["s"].coupled == by["c1"].coupled == by["d"].coupled == by["f"].coupled == ()
    mask = dict(zip([t.name for t in tokens], widen_mask(tokens, SPACE)))
    # One decision per coupling group (its first layer); the classifier is the output layer.
    assert {n for n, ok in mask.items() if ok} == {"s", "c1", "d", "f"}
    assert by["fc"].is_output and deepen_points(tokens)[-1] == [False]


def _wider(tokens, names):
    return WiderDecision(tuple(tokens), tuple(t.name in names for t in tokens), 0.0, 0.0)


def test_widening_a_group_widens_every_coupled_layer_and_the_tokens_agree_with_the_simulator():
    g = residual_net()
    space = GraphSpace(SPACE)
    tokens = space.tokens(g)
    probes = ProbeSet(probe_inputs(g, 2))
    child, records = space.apply_wider(g, _wider(tokens, {"s", "d"}), np.random.default_rng(0), probes)
    assert [r["layer"] for r in records] == ["s", "d"]
    assert all(r["max_diff"] <= PRESERVATION_RTOL for r in records)
    assert {n: child.node(n).width for n in ("s", "c1", "c2", "d", "e", "f")} == \
        {"s": 12, "c1": 8, "c2": 12, "d": 24, "e": 24, "f": 4}
    simulated = apply_wider(tokens, [t.name in {"s", "d"} for t in tokens], SPACE)
    assert [(t.name, t.width) for t in space.tokens(child)] == [(t.name, t.width) for t in simulated]


def test_deepening_after_a_residual_branch_stays_inside_its_block_and_exact():
    g = residual_net()
    space = GraphSpace(SPACE)
    tokens = space.tokens(g)
    decision = DeeperDecision(tuple(tokens), 0, 2, 3, 0.0, 0.0)  # block 0, after c2 (before the add)
    calibration = probe_inputs(g, 16, seed=1)["x"]
    child, (record,) = space.apply_deeper(g, decision, np.random.default_rng(0), ProbeSet(probe_inputs(g, 2)),
                                          calibration)
    # c2's unit is c2 -> its batchnorm; the add after it is shared with the skip path, so the block goes
    # between the batchnorm and the add (no relu: the value can be negative), inside the residual branch.
    assert "skipped" not in record and g.node(record["after"]).op == "batchnorm"
    assert g.node(record["after"]).inputs == ("c2",) and record["calibrated"]
    assert record["max_diff"] <= PRESERVATION_RTOL
    after = space.tokens(child)
    assert [[after[i].name for i in blk] for blk in blocks(after)][0] == ["s", "c1", "c2", f"deepen_{record['after']}"]
    assert child.node(f"deepen_{record['after']}").type == g.node("c2").type


def test_a_depthwise_conv_follows_the_layer_feeding_it_and_grouped_channels_grow_in_whole_groups():
    b = GraphBuilder("dw", rng=np.random.default_rng(0))
    x = b.input("x", (3, 8, 8))
    a = b.relu(b.conv2d(x, 8, 3, padding=1, name="a"))
    dw = b.relu(b.conv2d(a, 8, 3, padding=1, groups=8, name="dw"))
    g2 = b.relu(b.conv2d(b.conv2d(dw, 8, 1, name="pw"), 8, 3, padding=1, groups=2, name="grouped"))
    h = b.flatten(b.global_avgpool(g2))
    b.output("y", b.linear(h, 4, name="fc"))
    graph = b.build()
    tokens = graph_tokens(graph)
    by = {t.name: t for t in tokens}
    # dw: a depthwise conv is widened by widening its input's producer (one filter per channel), never alone.
    assert [t.name for t, ok in zip(tokens, widen_mask(tokens, SPACE)) if ok] == ["a", "pw", "grouped"]
    assert by["dw"].coupled == (("a", 1),)
    # pw's channels pass the groups=2 conv: 8 -> 12 (4 = two per group), the next width of the list that
    # keeps the two groups equal; grouped's own output grows alike.
    assert by["pw"].step == 2 and by["grouped"].step == 2
    space = GraphSpace(SPACE)
    child, records = space.apply_wider(graph, _wider(tokens, {"a", "pw"}), np.random.default_rng(0),
                                       ProbeSet(probe_inputs(graph, 2)))
    assert all("skipped" not in r and r["max_diff"] <= PRESERVATION_RTOL for r in records)
    assert {n: child.node(n).width for n in ("a", "dw", "pw")} == {"a": 12, "dw": 12, "pw": 12}
    assert [(t.name, t.width) for t in space.tokens(child)] == \
        [(t.name, t.width) for t in apply_wider(tokens, [t.name in {"a", "pw"} for t in tokens], SPACE)]


# ------------------------------------------------------------------------------------------ the figure


def cifar_folder(root: Path, n_train=60, n_test=20, size=32, seed=0) -> Path:
    """CIFAR's format as an image folder: train/ and test/, ten class folders, 32x32 RGB PNG files."""
    rng = np.random.default_rng(seed)
    protos = rng.uniform(0, 255, (10, size, size, 3))
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            c = i % 10
            img = np.clip(0.6 * protos[c] + 0.4 * rng.uniform(0, 255, (size, size, 3)), 0, 255).astype(np.uint8)
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(folder / f"{i:05d}.png")
    return root


def resnet18_onnx(path: Path, size=32) -> Path:
    from easc.backends.torch.zoo import resnet18

    torch.manual_seed(0)
    model = resnet18(num_classes=10, width_mult=0.25).eval()
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.randn(1, 3, size, size), str(path), input_names=["image"],
                          output_names=["logits"], dynamic_axes={"image": {0: "n"}, "logits": {0: "n"}},
                          dynamo=False)
    return path


def test_search_grows_an_imported_resnet18_on_an_image_folder_every_child_exact_and_exports(tmp_path):
    import onnxruntime as ort

    data = cifar_folder(tmp_path / "cifar_like")
    start = resnet18_onnx(tmp_path / "resnet18.onnx")
    run = tmp_path / "run"
    result = easc("search", "--dataset", data, "--start", start, "--out", run, "--steps", 2, "--children", 3,
                  "--epochs", 1, "--widen-noise", 0, "--quiet")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["steps"] == 2 and summary["children"] == 7 and summary["failed"] == 0
    with sqlite3.connect(run / "search.sqlite") as db:
        rows = db.execute("select status, actions, step from children").fetchall()
    grown = [json.loads(actions) for status, actions, step in rows if step > 0]
    assert len(grown) == 6 and all(status in ("done", "cached") for status, _, _ in rows)
    records = [a for actions in grown for a in actions]
    assert {a["pass"] for a in records} == {"widen", "deepen"}
    # Exact: every action passed the check (a failure would have failed the child), with room to spare.
    assert all("skipped" not in a and a["max_diff"] <= PRESERVATION_RTOL for a in records)
    split = json.loads((run / "split.json").read_text())
    assert len(split["test"]) == 20 and len(split["train"]) + len(split["val"]) == 60

    out = tmp_path / "best.onnx"
    result = easc("export", run, "--best", "--format", "onnx", "-o", out)
    assert result.exit_code == 0, result.output
    session = ort.InferenceSession(str(out))
    logits = session.run(None, {session.get_inputs()[0].name: np.random.rand(2, 3, 32, 32).astype(np.float32)})[0]
    assert logits.shape == (2, 10) and np.isfinite(logits).all()


def test_a_start_net_at_another_input_size_than_the_data_is_refused_in_one_line(tmp_path):
    data = cifar_folder(tmp_path / "small", n_train=20, n_test=10, size=16)
    start = resnet18_onnx(tmp_path / "resnet18.onnx", size=32)
    result = easc("search", "--dataset", data, "--start", start, "--out", tmp_path / "run", "--quiet")
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "(3, 32, 32)" in result.output and "(3, 16, 16)" in result.output
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------ properties

from hypothesis import HealthCheck, given, settings  # noqa: E402
from strategies import cnn_graphs  # noqa: E402

WIDE = SearchSpace(conv_widths=tuple(range(2, 33)), fc_widths=tuple(range(2, 33)), kernels=(1, 3))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cnn_graphs())
def test_every_action_the_masks_allow_is_applied_exactly_and_the_tokens_follow_it(graph):
    """On random graphs (residual adds, concats, branches, grouped convs, softmax heads, second outputs): every
    token the widen mask allows is widened by one exact pass, after which the re-encoded tokens equal the
    token simulator's; every deepening point the masks allow is deepened exactly, inside its block."""
    space = GraphSpace(WIDE)
    tokens = space.tokens(graph)
    probes = ProbeSet(probe_inputs(graph, 2))
    for i, ok in enumerate(widen_mask(tokens, WIDE)):
        if not ok:
            continue
        chosen = [j == i for j in range(len(tokens))]
        child, records = space.apply_wider(graph, _wider(tokens, {tokens[i].name}), np.random.default_rng(0), probes)
        assert len(records) == 1 and "skipped" not in records[0], records
        grown = child.node(tokens[i].name).width - graph.node(tokens[i].name).width
        _assert_tokens_follow(tokens, space.tokens(child), chosen, WIDE, {tokens[i].name: grown})
    for b, points in enumerate(deepen_points(tokens)):
        for j, ok in enumerate(points):
            if not ok:
                continue
            kernel = 3 if tokens[blocks(tokens)[b][j]].kind == "conv" else None
            child, (record,) = space.apply_deeper(graph, DeeperDecision(tuple(tokens), b, j, kernel, 0.0, 0.0),
                                                  np.random.default_rng(0), probes)
            assert "skipped" not in record, record
            new = space.tokens(child)
            assert len(blocks(new)) == len(blocks(tokens))
            assert len(blocks(new)[b]) == len(blocks(tokens)[b]) + 1


def _zoo_graph(folder, arch):
    """A zoo layout at width 0.25, 10 classes, exported to ONNX at 3x32x32 (TorchScript exporter) and imported."""
    from easc.backends.formats import load_model
    from easc.backends.torch.zoo import ARCHITECTURES

    torch.manual_seed(0)
    model = ARCHITECTURES[arch](num_classes=10, width_mult=0.25).eval()
    path = folder / f"{arch}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.randn(1, 3, 32, 32), str(path), input_names=["image"],
                          output_names=["logits"], dynamo=False)
    return load_model(path)


@pytest.mark.parametrize("arch", ["densenet121", "googlenet", "mobilenet_v2", "efficientnet_b0", "regnety",
                                  "shufflenet_v2"])
def test_zoo_networks_get_one_block_per_resolution_and_grow_exactly(tmp_path, arch):
    """DenseNet's dense blocks and GoogLeNet's inception branches join by concatenation (a widened layer is a
    segment of every later concat); MobileNetV2 and EfficientNet-B0 widen through depthwise convs, EfficientNet
    and RegNetY through squeeze-excitation gates, RegNet through grouped convs. The re-encoded tokens agree
    with the simulator on every one."""
    graph = _zoo_graph(tmp_path, arch)
    space = GraphSpace(SearchSpace.paper())
    tokens = space.tokens(graph)
    # ImageNet stems: 32x32 -> 16 (stem conv) -> 8 -> 4 -> 2 -> 1, then the classifier: six blocks.
    assert len(blocks(tokens)) == 6
    probes = ProbeSet(probe_inputs(graph, 2))
    mask = widen_mask(tokens, SearchSpace.paper())
    for i in [i for i, ok in enumerate(mask) if ok][1:4]:
        chosen = [j == i for j in range(len(tokens))]
        child, (record,) = space.apply_wider(graph, _wider(tokens, {tokens[i].name}), np.random.default_rng(0),
                                             probes)
        assert record["max_diff"] <= PRESERVATION_RTOL
        grown = child.node(tokens[i].name).width - graph.node(tokens[i].name).width
        _assert_tokens_follow(tokens, space.tokens(child), chosen, SearchSpace.paper(), {tokens[i].name: grown})
    last = len(blocks(tokens)) - 2  # the last spatial block
    child, (record,) = space.apply_deeper(graph, DeeperDecision(tuple(tokens), last, 0, 3, 0.0, 0.0),
                                          np.random.default_rng(0), probes, probe_inputs(graph, 8, seed=1)["image"])
    assert "skipped" not in record and record["max_diff"] <= PRESERVATION_RTOL


def _assert_tokens_follow(before, after, chosen, space, delta_of):
    """The re-encoded tokens equal the simulator's, except layers coupled through a shuffle (times None),
    which grow by at most times-the-lead's-growth for each of their occurrences (checked from `delta_of`)."""
    simulated = apply_wider(before, chosen, space)
    for old, new, sim in zip(before, after, simulated):
        assert (new.name, new.kind) == (sim.name, sim.kind)
        unknown = [lead for lead, times in old.coupled if times is None and lead in delta_of]
        if unknown:
            assert old.width <= new.width <= old.width + sum(delta_of[lead] for lead in unknown) * 4
        else:
            assert new.width == sim.width, (new.name, new.width, sim.width)


def test_shufflenet_layers_whose_channels_a_shuffle_scatters_are_widened_exactly(tmp_path):
    """ShuffleNetV2: a branch's last conv feeds concat -> shuffle -> split, so its channels reach the next
    units interleaved and halved. Every such layer is offered, widens exactly, and the tokens read back
    agree with the simulator wherever it can predict (the downsampling depthwise conv that receives a
    scattered part of the channels grows by what the mapping drew, within its bound)."""
    from easc.passes.channels import Segment, trace_channels

    graph = _zoo_graph(tmp_path, "shufflenet_v2")
    space = GraphSpace(SearchSpace.paper())
    tokens = space.tokens(graph)
    mask = widen_mask(tokens, SearchSpace.paper())

    def scattered(token):
        flow = trace_channels(graph, token.name)
        return any(not isinstance(seg, Segment) for m, segs in flow.segments.items() if m != token.name
                   for seg in segs)

    offered = [t for t, ok in zip(tokens, mask) if ok]
    through_shuffle = [t for t in offered if scattered(t)]
    assert len(through_shuffle) >= 8  # every unit's last branch conv of stages 2 and 3 (13 at width 0.5)
    assert any(times is None for t in tokens for _, times in t.coupled)
    probes = ProbeSet(probe_inputs(graph, 2))
    for token in through_shuffle[:3] + through_shuffle[-2:]:
        chosen = [t.name == token.name for t in tokens]
        child, (record,) = space.apply_wider(graph, _wider(tokens, {token.name}), np.random.default_rng(0), probes)
        assert "skipped" not in record and record["max_diff"] <= PRESERVATION_RTOL, record
        grown = child.node(token.name).width - graph.node(token.name).width
        assert grown > 0
        _assert_tokens_follow(tokens, space.tokens(child), chosen, SearchSpace.paper(), {token.name: grown})


@pytest.mark.parametrize("name, shape", [("digits-small", (1, 8, 8)), ("eas-small", (3, 32, 32)),
                                         ("eas-paper", (3, 32, 32))])
def test_on_a_conv_pool_chain_the_graph_space_sees_what_the_plain_space_sees(name, shape):
    from easc.search.encode import graph_tokens as plain_tokens
    from easc.search.start_nets import build_start_net

    g = build_start_net(name, shape, 10)
    ours, plain = graph_tokens(g), plain_tokens(g)
    strip = lambda ts: [(t.kind, t.width, t.kernel, t.is_output) for t in ts]  # noqa: E731
    assert strip(ours) == strip(plain)
    assert widen_mask(ours, SearchSpace.paper()) == widen_mask(plain, SearchSpace.paper())
    assert deepen_points(ours) == deepen_points(plain)

"""Properties over random graphs (`strategies.cnn_graphs`) and random chains of up to 20 passes.

- every drawn graph verifies, prints / parses back to the same text, and hashes the same under renaming;
- a chain of deepen / skip / widen_kernel / widen (when `passes/widen.py` is importable) steps, each with
  arguments chosen from the current graph, keeps verify() true and the outputs within PRESERVATION_RTOL, step
  by step and end to end, and leaves the graph it started from untouched.
"""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from easc.ir import parse_graph, print_graph, probe_inputs, run, structural_hash, verify
from easc.passes.base import PRESERVATION_RTOL, PROBE_BATCH, PassError, checked, max_output_difference
from easc.passes.deepen import calibration_stats, deepen, deepenable
from easc.passes.skip import skip, skip_candidates
from easc.passes.widen_kernel import kernel_widenable, widen_kernel
from strategies import cnn_graphs

PROPERTY = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])

MAX_CHAIN = 20
MAX_KERNEL = 7
"""Largest kernel a chain grows to: larger ones only slow the float64 interpreter down."""


def _widen_module():
    """The `easc.passes.widen` module (the package re-exports the function under the same name)."""
    import importlib

    return importlib.import_module("easc.passes.widen")


def _renamed(graph, seed):
    """The same graph with every node renamed (names shuffled over `v0, v1, ...`)."""
    order = np.random.default_rng(seed).permutation(len(graph.nodes))
    new = {n.name: f"v{int(k)}" for n, k in zip(graph.nodes, order)}
    nodes = [n.replace(name=new[n.name], inputs=tuple(new[i] for i in n.inputs), origin=new.get(n.origin, ""))
             for n in graph.nodes]
    return graph.replace(nodes=nodes, outputs={o: new[v] for o, v in graph.outputs.items()})


@PROPERTY
@given(cnn_graphs())
def test_random_graphs_verify_and_their_text_form_round_trips(graph):
    verify(graph)
    text = print_graph(graph)
    assert print_graph(parse_graph(text)) == text


@PROPERTY
@given(cnn_graphs(), st.integers(0, 2**16))
def test_structural_hash_ignores_names_and_weights_but_sees_a_new_layer(graph, seed):
    renamed = _renamed(graph, seed)
    verify(renamed)
    assert structural_hash(renamed) == structural_hash(graph)
    reweighted = parse_graph(print_graph(graph), rng=np.random.default_rng(seed))
    assert structural_hash(reweighted) == structural_hash(graph)
    deeper = deepen(graph, deepenable(graph)[0]).graph
    assert structural_hash(deeper) != structural_hash(graph)


def _candidates(graph, widen_module) -> dict:
    """For each pass, the arguments it can take on `graph` (passes with none are left out)."""
    found = {
        "deepen": deepenable(graph),  # never empty: an input is read and is not an output
        "skip": skip_candidates(graph),
        "widen_kernel": [n for n in kernel_widenable(graph) if max(graph.node(n).attrs["kernel"]) + 2 <= MAX_KERNEL],
    }
    if widen_module is not None:
        found["widen"] = widen_module.widenable_layers(graph)
    return {kind: args for kind, args in found.items() if args}


def _step(data, graph, widen_module):
    """Draw one pass and arguments valid for `graph`."""
    candidates = _candidates(graph, widen_module)
    kind = data.draw(st.sampled_from(sorted(candidates)), label="pass")
    choice = data.draw(st.sampled_from(candidates[kind]), label="target")
    if kind == "deepen":
        kwargs = {"after": choice, "kernel": data.draw(st.sampled_from([1, 3, 5]), label="kernel")}
        if data.draw(st.booleans(), label="calibrate"):
            batch = probe_inputs(graph, 8, seed=data.draw(st.integers(1, 100), label="calibration seed"))
            kwargs["calibration"] = calibration_stats(graph, choice, batch)
        return deepen, kwargs
    if kind == "skip":
        src, dst = choice
        return skip, {"src": src, "dst": dst, "pool": data.draw(st.sampled_from(["avg", "max"]), label="pool")}
    if kind == "widen_kernel":
        return widen_kernel, {"layer": choice}
    width = graph.node(choice).width + data.draw(st.integers(1, 4), label="extra units")
    return widen_module.widen, {"layer": choice, "width": width}


@PROPERTY
@given(cnn_graphs(), st.data())
def test_random_pass_chains_keep_the_graph_valid_and_the_function_unchanged(graph, data):
    widen_module = _widen_module()
    text = print_graph(graph)
    weights = {(n.name, k): w.copy() for n in graph.nodes for k, w in n.weights.items()}
    probes = probe_inputs(graph, PROBE_BATCH)
    reference = run(graph, probes)

    current, applied = graph, []
    length = data.draw(st.integers(1, MAX_CHAIN), label="chain length")
    for step in range(length + 10):  # a refusal does not count towards the length
        if len(applied) == length:
            break
        pass_fn, kwargs = _step(data, current, widen_module)
        try:
            result = pass_fn(current, rng=np.random.default_rng(step), **kwargs)
        except PassError:
            continue  # a refusal is an acceptable answer; the chain goes on from the same graph
        checked(current, result, probes)
        current = result.graph
        applied.append(result.record)

    assert applied, "no pass applied in the whole chain"
    verify(current)
    diff, scale = max_output_difference(graph, current, probes)
    assert diff <= PRESERVATION_RTOL * (1 + scale), (diff, applied)
    assert all(run(current, probes)[k].shape == v.shape for k, v in reference.items())
    # the chain started from `graph` and never touched it
    assert print_graph(graph) == text
    for (name, key), w in weights.items():
        np.testing.assert_array_equal(graph.node(name).weights[key], w)

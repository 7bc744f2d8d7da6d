"""`easc transform MODEL --widen ... --deepen ... --skip ... -o OUT`: verified rewrites of a model file.

Passes run in the order given on the command line. Each is checked by the verifier and numerically,
with onnxruntime as the oracle (independent of the passes' own reference interpreter); the first
failure stops everything and nothing is written.
"""

from __future__ import annotations

import click

from .common import EascCommand, fail

PASS_OPTIONS = {"--widen": "widen", "--deepen": "deepen", "--skip": "skip", "--widen-kernel": "widen_kernel"}


def _ordered_requests(raw_args, values: dict) -> list:
    """[(option, value), ...] in command-line order, pairing each occurrence with click's parsed value."""
    order = []
    for token in raw_args:
        if token == "--":
            break
        name = token.split("=", 1)[0]
        if name in PASS_OPTIONS:
            order.append(PASS_OPTIONS[name])
    cursors = {k: iter(v) for k, v in values.items()}
    return [(kind, next(cursors[kind])) for kind in order]


def _widen_specs(value: str, graph, factor: float) -> list:
    """`conv_3=96,conv_4` -> [("conv_3", 96), ("conv_4", ceil(width * factor))]."""
    import math

    specs = []
    for part in value.split(","):
        layer, _, width = part.strip().partition("=")
        if not layer:
            fail(f"--widen {value!r}: expected LAYER or LAYER=WIDTH")
        if width:
            try:
                target = int(width)
            except ValueError:
                fail(f"--widen {part!r}: width {width!r} is not a whole number")
        else:
            node = graph.node(layer) if layer in graph else None
            target = math.ceil(node.width * factor) if node is not None and node.width else 0
        specs.append((layer, target))
    return specs


@click.command("transform", cls=EascCommand)
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--widen", multiple=True, is_flag=False, flag_value="*", metavar="[LAYER[=WIDTH],...]",
              help="Net2Wider. Alone: every widenable layer x FACTOR. LAYER: that layer x FACTOR. LAYER=W: to W.")
@click.option("--factor", type=float, default=2.0, show_default=True, help="Width multiplier for --widen.")
@click.option("--deepen", multiple=True, metavar="NODE", help="Net2Deeper: insert an identity layer after NODE (in a dense block: a new dense layer after it).")
@click.option("--kernel", type=int, default=3, show_default=True, help="Kernel size of layers --deepen inserts.")
@click.option("--skip", multiple=True, metavar="SRC:DST",
              help="Dense path: concatenate SRC's output onto DST's input (zero weights).")
@click.option("--widen-kernel", "widen_kernel", multiple=True, metavar="LAYER[=K]",
              help="Grow a conv's kernel k -> k+2 (or K), zero padded.")
@click.option("--noise", type=float, default=0.0, show_default=True,
              help="Relative noise on widened copies (breaks symmetry; makes --widen approximate).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the passes' random choices.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output .onnx or .easir.")
@click.pass_context
def command(ctx, model, widen, factor, deepen, kernel, skip, widen_kernel, noise, seed, output):
    """Apply verified function-preserving passes to MODEL and write the result to OUTPUT."""
    import math

    import numpy as np

    from easc.backends.formats import check_save_path, load_model, save_model
    from easc.backends.onnx import run_onnx
    from easc.ir import probe_inputs
    from easc.passes.base import PROBE_BATCH, ProbeSet, max_output_difference
    from easc.passes.dense import dense_layers
    from easc.passes.pipeline import apply_pass, widen_all

    check_save_path(output)
    graph = load_model(model)
    original = graph
    requests = _ordered_requests(ctx.meta.get("raw_args", []),
                                 {"widen": widen, "deepen": deepen, "skip": skip, "widen_kernel": widen_kernel})
    if not requests:
        fail("nothing to do: give --widen, --deepen, --skip or --widen-kernel")
    if any(kind == "widen" for kind, _ in requests) and not (math.isfinite(factor) and factor > 1):
        # checked here, not per layer: ceil(width * inf) would raise, and 0.5 would read as "width 4 < 8"
        fail(f"--factor must be a finite number greater than 1, got {factor:g}")
    rng = np.random.default_rng(seed)
    probes = ProbeSet(probe_inputs(graph, PROBE_BATCH, seed))  # each graph's outputs computed once
    oracle = run_onnx

    def report(result):
        rec = result.record
        args = " ".join(f"{k}={v}" for k, v in rec.items() if k != "pass")
        how = "exact" if result.exact else f"approximate (noise, tolerance {result.tolerance:g})"
        click.echo(f"{rec.get('pass')} {args}: verified {how}, max |diff| {result.max_diff:.3g} "
                   f"(outputs up to {result.max_output:.3g})")
        for line in result.changes:
            click.echo(f"  {line}")

    def run(name, **kwargs):
        nonlocal graph
        result = apply_pass(graph, name, rng=rng, probes=probes, executor=oracle, **kwargs)
        report(result)
        graph = result.graph

    for kind, value in requests:
        if kind == "widen" and value == "*":
            for result in widen_all(graph, factor, rng=rng, probes=probes, executor=oracle, noise=noise):
                report(result)
                graph = result.graph
        elif kind == "widen":
            for layer, width in _widen_specs(value, graph, factor):
                if layer in dense_layers(graph):  # a dense layer's growth: later layers and transition remapped
                    run("dense_widen", layer=layer, growth=width, noise=noise)
                else:
                    run("widen", layer=layer, width=width, noise=noise)
        elif kind == "deepen":
            if value in dense_layers(graph):  # a new dense layer after it, joining the block's concatenation
                run("dense_deepen", after_layer=value)
            else:
                run("deepen", after=value, kernel=kernel)
        elif kind == "skip":
            src, sep, dst = value.partition(":")
            if not sep or not src or not dst:
                fail(f"--skip {value!r}: expected SRC:DST (two node names)")
            run("skip", src=src, dst=dst)
        elif kind == "widen_kernel":
            layer, _, k = value.partition("=")
            if k and not k.isdigit():
                fail(f"--widen-kernel {value!r}: kernel {k!r} is not a positive whole number")
            run("widen_kernel", layer=layer, kernel=int(k) if k else None)
    diff, scale = max_output_difference(original, graph, probes, oracle)
    save_model(graph, output)
    click.echo(f"wrote {output}: {graph.op_count} nodes, depth {graph.depth}, {graph.params:,} parameters "
               f"(was {original.params:,}); end to end max |diff| {diff:.3g}")

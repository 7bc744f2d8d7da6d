"""`easc transform MODEL --widen ... --deepen ... --skip ... -o OUT`: verified rewrites of a model file.

Passes run in the order given on the command line, in one `PassManager`. Each is checked by the verifier
and numerically on the region it rewrote (float64 reference interpreter, from the probe activations at the
region's inputs to the first values where old and new graphs agree again). At the end, once, the
end-to-end check: the user's original file, run by onnxruntime as given (not easc's re-export of it),
against the final model, exported once, run by onnxruntime. The first failure stops everything and
nothing is written (exit 1). Requests whose result would exceed `--max-params`, or whose probe values
would not fit in memory, are refused before anything is allocated (exit 2).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import click

from .background import Background
from .common import EascCommand, fail, leave_without_teardown

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


DEFAULT_MAX_PARAMS = 1_000_000_000
"""Generous: 4 GB of float32 weights, twice what one ONNX file can hold; stops `--widen conv=1000000000`."""

MAX_PROBE_ELEMENTS = 2 ** 27
"""Largest value the numeric checks may hold for the probe batch: 2^27 float64 numbers, 1 GiB."""


def _check_probe_sizes(graph, model: str) -> None:
    import math

    from easc.passes.base import PROBE_BATCH

    for node in graph.nodes:
        size = PROBE_BATCH * math.prod(node.type.sample_shape)
        if size > MAX_PROBE_ELEMENTS:
            fail(f"{model}: the value of {node.name} ({node.type}) has {size:.3g} numbers on {PROBE_BATCH} probe "
                 f"inputs, over the limit of {MAX_PROBE_ELEMENTS:.3g} the checks can hold")


def _reference_outputs(model: str, graph, probes) -> dict:
    """The user's original model's outputs on the probes, by onnxruntime: the ONNX file as given, or, for an
    .easir file (which onnxruntime cannot read), its graph exported."""
    from easc.backends.formats import _is_ir_file
    from easc.backends.onnx import run_onnx

    path = Path(model)
    source = graph if path.suffix == ".easir" or _is_ir_file(path) else path
    return run_onnx(source, dict(probes))


def _start_float32(model: str, probes):
    """A callable returning the user's model's outputs on the probes computed in float32 by the interpreter (its
    file read again: the start graph was let go), for the end-to-end check's float32 margin
    (`PassManager.finish`); called only when a difference needs it."""
    def outputs() -> dict:
        from easc.backends.formats import load_model
        from easc.passes.base import float32_outputs

        return float32_outputs(load_model(model), dict(probes))
    return outputs


def _export_check_write(manager, reference: dict, output: str, start_float32=None) -> float:
    """Export the final graph once, check it end to end against `reference`, write it; returns the difference.

    Memory follows the output: the model is written from the IR's weight arrays (`backends.onnx.stream`, no
    copy of them) to a temporary file next to OUTPUT; the IR graph is let go; onnxruntime loads the file for
    the check, and it is renamed to OUTPUT only when the check passes (removed otherwise: nothing written).
    The file's fsync runs in a thread during the check (it releases the GIL; onnxruntime reads the bytes from
    the page cache meanwhile); the rename waits for both.
    """
    import os

    from easc.backends.onnx import OnnxExportError, run_onnx
    from easc.backends.onnx.exporter import export_parts
    from easc.backends.onnx.stream import write_model
    from easc.ir import save_graph
    from easc.ir.serialize import commit_file, stage_file, sync_file

    if Path(output).suffix == ".easir":
        diff, _ = manager.finish(reference, run_onnx, start_float32)
        save_graph(manager.graph, output)
        return diff
    if manager.graph.params * 4 >= 2 ** 31:
        raise OnnxExportError(f"{output}: the model is larger than 2 GB, which a single ONNX file cannot hold")
    manager.probes.forget_activations()  # the passes are done; the end-to-end check runs onnxruntime
    parts = list(export_parts(manager.graph))  # (model, weights): the weights are the IR's own arrays
    # written from the arrays: no copy of the weights in memory
    temporary = stage_file(output, lambda f: write_model(*parts, f), sync=False)
    synced = None
    try:
        synced = Background(sync_file, temporary, output)
        parts.clear()
        manager.graph = None  # onnxruntime loads the file next; the IR copy can go first
        _release_freed_memory()  # and its pages with it, before onnxruntime allocates its own copy
        diff, _ = manager.finish(reference, lambda _graph, feeds: run_onnx(temporary, feeds), start_float32)
        synced.result()  # on disk before the rename makes it the output
    except BaseException:
        if synced is not None:
            synced.wait()  # the thread has the file open: joined before the file is removed
        os.unlink(temporary)
        raise
    commit_file(temporary, output)
    return diff


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MAPPED_ALONE = 1 << 20
"""Blocks of this size or more get their own mapping while onnxruntime builds the session on the user's file."""
MMAP_THRESHOLD_MAX = 32 << 20
"""glibc's own ceiling for its dynamic mmap threshold on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX)."""


def _libc():
    import ctypes
    import ctypes.util

    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


@contextmanager
def _large_blocks_mapped_alone(libc=None):
    """Inside: glibc maps every block of 1 MiB or more on its own, so that what is freed goes back to the system.
    Used around onnxruntime's session on the user's file.

    glibc raises its mmap threshold to the size of the largest mapped block the process has freed (the
    importer's copies of the file freed some), so onnxruntime's weight buffers and its temporary copies of the
    file came from the heap, and the temporaries freed once the session was built stayed in the RSS: the
    session on ResNet-18's 47 MB file added 106 MB, against 79 MB in a fresh process. On leaving, the threshold
    is fixed where glibc's dynamic rule ends anyway (its maximum, and a trim threshold of twice that, as the
    rule sets them): left at 1 MiB, every later array of that size would be mapped afresh (the passes' new
    weights and float64 temporaries; an earlier round measured up to 1.13x the wall of a `--widen`).
    Measured against the command without it, alternating runs: peak RSS 0.85-0.88x on ResNet-18's deepens
    and skips, 0.87x on ResNet-50's skips, 0.92-0.94x on VGG-11-BN's, the others unchanged, wall within the
    noise (0.90-1.09x). Where the C library has no mallopt (not glibc), nothing changes."""
    try:
        mallopt = (libc or _libc()).mallopt
    except (OSError, AttributeError):
        yield
        return
    mallopt(M_MMAP_THRESHOLD, MAPPED_ALONE)
    try:
        yield
    finally:
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)
        mallopt(M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD_MAX)


def _release_freed_memory() -> None:
    """Hand the heap memory freed since the start back to the OS (glibc's `malloc_trim`; elsewhere nothing).

    Parsing the input (protobuf, its serialised copies for the ONNX checker) frees tens of MB in small
    blocks that glibc keeps for reuse; the passes allocate their arrays in fresh large blocks and never reuse
    them, so without this they stay in the peak RSS for nothing (45 MB of a DenseNet-121's 28 MB input)."""
    import gc

    gc.collect()  # the importer's objects refer to each other: without a collection ~20 MB of them stay
    try:
        _libc().malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: its allocator returns memory its own way
        pass


def _without_huge_pages(ctx) -> None:
    """Stop numpy asking for transparent huge pages for the command's arrays (restored when it ends).

    numpy advises the kernel to back every array of 4 MB or more with huge pages. Where the kernel's THP
    defrag setting is `madvise` (a common default, and this project's machines), that advice makes the first
    touch of a new array compact memory synchronously. A widen or deepen writes each new weight array once,
    straight after allocating it, so it paid the compaction and gained nothing from huge pages: measured with
    NUMPY_MADVISE_HUGEPAGE=0 against the default, alternating runs, `--widen` took 0.83x the wall on ResNet-18,
    0.80x on ResNet-50 and 0.86x on VGG-11-BN, the same on DenseNet-121 (many small arrays), same peak RSS."""
    import numpy as np

    try:
        advise = np._core.multiarray._set_madvise_hugepage  # what NUMPY_MADVISE_HUGEPAGE sets at import
    except AttributeError:  # another numpy layout: leave its default
        return
    before = advise(False)
    ctx.call_on_close(lambda: advise(before))


def _finite_in(name: str, value: float, low: float, high: float | None, strict_low: bool = False):
    import math

    ok = math.isfinite(value) and (value > low if strict_low else value >= low) and (high is None or value <= high)
    if not ok:
        bound = f"greater than {low:g}" if strict_low else f"at least {low:g}"
        upper = f" and at most {high:g}" if high is not None else ""
        fail(f"{name} must be a finite number {bound}{upper}, got {value:g}")


def _shown(value) -> str:
    """An argument as the report prints it: a list of layers (`widen_many`) by count, first and last."""
    if isinstance(value, (list, tuple)):
        if len(value) <= 3:
            return ",".join(map(str, value))
        return f"{len(value)} layers ({value[0]} ... {value[-1]})"
    return str(value)


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
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the passes' random choices.")
@click.option("--max-params", "max_params", type=click.IntRange(min=1), default=DEFAULT_MAX_PARAMS,
              show_default=True, help="Refuse a request whose result would have more parameters.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output .onnx or .easir.")
@click.pass_context
def command(ctx, model, widen, factor, deepen, kernel, skip, widen_kernel, noise, seed, max_params, output):
    """Apply verified function-preserving passes to MODEL and write the result to OUTPUT."""
    import gc

    import numpy as np

    from easc.backends.formats import check_save_path, load_model
    from easc.ir import probe_inputs
    from easc.passes.base import PROBE_BATCH, ProbeSet
    from easc.passes.dense import dense_layers
    from easc.passes.manager import PassManager
    from easc.passes.pipeline import iter_widen_all

    # Everything imported so far lives as long as the process: out of the cyclic collector's sight, the
    # collections that hand memory back between the phases (`_release_freed_memory`) look only at what the
    # command made (each full collection over the imported modules took ~10 ms).
    gc.freeze()
    ctx.call_on_close(gc.unfreeze)  # a command run inside a longer-lived process (tests) gives them back
    _without_huge_pages(ctx)
    check_save_path(output)
    requests = _ordered_requests(ctx.meta.get("raw_args", []),
                                 {"widen": widen, "deepen": deepen, "skip": skip, "widen_kernel": widen_kernel})
    if not requests:
        fail("nothing to do: give --widen, --deepen, --skip or --widen-kernel")
    if any(kind == "widen" for kind, _ in requests):
        # checked here, not per layer: ceil(width * inf) would raise, and 0.5 would read as "width 4 < 8"
        _finite_in("--factor", factor, 1, None, strict_low=True)
    _finite_in("--noise", noise, 0, 1)
    graph = load_model(model)
    _check_probe_sizes(graph, model)
    probes = ProbeSet(probe_inputs(graph, PROBE_BATCH, seed))
    _release_freed_memory()  # what parsing the file freed, before onnxruntime loads it again
    with _large_blocks_mapped_alone():
        reference = _reference_outputs(model, graph, probes)  # the user's file, before any pass
    _release_freed_memory()  # and what the session freed, before the passes
    was = graph.params
    manager = PassManager(graph, rng=np.random.default_rng(seed), probes=probes, max_params=max_params)
    del graph  # the manager holds the current graph only: memory follows the output

    def report(result):
        rec = result.record
        args = " ".join(f"{k}={_shown(v)}" for k, v in rec.items() if k != "pass")
        how = "exact" if result.exact else f"approximate (noise, tolerance {result.tolerance:g})"
        evaluated = manager.stats[-1].evaluated
        click.echo(f"{rec.get('pass')} {args}: verified {how}, max |diff| {result.max_diff:.3g} "
                   f"(values up to {result.max_output:.3g}; local check of {evaluated} nodes)")
        for line in result.changes:
            click.echo(f"  {line}")

    def run(name, **kwargs):
        report(manager.run(name, **kwargs))

    def report_each(results):
        # in a function of its own: a loop variable left in `command` would keep the last result, and with it
        # the final graph, alive through the export and the onnxruntime session on the output
        for result in results:
            report(result)

    for kind, value in requests:
        if kind == "widen" and value == "*":
            report_each(iter_widen_all(manager, factor, noise=noise))
        elif kind == "widen":
            for layer, width in _widen_specs(value, manager.graph, factor):
                if layer in dense_layers(manager.graph):  # a dense layer's growth: later layers and transition remapped
                    run("dense_widen", layer=layer, growth=width, noise=noise)
                else:
                    run("widen", layer=layer, width=width, noise=noise)
        elif kind == "deepen":
            if value in dense_layers(manager.graph):  # a new dense layer after it, joining the block's concatenation
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
    graph = manager.graph
    summary = f"{graph.op_count} nodes, depth {graph.depth}, {graph.params:,} parameters (was {was:,})"
    del graph
    # exported once: checked, then written as it is
    diff = _export_check_write(manager, reference, output, _start_float32(model, probes))
    rounding = manager.float32_rounding
    click.echo(f"wrote {output}: {summary}; end to end max |diff| {diff:.3g} (onnxruntime, original file "
               f"against the result" + ("" if rounding is None else
                                       f"; within float32 rounding: the original's float32 outputs are up to "
                                       f"{rounding:.3g} off its float64 ones") + ")")
    leave_without_teardown()  # the output is on disk and the fsync thread joined: nothing left to tear down

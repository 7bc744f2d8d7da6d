"""`easc export SOURCE --format onnx|torch|ir -o OUT`: a model file, or a search run's best child."""

from __future__ import annotations

from pathlib import Path

import click

from .common import fail

FORMATS = ("onnx", "torch", "ir")


@click.command("export")
@click.argument("source", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(FORMATS), required=True,
              help="onnx: an .onnx file; torch: a folder with model.py + weights.safetensors; ir: an .easir file.")
@click.option("--best", is_flag=True, help="SOURCE is a search run folder: export its best child.")
@click.option("--child", type=int, default=None, help="SOURCE is a search run folder: export this child id.")
@click.option("-o", "--output", required=True, type=click.Path(), help="Output file (onnx, ir) or folder (torch).")
def command(source, fmt, best, child, output):
    """Export SOURCE (.onnx, .easir, or a run folder with --best / --child) in another format."""
    from easc.backends.formats import check_save_path, load_model, save_model
    from easc.ir.serialize import check_writable

    out = Path(output)
    # The output location is checked before the (possibly long) load, and named as the user gave it.
    if fmt == "torch":
        if out.exists() and not out.is_dir():
            fail(f"{out}: exists and is not a folder (--format torch writes a folder)")
        if out.is_dir():
            check_writable(out / "model.py")
        elif out.parent.is_dir():
            check_writable(out)
    else:
        want = ".onnx" if fmt == "onnx" else ".easir"
        if out.suffix != want:
            fail(f"{out}: --format {fmt} writes a {want} file")
        check_save_path(out)
    src = Path(source)
    if src.is_dir() or best or child is not None:
        if best and child is not None:
            fail("give --best or --child, not both")
        from easc.search.runs import load_run_child

        graph = load_run_child(src, child)
    else:
        graph = load_model(src)
    if fmt == "torch":
        from easc.backends.torch import export_torch_source

        # export_torch_source creates the folder only after the generated code has been checked, and is all
        # or nothing: a failed write leaves neither a lone weights file nor a folder it created behind.
        export_torch_source(graph, out)
        click.echo(f"wrote {out / 'model.py'} and {out / 'weights.safetensors'}")
        return
    save_model(graph, out)
    click.echo(f"wrote {out}: {graph.op_count} nodes, depth {graph.depth}, {graph.params:,} parameters")

"""`easc inspect MODEL`: the graph as a table, or as JSON with `--json`."""

import json

import click


@click.command("inspect")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (schema in the README).")
@click.option("--text", "as_text", is_flag=True, help="The IR's text form.")
def command(model, as_json, as_text):
    """Show MODEL (.onnx or .easir): each node, its op, output shape and parameters.

    The names shown are the names that `transform --widen/--deepen/--skip` take.
    """
    from easc.backends.formats import load_model
    from easc.ir import print_graph
    from easc.ir.describe import describe, describe_table

    graph = load_model(model)
    if as_json:
        click.echo(json.dumps(describe(graph), indent=2))
    elif as_text:
        click.echo(print_graph(graph), nl=False)
    else:
        click.echo(describe_table(graph))

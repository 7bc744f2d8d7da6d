"""A machine-readable description of a graph: the `easc inspect --json` schema.

    {"inputs": [{"name", "shape"}], "outputs": [{"name", "shape"}], "params": int,
     "nodes": [{"name", "op", "inputs", "shape", "params", ...op attributes}]}

conv2d and linear carry "width" (output channels or units); conv2d carries "kernel" (an int when
square, else [h, w]). Shapes are lists whose first entry is the symbolic batch "N". Other tools rely
on this schema: extend it, never rename a field.
"""

from __future__ import annotations

from .graph import Graph, Node


def _jsonable(v):
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    return v


def describe_node(node: Node) -> dict:
    info = {"name": node.name, "op": node.op, "inputs": list(node.inputs), "shape": list(node.type.shape),
            "params": node.params}
    for key, value in node.attrs.items():
        if key == "out":
            continue
        if key == "kernel" and node.op == "conv2d" and value[0] == value[1]:
            value = value[0]
        info[key] = _jsonable(value)
    if node.width is not None:
        info["width"] = node.width
    return info


def describe(graph: Graph) -> dict:
    return {
        "name": graph.name,
        "inputs": [{"name": n.name, "shape": list(n.type.shape)} for n in graph.inputs],
        "outputs": [{"name": o, "shape": list(graph.node(n).type.shape)} for o, n in graph.outputs.items()],
        "params": graph.params,
        "depth": graph.depth,
        "nodes": [describe_node(n) for n in graph.nodes if n.op != "input"],
    }


def _attr_summary(info: dict) -> str:
    skip = {"name", "op", "inputs", "shape", "params", "width"}
    parts = []
    if "width" in info:
        parts.append(f"width={info['width']}")
    for key, value in info.items():
        if key in skip or key in ("dilation", "groups", "momentum") and value in ([1, 1], 1, 0.1):
            continue
        if key in ("stride", "padding") and value in ([1, 1], [0, 0]):
            continue
        parts.append(f"{key}={value}")
    return " ".join(parts)


def describe_table(graph: Graph) -> str:
    """A readable table: node, op, inputs, output shape, parameters, attributes."""
    info = describe(graph)
    rows = [("node", "op", "inputs", "shape", "params", "attributes")]
    for node in graph.inputs:
        rows.append((node.name, "input", "", str(list(node.type.shape)), "0", ""))
    for n in info["nodes"]:
        rows.append((n["name"], n["op"], ",".join(n["inputs"]), str(n["shape"]), f"{n['params']:,}",
                     _attr_summary(n)))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = []
    for k, r in enumerate(rows):
        cells = [r[i].ljust(widths[i]) if i != 4 else r[i].rjust(widths[i]) for i in range(5)]
        lines.append("  ".join(cells + [r[5]]).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 10)
    outs = ", ".join(f"{o['name']} {o['shape']}" for o in info["outputs"])
    lines.append("")
    lines.append(f"outputs: {outs}")
    lines.append(f"{len(info['nodes'])} nodes, depth {info['depth']}, {info['params']:,} parameters")
    return "\n".join(lines)

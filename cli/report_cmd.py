"""`easc report RUN`: the leaderboard, plots (PNG) and a summary of a search run."""

from __future__ import annotations

import json
from pathlib import Path

import click


def _fmt(v, digits=4):
    return "-" if v is None else f"{v:.{digits}f}"


def _save_figure(fig, path: Path) -> None:
    """Render to memory, then write through a temporary file and a rename, like every other output: a
    symlink planted at `path` in the run folder is replaced, never followed to overwrite its target."""
    import io

    from easc.ir import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(path, buf.getvalue())


def write_plots(data: dict, run_dir: Path, compare: dict | None = None) -> list:
    """accuracy_per_step.png (mean and best per step, with the compared run) and accuracy_vs_params.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for run, label in ((data, data.get("strategy") or "run"), (compare, (compare or {}).get("strategy") or "compare")):
        if not run or not run["steps"]:
            continue
        steps = [s["step"] for s in run["steps"]]
        line = ax.plot(steps, [s["mean_val_acc"] for s in run["steps"]], marker="o", label=f"{label}: mean")[0]
        ax.plot(steps, [s["best_val_acc"] for s in run["steps"]], linestyle="--", color=line.get_color(),
                label=f"{label}: best")
    ax.set_xlabel("controller step")
    ax.set_ylabel("validation accuracy")
    ax.set_title("validation accuracy per step")
    if ax.get_lines():  # a run still training its start net has no step yet
        ax.legend()
    fig.tight_layout()
    path = run_dir / "accuracy_per_step.png"
    try:
        _save_figure(fig, path)
    finally:
        plt.close(fig)
    written.append(path)

    fig, ax = plt.subplots(figsize=(6, 4))
    pts = data["points"]
    ax.scatter([p["params"] for p in pts], [p["val_acc"] for p in pts], s=12)
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("validation accuracy")
    ax.set_title("accuracy against parameters")
    fig.tight_layout()
    path = run_dir / "accuracy_vs_params.png"
    try:
        _save_figure(fig, path)
    finally:
        plt.close(fig)
    written.append(path)
    return written


def _shown(text) -> str:
    """A string from the run folder, printed so that control characters in a hostile store stay inert."""
    return text if isinstance(text, str) and text.isprintable() else repr(text)


def final_training_lines(trainings: list) -> list:
    """One line per `easc train --final` recorded in the run: which network, which weights, which images."""
    if not trainings:
        return ["final training: none recorded (easc train RUN/children/child_N.easir --final records one)"]
    lines = []
    for f in trainings:
        network = f"child {f['child']}" if f["child"] is not None else f"{_shown(f['model'])} (none of the children)"
        weights = "fresh weights (re-initialised)" if f["weights"] == "reinitialised" else \
            "the network's own weights (--keep-weights)"
        images = "train + validation" if f["data"] == "train+validation" else \
            "train only, validation held out (--hold-out-validation)"
        output = f" -> {_shown(f['output'])}" if f["output"] else ""
        lines.append(f"final training: {network}, {weights}, on {f['train_images']:,} images ({images}), "
                     f"{f['epochs']} epochs at lr {f['lr']:g}, augmentation {_shown(f['augment'])}: val acc "
                     f"{_fmt(f['val_acc'])}, test acc {_fmt(f['test_acc'])}{output}")
    return lines


@click.command("report")
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary (schema in the README).")
@click.option("--compare", type=click.Path(file_okay=False), default=None,
              help="Another run (e.g. --strategy random) to plot on the same axes.")
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True, help="Rows of the leaderboard.")
@click.option("--no-plots", is_flag=True, help="Do not write PNG plots.")
def command(run, as_json, compare, top, no_plots):
    """Summarise the search in RUN: leaderboard, per-step accuracy, plots."""
    from easc.search.runs import report_data

    data = report_data(run, top)
    other = report_data(compare, top) if compare else None
    if as_json:
        shown = {k: data[k] for k in ("start", "best", "steps", "children", "failed", "strategy", "parent", "stages",
                                      "final_trainings", "leaderboard")}
        click.echo(json.dumps(shown, indent=2))
    else:
        click.echo(f"run {run} ({data['strategy']}): {data['children']} children, {data['failed']} failed")
        start = data["start"]
        if start["params"] is None:  # read while the search starts, or after it stopped before its first child
            click.echo("start net: not trained yet")
        else:
            click.echo(f"start net: val acc {_fmt(start['val_acc'])}, {start['params']:,} params")
        parent = {"start": "every child from its stage's start net (EAS)",
                  "best": "every child from the best network so far (hill climb)"}.get(data["parent"], "-")
        click.echo(f"parent: {data['parent']}: {parent}")
        for st in data["stages"]:
            origin = "the start network" if st["source_child"] is None else \
                f"child {st['source_child']} (best so far), trained further"
            click.echo(f"stage {st['stage']}: from step {st['first_step']}, {st['steps']} step(s) done; start net "
                       f"child {st['start_child']} = {origin}, val acc {_fmt(st['start_val_acc'])}; "
                       f"best in stage {_fmt(st['best_val_acc'])}")
        for line in final_training_lines(data["final_trainings"]):
            click.echo(line)
        click.echo("")
        click.echo(f"{'rank':>4}  {'child':>5}  {'val acc':>7}  {'params':>10}  {'depth':>5}  widths / lineage")
        for rank, row in enumerate(data["leaderboard"], 1):
            click.echo(f"{rank:>4}  {row['child']:>5}  {_fmt(row['val_acc'])}  {row['params']:>10,}  "
                       f"{row['depth']:>5}  {row['widths']}  <- {' > '.join(map(str, row['lineage']))}")
        click.echo("")
        click.echo(f"{'step':>4}  {'stage':>5}  {'mean acc':>8}  {'best acc':>8}  {'mean R':>7}  {'baseline':>8}")
        for s in data["steps"]:
            click.echo(f"{s['step']:>4}  {s['stage']:>5}  {_fmt(s['mean_val_acc']):>8}  {_fmt(s['best_val_acc']):>8}  "
                       f"{_fmt(s['mean_reward'], 3):>7}  {_fmt(s['baseline'], 3):>8}")
    if not no_plots:
        for path in write_plots(data, Path(run), other):
            if not as_json:
                click.echo(f"wrote {path}")

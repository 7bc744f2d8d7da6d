"""Progress of a search on the terminal: one bar for steps, one for the children in flight.

Quiet (lines only for finished steps) when stdout is not a terminal, and silent with --quiet.
"""

from __future__ import annotations

import sys

import click


class SearchProgress:
    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.live = sys.stdout.isatty() and not quiet
        self.progress = None
        self.step_task = None
        self.child_task = None
        self.best = None

    def __enter__(self):
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn())
            self.progress.start()
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.stop()

    def _say(self, text: str):
        if self.quiet:
            return
        if self.progress is not None:
            self.progress.console.print(text)
        else:
            click.echo(text)

    def event(self, kind: str, **info):
        if kind == "step_start":
            if self.progress is not None:
                if self.step_task is None:  # controller steps completed, over the whole search
                    self.step_task = self.progress.add_task("steps", total=info.get("steps"))
                self.progress.update(self.step_task, completed=max(info["step"] - 1, 0))
                if self.child_task is not None:
                    self.progress.remove_task(self.child_task)
                self.child_task = self.progress.add_task(f"step {info['step']} children", total=info["children"])
            parent = f" from child {info['parent']} (val acc {info['parent_acc']:.4f})" if "parent" in info else ""
            self._say(f"step {info['step']}: training {info['children']} network(s){parent}")
        elif kind == "child_done":
            acc = info.get("val_acc")
            if acc is not None:
                self.best = acc if self.best is None else max(self.best, acc)
            if self.progress is not None and self.child_task is not None:
                self.progress.update(self.child_task, advance=1,
                                     description=f"children (best val acc {self.best or 0:.4f})")
            what = f"val acc {acc:.4f}" if acc is not None else f"FAILED ({info.get('error')})"
            if self.progress is not None or info.get("status") != "done":
                self._say(f"  child {info['child']}: {what} in {info['seconds']:.1f}s")
        elif kind == "child_epoch":  # in-process training: the child in flight and its running accuracy
            if self.progress is not None and self.child_task is not None:
                self.progress.update(self.child_task, description=(
                    f"child {info['child']} epoch {info['epoch']}/{info['epochs']} val {info['val_acc']:.3f}"
                    f" (best {self.best or 0:.4f})"))
        elif kind == "step_done":
            if self.progress is not None and self.step_task is not None:
                self.progress.update(self.step_task, completed=info["step"])
            mean, best = info.get("mean_val_acc"), info.get("best_val_acc")
            self._say(f"step {info['step']} done: mean val acc {mean if mean is None else round(mean, 4)}, "
                      f"best {best if best is None else round(best, 4)}")
        elif kind == "stage_start" and info.get("stage", 1) > 1:
            self._say(f"stage {info['stage']}: start net = child {info['source']} (val acc {info['source_acc']:.4f}), "
                      f"trained {info['epochs']} more epoch(s)")
        elif kind == "lost":
            self._say(f"resume: {info['count']} child(ren) that were in flight are marked lost")

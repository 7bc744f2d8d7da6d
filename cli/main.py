"""The `easc` command line: a thin layer over the library.

Every command turns the errors users can cause (bad files, unknown layers, impossible options, and
click's own usage errors) into one line on stderr and exit code 2, with no traceback; a pass that
fails its verification (or a disk that fills up mid-run) exits 1, an interrupted command 130, and
anything else is a bug: exit 3, one line naming a log file with the traceback (cli/common.py). Outputs are written through a temporary file and renamed, so nothing
is half-written.
"""

from __future__ import annotations

import os
import sys

import click

from easc import __version__

from .common import (_NO_ARGS_IS_HELP, VERIFICATION_FAILED, EascCommand, _Ending, exit_for, fail,  # noqa: F401
                     usage_fail, user_errors)


class EascGroup(click.Group):
    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except _NO_ARGS_IS_HELP:  # bare `easc`: click prints the help
            raise
        except click.UsageError as e:  # `easc --bogus`
            usage_fail(e)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.exceptions.Exit:
            raise
        except _NO_ARGS_IS_HELP:
            raise
        except click.UsageError as e:  # a subcommand's options: parsed inside the group's invoke
            usage_fail(e)
        except click.exceptions.Abort:
            fail("interrupted", 130)
        except click.ClickException as e:  # e.g. click.FileError
            fail(e.format_message(), e.exit_code)
        except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - every one leaves as one line
            exit_for(e)


@click.group(cls=EascGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="easc")
def main():
    """easc: grow trained networks with verified function-preserving transformations, and search
    architectures with them (Efficient Architecture Search)."""


def run() -> None:
    """The console script (`easc`, `python -m easc.cli.main`): `main`, and for a command that asked for it
    (`common.leave_without_teardown`) a successful end without the interpreter's teardown. After `easc
    transform` that teardown freed the weights, onnxruntime's sessions and their thread pools object by object:
    measured against the same command ending as usual (alternating runs), 0.07-0.11 s of a 0.7-1.2 s run on
    ResNet-18 and DenseNet-121, 0.36 s of 2.5 s on ResNet-50's `--widen`."""
    _Ending.quick = False
    try:
        main()
    except SystemExit as done:
        if done.code in (None, 0) and _Ending.quick:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            except (OSError, ValueError):  # a closed or broken stream: the usual exit reports it
                raise done from None
            os._exit(0)
        raise


def _register():
    from . import export_cmd, inspect_cmd, report_cmd, search_cmd, train_cmd, transform_cmd

    for module in (inspect_cmd, transform_cmd, train_cmd, export_cmd, search_cmd, report_cmd):
        main.add_command(module.command)


if __name__ == "__main__":
    # `python -m easc.cli.main`: this file runs as `__main__`, a second copy of the module. The commands
    # import `easc.cli.main` (for `fail`); registering them from this copy would import them while the real
    # module is half-built (a circular import). Hand over to the real module instead.
    from easc.cli.main import run as _run

    _run()
else:
    _register()

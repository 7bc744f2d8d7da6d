"""The `easc` command line: a thin layer over the library.

Every command turns the errors users can cause (bad files, unknown layers, impossible options, and
click's own usage errors) into one line on stderr and exit code 2, with no traceback; a pass that
fails its verification exits 1. Outputs are written through a temporary file and renamed, so nothing
is half-written.
"""

from __future__ import annotations

import sys

import click

from easc import __version__

USAGE_ERROR = 2
VERIFICATION_FAILED = 1
# click >= 8.2 signals "bare `easc`: show the help" with this UsageError subclass; older click has none (an
# empty tuple in an `except` matches nothing).
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


class EascCommand(click.Command):
    """A command that keeps its raw arguments (`ctx.meta['raw_args']`): transform needs their order."""

    def parse_args(self, ctx, args):
        ctx.meta["raw_args"] = list(args)
        return super().parse_args(ctx, args)


def fail(message: str, code: int = USAGE_ERROR):
    """Print one line to stderr and exit: the way every user-facing error leaves the CLI."""
    click.echo(f"error: {message.splitlines()[0] if message else 'failed'}", err=True)
    sys.exit(code)


def user_errors():
    """The exception types that mean bad input (one-line message, exit 2)."""
    from easc.ir import IRError

    types = [IRError, FileNotFoundError, PermissionError, IsADirectoryError]
    # TrainingDivergedError is here too: a loss that overflows comes from the options (learning rate) or
    # the model the user gave, and its message already says what to change.
    for module, name in (("easc.backends.torch.data", "DatasetError"), ("easc.backends.torch.train", "DeviceError"),
                         ("easc.backends.torch.train", "TrainConfigError"),
                         ("easc.backends.torch.train", "TrainingDivergedError"),
                         ("easc.search.store", "StoreError"), ("easc.search.config", "ConfigError")):
        # Only modules already imported can have raised: importing the others here would load torch
        # (seconds) just to print a one-line error about an unreadable ONNX file.
        error_type = getattr(sys.modules.get(module), name, None)
        if error_type is not None:
            types.append(error_type)
    return tuple(types)


def usage_fail(error: click.UsageError):
    """click's usage errors (missing option, bad value, unknown command) as one line too, not click's
    three-line usage block: scripts read stderr the same way whatever the user got wrong."""
    where = error.ctx.command_path if error.ctx is not None else "easc"
    message = " ".join(error.format_message().split()).rstrip(".")  # e.g. "Choose from:" lists run over lines
    fail(f"{message} (see '{where} --help')", error.exit_code)


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
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except Exception as e:  # noqa: BLE001 - turned into one line below, or re-raised
            from easc.passes.base import FunctionNotPreservedError

            if isinstance(e, FunctionNotPreservedError):
                fail(str(e), VERIFICATION_FAILED)
            if isinstance(e, user_errors()):
                fail(str(e) if not isinstance(e, OSError) else f"{e.filename}: {e.strerror}")
            raise


@click.group(cls=EascGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="easc")
def main():
    """easc: grow trained networks with verified function-preserving transformations, and search
    architectures with them (Efficient Architecture Search)."""


def _register():
    from . import export_cmd, inspect_cmd, report_cmd, search_cmd, train_cmd, transform_cmd

    for module in (inspect_cmd, transform_cmd, train_cmd, export_cmd, search_cmd, report_cmd):
        main.add_command(module.command)


if __name__ == "__main__":
    # `python -m easc.cli.main`: this file runs as `__main__`, a second copy of the module. The commands
    # import `easc.cli.main` (for `fail`); registering them from this copy would import them while the real
    # module is half-built (a circular import). Hand over to the real module instead.
    from easc.cli.main import main as _main

    _main()
else:
    _register()

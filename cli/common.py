"""What every `easc` command shares: the one-line error exit and the command class that keeps its raw
arguments. Command modules import this, never `main` (which imports them), so any of them can be
imported first.
"""

from __future__ import annotations

import sys

import click

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

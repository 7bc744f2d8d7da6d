"""What every `easc` command shares: the one-line error exit and the command class that keeps its raw
arguments. Command modules import this, never `main` (which imports them), so any of them can be
imported first.
"""

from __future__ import annotations

import errno
import sys

import click

# Exit codes, the contract with scripts: 0 done; 1 a pass failed its verification, or the disk filled up
# mid-run (the input was fine, the run could not finish); 2 bad input, bad option, bad config or a corrupt
# run folder; 3 an internal error (a bug in easc: one line plus a log file with the traceback); 130
# interrupted (Ctrl-C).
USAGE_ERROR = 2
VERIFICATION_FAILED = 1
RESOURCE_EXHAUSTED = 1
INTERNAL_ERROR = 3
INTERRUPTED = 130
BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a writer whose reader went away (`| head`)
# A full disk or quota, or a file-size limit (RLIMIT_FSIZE): the run stopped for lack of room, not bad input.
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
# click >= 8.2 signals "bare `easc`: show the help" with this UsageError subclass; older click has none (an
# empty tuple in an `except` matches nothing).
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


class _Ending:
    """Whether the command that ran asked to end its process without the interpreter's teardown
    (`leave_without_teardown`; carried out by the console script, `main.run`)."""

    quick = False


def leave_without_teardown() -> None:
    """Called by a command as its last step, once everything it makes is on disk (written, synced and renamed)
    and no thread of its own is running: the console script then flushes stdout and stderr and ends the
    process at once (`os._exit`), instead of letting Python free every object one by one and run its
    collector over the imported modules before exiting. The operating system takes the memory back in one go.
    Run in-process (tests, `CliRunner`), the request is ignored and the command returns as usual."""
    _Ending.quick = True


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
    types = [OSError]
    # TrainingDivergedError is here too: a loss that overflows comes from the options (learning rate) or
    # the model the user gave, and its message already says what to change.
    for module, name in (("easc.ir.graph", "IRError"), ("easc.backends.torch.data", "DatasetError"), ("easc.backends.torch.train", "DeviceError"),
                         ("easc.backends.torch.train", "TrainConfigError"),
                         ("easc.backends.torch.train", "TrainingDivergedError"),
                         ("easc.search.store", "StoreError"),
                         ("easc.search.runlock", "RunLockedError"), ("easc.search.config", "ConfigError")):
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


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def exit_for(error: BaseException):
    """Leave the CLI for an exception a command raised: one line on stderr and the exit code above.

    Nothing is imported here: the error may be a MemoryError, and only modules already loaded can have
    raised their error types anyway."""
    if isinstance(error, MemoryError):  # something was not bounded before it was allocated: a bug
        internal_error(error)
    if isinstance(error, KeyboardInterrupt):
        fail("interrupted", INTERRUPTED)
    if isinstance(error, BrokenPipeError):
        # The reader of our output went away: nothing to tell it. Point stdout at /dev/null so that the
        # interpreter's final flush does not raise again, and leave as a process killed by SIGPIPE would.
        import os

        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        sys.exit(BROKEN_PIPE)
    not_preserved = getattr(sys.modules.get("easc.passes.base"), "FunctionNotPreservedError", ())
    if isinstance(error, not_preserved):
        fail(str(error), VERIFICATION_FAILED)
    store = sys.modules.get("easc.search.store")
    if store is not None and isinstance(error, store.StoreFullError):
        fail(str(error), RESOURCE_EXHAUSTED)
    if isinstance(error, OSError):
        # Name the user's path (atomic writes report the output, not their temporary file).
        where = f"{error.filename}: " if error.filename else ""
        reason = error.strerror or str(error)
        fail(f"{where}{reason}", RESOURCE_EXHAUSTED if error.errno in _NO_SPACE else USAGE_ERROR)
    if isinstance(error, user_errors()):
        fail(str(error))
    internal_error(error)


def internal_error(error: BaseException):
    """A bug: one line naming the error and a log file holding the traceback, exit 3.

    The log goes to the temporary folder (not the working directory or a run folder, which easc must not
    litter); if even that cannot be written, the traceback goes to stderr after the line.
    """
    import tempfile
    import traceback

    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    what = _one_line(f"{type(error).__name__}: {error}" if str(error) else type(error).__name__)
    try:
        fd, log = tempfile.mkstemp(prefix="easc-crash-", suffix=".log")
        with open(fd, "w") as f:
            f.write(f"easc {' '.join(sys.argv[1:])}\n{text}")
    except OSError:
        click.echo(f"error: internal error ({what}); this is a bug in easc, please report it", err=True)
        click.echo(text, err=True)
        sys.exit(INTERNAL_ERROR)
    fail(f"internal error ({what}); this is a bug in easc, please report it with the traceback in {log}",
         INTERNAL_ERROR)

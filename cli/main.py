"""The `easc` command line: a thin layer over the library.

Every command turns the errors users can cause (bad files, unknown layers, impossible options)
into one line on stderr and exit code 2, with no traceback; a pass that fails its verification
exits 1. Outputs are written through a temporary file and renamed, so nothing is half-written.
"""

from __future__ import annotations

import sys

import click

from easc import __version__

USAGE_ERROR = 2
VERIFICATION_FAILED = 1


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
    for module, name in (("easc.backends.torch.data", "DatasetError"), ("easc.backends.torch.train", "DeviceError"),
                         ("easc.search.store", "StoreError"), ("easc.search.config", "ConfigError")):
        try:
            types.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return tuple(types)


class EascGroup(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.exceptions.Exit:
            raise
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
    from . import export_cmd, inspect_cmd, train_cmd, transform_cmd

    for module in (inspect_cmd, transform_cmd, train_cmd, export_cmd):
        main.add_command(module.command)
    try:
        from . import report_cmd, search_cmd

        main.add_command(search_cmd.command)
        main.add_command(report_cmd.command)
    except ImportError:
        pass


_register()

if __name__ == "__main__":
    main()

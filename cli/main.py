"""The `easc` command line: a thin layer over the library.

Every command turns the errors users can cause (bad files, unknown layers, impossible options, and
click's own usage errors) into one line on stderr and exit code 2, with no traceback; a pass that
fails its verification exits 1. Outputs are written through a temporary file and renamed, so nothing
is half-written.
"""

from __future__ import annotations


import click

from easc import __version__

from .common import (_NO_ARGS_IS_HELP, VERIFICATION_FAILED, EascCommand, fail,  # noqa: F401 - re-exported
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

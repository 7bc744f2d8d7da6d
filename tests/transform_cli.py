"""`easc transform` run in-process for the tests, and the form every refusal of it must take."""

from click.testing import CliRunner

from easc.cli.main import main


def transform(*args):
    return CliRunner().invoke(main, ["transform", *map(str, args)])


def one_line_error(result, code: int) -> str:
    """The single stderr line of a run that exited with `code`, `error: ...`, no traceback anywhere."""
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.output
    return lines[0]

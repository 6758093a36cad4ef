"""The ``querent`` command: the slide, data and model subcommands, outside Snakemake."""

from __future__ import annotations

import argparse
import logging
import sys
from importlib.metadata import PackageNotFoundError, version

from extractors import cli as slide_cli
from extractors.errors import QuerentError
from extractors.logs import quiet_chatty_loggers
from querent.data import cli as data_cli
from querent.engine import cli as model_cli

#: Errors of the input or the machine (a missing file, a full disk); they get one line on
#: stderr instead of a traceback. Anything else is a bug and shows its traceback.
USER_ERRORS = (QuerentError, OSError)


def installed_version() -> str:
    """The version of the installed ``querent`` distribution (its metadata, not the source)."""
    try:
        return version("querent")
    except PackageNotFoundError:
        return "unknown (not installed; pip install -e .)"


def build_parser() -> argparse.ArgumentParser:
    """The ``querent`` argument parser with all subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO)")
    common.add_argument(
        "--debug", action="store_true", help="log everything and show tracebacks of input errors"
    )
    parser = argparse.ArgumentParser(
        prog="querent",
        description="Computational pathology pipeline: slides -> tissue -> patches -> models.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {installed_version()}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    slide_cli.add_commands(subparsers, common)
    data_cli.add_commands(subparsers, common)
    model_cli.add_commands(subparsers, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a subcommand; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    quiet_chatty_loggers()
    try:
        args.func(args)
    except USER_ERRORS as err:
        if args.debug:
            raise
        message = " ".join(str(err).split())
        print(f"querent {args.command}: error: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

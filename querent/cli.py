"""The ``querent`` command: every pipeline stage for one input, outside Snakemake."""

from __future__ import annotations

import argparse
import logging
import sys

from extractors import cli as slide_cli
from extractors.errors import WeightsError
from extractors.logs import quiet_chatty_loggers
from extractors.wsi.discovery import SlideDiscoveryError
from extractors.wsi.reader import SlideError
from querent.data import cli as data_cli

#: Errors caused by the input; they get one line on stderr instead of a traceback.
USER_ERRORS = (SlideError, SlideDiscoveryError, WeightsError, ValueError, OSError)


def build_parser() -> argparse.ArgumentParser:
    """The ``querent`` argument parser with all subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO)")
    parser = argparse.ArgumentParser(
        prog="querent",
        description="Computational pathology pipeline: slides -> tissue -> patches -> models.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    slide_cli.add_commands(subparsers, common)
    data_cli.add_commands(subparsers, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a subcommand; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    quiet_chatty_loggers()
    try:
        args.func(args)
    except USER_ERRORS as err:
        message = " ".join(str(err).split())
        print(f"querent {args.command}: error: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

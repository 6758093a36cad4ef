"""Data subcommands of ``querent``: grid, synthetic.

``grid`` writes the regions of coords or feature files; ``synthetic`` writes a feature-level
cohort whose label lives in the arrangement of patches.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from extractors.errors import SettingsError

#: Region side in lattice cells when ``--region-size`` is not given (as in config.yaml).
DEFAULT_REGION_SIZE = 4


def run_grid(args: argparse.Namespace) -> None:
    """Write the region grid of each coords or features file: DIR/{name}.h5 per input."""
    from querent.data.grid_files import write_slide_grid

    if args.region_size < 1:
        raise SettingsError(f"--region-size must be >= 1, got {args.region_size}")
    outputs = [args.out_dir / f"{source.stem}.h5" for source in args.sources]
    if len(set(outputs)) < len(outputs):
        names = sorted({out.name for out in outputs if outputs.count(out) > 1})
        raise SettingsError(
            f"several inputs are named {names}; their grids would overwrite each other"
        )
    for source, out in zip(args.sources, outputs, strict=True):
        if out.exists() and not args.overwrite:
            print(f"{out}\texists, skipped (use --overwrite to redo it)")
            continue
        summary = write_slide_grid(source, out, args.region_size)
        print(
            f"{out}\t{summary.n_patches} patches\t{summary.n_regions} regions\t"
            f"mean fill {summary.mean_fill:.2f}"
        )


def run_synthetic(args: argparse.Namespace) -> None:
    """Write a context cohort: OUT/features/{slide}.h5, OUT/cohort.csv and OUT/truth.csv.

    Train on it with ``features.dir: OUT/features`` and ``cohort.sheet: OUT/cohort.csv``.
    """
    from querent.data.context import ContextSettings
    from querent.data.synthetic import write_context_cohort

    names = [f.name for f in dataclasses.fields(ContextSettings)]
    try:
        settings = ContextSettings(**{name: getattr(args, name) for name in names})
    except ValueError as err:
        raise SettingsError(str(err)) from None
    sheet = write_context_cohort(args.out_dir, settings)
    print(
        f"{sheet}\t{settings.slides} slides of about {settings.patches} patches ({settings.kind})"
    )


def add_commands(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``grid`` and ``synthetic`` on the ``querent`` parser."""
    grid = subparsers.add_parser(
        "grid",
        parents=[common],
        help="group the patches of slides into regions (for inspection; models do it on load)",
        description=run_grid.__doc__,
    )
    grid.add_argument(
        "sources",
        type=Path,
        nargs="+",
        metavar="H5",
        help="coords files (querent tile) or features files (querent extract)",
    )
    grid.add_argument(
        "--region-size",
        type=int,
        default=DEFAULT_REGION_SIZE,
        help=f"lattice cells per region side (default: {DEFAULT_REGION_SIZE})",
    )
    grid.add_argument("-o", "--out-dir", type=Path, required=True, help="output folder")
    grid.add_argument("--overwrite", action="store_true", help="redo existing outputs")
    grid.set_defaults(func=run_grid)

    from querent.data.context import ContextSettings

    synthetic = subparsers.add_parser(
        "synthetic",
        parents=[common],
        help="write a cohort whose label lives in the arrangement of patches (benchmarks)",
        description=run_synthetic.__doc__,
    )
    synthetic.add_argument("out_dir", type=Path, metavar="OUT", help="output folder")
    for field in dataclasses.fields(ContextSettings):
        synthetic.add_argument(
            f"--{field.name}",
            type=type(field.default),
            default=field.default,
            choices=field.metadata.get("choices"),
            help=f"{field.metadata['help']} (default: {field.default})",
        )
    synthetic.set_defaults(func=run_synthetic)

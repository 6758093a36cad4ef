"""Slide-side subcommands of ``querent``: demo, segment, tile.

Each runs one stage for one slide outside Snakemake, with the same code the workflow uses.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from extractors.wsi import tiling, tissue
from extractors.wsi.discovery import check_slide_id, slide_id_from_path
from extractors.wsi.reader import Slide


def add_dataclass_options(parser: argparse.ArgumentParser, cls: type, title: str) -> None:
    """Add one ``--option`` per dataclass field, documented by the field's ``help`` metadata."""
    group = parser.add_argument_group(title)
    for field in dataclasses.fields(cls):
        flag = "--" + field.name.replace("_", "-")
        text = f"{field.metadata['help']} (default: {field.default})"
        if isinstance(field.default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            group.add_argument(
                flag,
                type=type(field.default),
                default=None,
                choices=field.metadata.get("choices"),
                metavar=None if "choices" in field.metadata else field.name.upper(),
                help=text,
            )


def options_from_args(args: argparse.Namespace, cls: type) -> dict:
    """The dataclass fields that were given on the command line."""
    names = {field.name for field in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def _add_slide_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("slide", type=Path, help="whole-slide image (any OpenSlide format)")
    parser.add_argument("-o", "--out-dir", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--slide-id", help="name of the outputs (default: file name without extension)"
    )
    parser.add_argument(
        "--mpp", type=float, help="level-0 µm/px of this slide; wins over the slide's metadata"
    )
    parser.add_argument(
        "--mpp-default",
        type=float,
        help="µm/px to assume only if the slide has no MPP metadata (logged as a warning)",
    )


def _add_tissue_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset",
        choices=sorted(tissue.PRESETS),
        default="resection",
        help="segmentation preset; the options below override single settings (default: resection)",
    )
    add_dataclass_options(parser, tissue.TissueParams, "tissue segmentation")


def _open(args: argparse.Namespace) -> Slide:
    slide_id = args.slide_id or slide_id_from_path(args.slide)
    check_slide_id(slide_id, str(args.slide))
    return Slide(args.slide, slide_id=slide_id, mpp_override=args.mpp, mpp_default=args.mpp_default)


def _tissue_params(args: argparse.Namespace) -> tissue.TissueParams:
    return tissue.tissue_params(args.preset, **options_from_args(args, tissue.TissueParams))


def run_segment(args: argparse.Namespace) -> None:
    """Segment one slide: DIR/{slide_id}.geojson and DIR/{slide_id}_qc.png."""
    with _open(args) as slide:
        out = args.out_dir / slide.slide_id
        result = tissue.segment_slide(
            slide, _tissue_params(args), f"{out}.geojson", f"{out}_qc.png"
        )
    area_mm2 = result.tissue_area_um2 / 1e6
    print(f"{out}.geojson\t{len(result.polygons)} tissue pieces\t{area_mm2:.3f} mm²")


def run_tile(args: argparse.Namespace) -> None:
    """Tile one slide: DIR/{slide_id}.h5, DIR/{slide_id}_qc.png (and the GeoJSON if segmented)."""
    params = tiling.TilingParams(**options_from_args(args, tiling.TilingParams))
    with _open(args) as slide:
        out = args.out_dir / slide.slide_id
        thumbnail = None
        if args.tissue is not None:
            polygons = tissue.read_geojson(args.tissue)
        else:
            result = tissue.segment_slide(
                slide, _tissue_params(args), f"{out}.geojson", f"{out}_qc.png"
            )
            polygons, thumbnail = result.polygons, result.thumbnail
        coords, _ = tiling.tile_slide(
            slide, polygons, params, f"{out}.h5", f"{out}_qc.png", thumbnail
        )
    print(f"{out}.h5\t{len(coords)} patches")


def run_demo(args: argparse.Namespace) -> None:
    """Write the synthetic demo cohort: DIR/slides/*.svs and DIR/cohort.csv."""
    from extractors.demo import write_demo_cohort

    sheet = write_demo_cohort(args.out_dir, n_slides=args.n_slides, seed=args.seed)
    print(f"{args.out_dir / 'cohort.csv'}\t{len(sheet)} slides")


def add_commands(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``demo``, ``segment`` and ``tile`` on the ``querent`` parser."""
    demo = subparsers.add_parser(
        "demo",
        parents=[common],
        help="write the synthetic demo cohort",
        description=run_demo.__doc__,
    )
    demo.add_argument("-o", "--out-dir", type=Path, required=True, help="output folder")
    demo.add_argument("--n-slides", type=int, default=16, help="number of slides (default: 16)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.set_defaults(func=run_demo)

    segment = subparsers.add_parser(
        "segment",
        parents=[common],
        help="segment the tissue of one slide",
        description=run_segment.__doc__,
    )
    _add_slide_arguments(segment)
    _add_tissue_arguments(segment)
    segment.set_defaults(func=run_segment)

    tile = subparsers.add_parser(
        "tile",
        parents=[common],
        help="tile one slide into patch coordinates",
        description=run_tile.__doc__,
    )
    _add_slide_arguments(tile)
    tile.add_argument(
        "--tissue",
        type=Path,
        help="tissue GeoJSON (ours or a QuPath export); segment the slide if not given",
    )
    add_dataclass_options(tile, tiling.TilingParams, "tiling")
    _add_tissue_arguments(tile)
    tile.set_defaults(func=run_tile)

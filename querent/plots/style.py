"""One look for every figure, and atomic saving.

Figures are built on :class:`matplotlib.figure.Figure` with an Agg canvas, never through pyplot,
so no global figure state exists and no interactive backend is ever chosen. A figure function
wraps its body in :func:`styled` so that every artist it creates picks up :data:`RC`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import ParamSpec, TypeVar

import matplotlib
from cycler import cycler
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from extractors.io import atomic_path

P = ParamSpec("P")
R = TypeVar("R")

#: Okabe & Ito's colour-blind-safe palette, ordered so the first colours contrast most on white.
OKABE_ITO: tuple[str, ...] = (
    "#0072B2",  # blue
    "#D55E00",  # vermillion
    "#009E73",  # bluish green
    "#CC79A7",  # reddish purple
    "#E69F00",  # orange
    "#56B4E9",  # sky blue
    "#000000",  # black
    "#F0E442",  # yellow (last: weak on white)
)

#: Resolution of PNG files.
PNG_DPI = 150
#: Resolution of the JPEG previews that the HTML report embeds instead of the full PNGs.
PREVIEW_DPI = 72

#: The rc settings every figure is drawn and saved under.
RC: dict[str, object] = {
    "axes.prop_cycle": cycler(color=list(OKABE_ITO)),
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
    "svg.fonttype": "none",
}

#: Formats ``save_figure`` knows; a path ending in one of them is treated as a stem.
FORMATS = ("png", "svg", "pdf")


@contextmanager
def plot_style() -> Iterator[None]:
    """Apply :data:`RC` for the duration of the block."""
    with matplotlib.rc_context(RC):
        yield


def styled(function: Callable[P, R]) -> Callable[P, R]:
    """Decorate a figure function so that everything it draws uses :data:`RC`."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with plot_style():
            return function(*args, **kwargs)

    return wrapper


def new_figure(width: float, height: float) -> Figure:
    """A blank figure of ``width`` x ``height`` inches, on an Agg canvas, constrained layout.

    Args:
        width: Width in inches.
        height: Height in inches.

    Returns:
        The figure; it belongs to no pyplot figure manager, so it is freed with its last reference.
    """
    with plot_style():
        figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_figure(
    figure: Figure, path: str | os.PathLike, formats: Sequence[str] = ("png", "svg")
) -> list[Path]:
    """Write ``figure`` once per format, each file atomically.

    Args:
        figure: The figure to write.
        path: The path without a suffix (``plots/roc``), or with one of :data:`FORMATS`
            (``plots/roc.png``), which is replaced by each format's suffix.
        formats: File formats, among :data:`FORMATS`. PNG is written at :data:`PNG_DPI`.

    Returns:
        The written paths, in the order of ``formats``.

    Raises:
        ValueError: An unknown format, or no format at all.
    """
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise ValueError(f"formats must be among {list(FORMATS)}, got {list(formats)}")
    path = Path(path)
    if path.suffix.lstrip(".").lower() in FORMATS:
        path = path.with_suffix("")
    written = []
    with plot_style():
        for fmt in formats:
            target = path.with_name(f"{path.name}.{fmt}")
            with atomic_path(target) as tmp:
                figure.savefig(tmp, format=fmt, dpi=PNG_DPI)
            written.append(target)
    return written


def save_preview(figure: Figure, path: str | os.PathLike) -> Path:
    """Write a small JPEG copy of ``figure`` (at :data:`PREVIEW_DPI`) to ``path``, atomically.

    The HTML report embeds every picture it shows; previews keep it light while the full-size
    PNGs stay beside them.
    """
    path = Path(path)
    with plot_style(), atomic_path(path) as tmp:
        figure.savefig(tmp, format="jpeg", dpi=PREVIEW_DPI, pil_kwargs={"quality": 85})
    return path

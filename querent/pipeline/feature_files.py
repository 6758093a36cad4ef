"""The feature files already on disk, checked while the run is planned.

A broken feature file (cut short by an interrupted copy, overwritten, NaN from a bad encoder) would
otherwise be found by the jobs that read it: its new date reruns every training fold of its
encoder, each one fails, and Snakemake deletes the ``model.pt`` files those folds had finished.
Checked here, it stops the run before any job, with the file named and the fix.

A file passes when HDF5 opens it, ``features`` is a numeric (N, D) array whose values are all
finite, ``coords`` is (N, 2) and D is the width of the other files of its encoder. Only final
names are looked at: every writer writes a ``*.tmp`` sibling and renames it, so a file that a
running job is still writing is never judged.

The finite check reads every value, once: the (N, D) shape of a good file is kept in a JSON
cache under ``.snakemake/querent/`` keyed on the file's path, size and modification time (ns),
so planning an unchanged project costs one ``stat`` per file. The cache sits with Snakemake's
other state of this folder rather than in ``results/``, which holds what a run produces and is
what people copy and share; losing it costs one more full read. Problems are never cached: a
broken file is read again on every plan until it is replaced.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

import h5py
import numpy as np

from extractors.io import atomic_path
from querent.engine.experiment import features_folder
from querent.pipeline.plan import Plan

#: Bytes of ``features`` read at a time by the finite check.
BLOCK_BYTES = 64 * 2**20


class BrokenFile(Exception):
    """What is wrong with one feature file (the message, without the path)."""


def inspect(path: Path) -> tuple[int, int]:
    """(N, D) of a feature file whose shapes fit and whose features are all finite.

    Raises:
        BrokenFile: The file cannot be read or does not fit; the message says how.
    """
    try:
        with h5py.File(path, "r") as h5:
            if "features" not in h5 or "coords" not in h5:
                raise BrokenFile("it has no `features` and `coords` datasets")
            features, coords = h5["features"], h5["coords"]
            if features.ndim != 2 or features.dtype.kind not in "fiu":
                raise BrokenFile(f"`features` is {features.dtype} {features.shape}, not (N, D)")
            n, width = features.shape
            if coords.shape != (n, 2):
                raise BrokenFile(f"`coords` has shape {coords.shape}, not ({n}, 2)")
            if features.dtype.kind == "f" and not _finite(features):
                raise BrokenFile("`features` holds NaN or infinite values")
    except (OSError, KeyError, RuntimeError) as err:
        raise BrokenFile(f"not a readable HDF5 file ({err})") from err
    return n, width


def _finite(dataset: h5py.Dataset) -> bool:
    """Whether every value of the (N, D) ``dataset`` is finite, read in blocks of rows."""
    n, width = dataset.shape
    rows = max(1, BLOCK_BYTES // max(1, width * dataset.dtype.itemsize))
    return all(np.isfinite(dataset[start : start + rows]).all() for start in range(0, n, rows))


def file_shapes(files: Iterable[Path], cache: Path) -> dict[Path, tuple[int, int] | str]:
    """(N, D) of each good file, or what is wrong with it; files that do not exist are left out.

    Args:
        files: The feature files.
        cache: JSON file of the good files' shapes by path, size and modification time;
            rewritten when it changes, with the files of this call only.
    """
    try:
        stored = json.loads(cache.read_text())
    except (OSError, ValueError):
        stored = {}
    kept, found = {}, {}
    for path in files:
        try:
            info = path.stat()
        except OSError:
            continue
        stamp = [info.st_size, info.st_mtime_ns]
        record = stored.get(str(path))
        if record is not None and record[:2] == stamp:
            found[path] = (record[2], record[3])
        else:
            try:
                found[path] = inspect(path)
            except BrokenFile as err:
                found[path] = str(err)
                continue
        kept[str(path)] = [*stamp, *found[path]]
    if kept != stored:
        with atomic_path(cache) as tmp:
            tmp.write_text(json.dumps(kept))
    return found


def feature_file_problems(plan: Plan, config: Mapping, extracted: str, cache: Path) -> list[str]:
    """One line per broken feature file the planned run would read, each with its fix.

    The files checked: with ``features.dir``, those of the slides that train; else the files
    that earlier runs extracted for the slides of this run, every encoder. A file without
    patches is a problem only for a slide that trains (a slide without tissue has one).

    Args:
        plan: The plan of the run.
        config: The workflow's config.
        extracted: Folder the extraction writes, with ``{encoder}``.
        cache: The cache file of :func:`file_shapes`.
    """
    own = plan.inputs.own_features
    slides = plan.train_slides if own else sorted(plan.slides)
    files = {
        features_folder(config, encoder, extracted) / f"{slide}.h5": (encoder, slide)
        for encoder in plan.encoders
        for slide in slides
    }
    shapes = file_shapes(files, cache)
    good = Counter(
        (files[path][0], shape[1]) for path, shape in shapes.items() if not isinstance(shape, str)
    )
    width: dict[str, int] = {}  # per encoder, the width of most of its files
    for (encoder, d), _ in good.most_common():
        width.setdefault(encoder, d)
    problems = []
    for path, shape in shapes.items():
        encoder, slide = files[path]
        fix = _remedy(plan, config, path, slide)
        if isinstance(shape, str):
            wrong = shape
        elif shape[1] != width[encoder]:
            wrong = f"its features are {shape[1]} wide, {encoder}'s others {width[encoder]}"
        elif shape[0] == 0 and slide in plan.train_slides:
            wrong = f"no patches (no tissue was found in slide {slide})"
            fix = "drop the slide from the cohort sheet, or check its tissue mask."
        else:
            continue
        problems.append(f"{path}: {wrong}. Fix: {fix}")
    return problems


def _remedy(plan: Plan, config: Mapping, path: Path, slide: str) -> str:
    """What to do about the broken feature file ``path`` of ``slide``."""
    if plan.inputs.own_features:
        return (
            f"export slide {slide}'s features again from the tool that wrote them (or remove the "
            "file and its sheet row)."
        )
    if config["features"]["slides_per_job"] == 1:
        return "delete it and rerun: that slide is re-extracted."
    batch = plan.slide_batch[slide]
    staged, manifest = path.parent / "staged" / batch / path.name, path.parent / "batches"
    return (
        f"delete it, {staged} and {manifest / f'{batch}.tsv'}, and rerun: that slide is "
        "re-extracted."
    )

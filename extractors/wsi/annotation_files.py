"""The folder of annotation files (``slides.annotations``), checked before any job runs.

Each ``{slide_id}.geojson`` must name a slide of the input, read as QuPath GeoJSON, hold a
polygon and give its slide a region under the settings
(:func:`~extractors.wsi.annotations.file_problems`); every class that
``slides.annotation_include`` or ``_exclude`` names must occur in some file. What a readable
file holds (its classes) is kept in a JSON cache keyed on its path, size and modification time
(ns), so planning an unchanged project reads no file twice; a file that cannot be read is read
again on every plan until it is replaced.
"""

from __future__ import annotations

import difflib
import json
from collections import Counter
from collections.abc import Collection, Iterable
from pathlib import Path

from extractors.errors import FileFormatError
from extractors.io import atomic_path
from extractors.wsi.annotations import (
    FIX_EXPORT,
    AnnotationSettings,
    class_list,
    file_problems,
    read_annotations,
)


def summaries(files: Iterable[Path], cache: Path | None) -> dict[Path, tuple[dict, int] | str]:
    """Per file, its (classes with counts, other objects), or why it cannot be read.

    Args:
        files: Annotation files.
        cache: JSON file of the readable files' summaries by path, size and modification time
            (ns), rewritten when it changes; None: read every file.
    """
    try:
        stored = json.loads(cache.read_text()) if cache else {}
    except (OSError, ValueError):
        stored = {}
    kept, found = {}, {}
    for path in files:
        info = path.stat()
        stamp = [info.st_size, info.st_mtime_ns]
        record = stored.get(str(path))
        if record is not None and record[:2] == stamp:
            found[path] = (record[2], record[3])
        else:
            try:
                annotations, other = read_annotations(path)
            except FileFormatError as err:
                found[path] = str(err)
                continue
            found[path] = (dict(Counter(a.name for a in annotations)), other)
        kept[str(path)] = [*stamp, *found[path]]
    if cache and kept != stored:
        with atomic_path(cache) as tmp:
            tmp.write_text(json.dumps(kept))
    return found


def _unknown_names(key: str, names: Iterable[str], known: Collection[str]) -> str | None:
    """A problem naming the classes of ``key`` that no file has (None: every one is found)."""
    unknown = sorted(set(names) - set(known))
    if not unknown:
        return None
    close = {n: difflib.get_close_matches(n, list(known), 1, 0.6) for n in unknown}
    hints = "".join(f" ({n!r}: did you mean {c[0]!r}?)" for n, c in close.items() if c)
    return (
        f"slides.{key} names classes that no file in slides.annotations has: "
        f"{class_list(unknown)}{hints}; classes found: {class_list(known) or 'none'}. Fix: "
        "use QuPath's class names (case matters), or drop them."
    )


def plan_annotations(
    folder: str | Path,
    settings: AnnotationSettings,
    slide_ids: Collection[str],
    cache: Path | None = None,
) -> tuple[dict[str, Path], list[str], list[str]]:
    """The annotation file of each slide that has one, checked before any job runs.

    Args:
        folder: ``slides.annotations``.
        settings: How annotations apply.
        slide_ids: Every slide of the input.
        cache: The cache file of :func:`summaries`.

    Returns:
        (slide id -> its file, problems, notes); each problem names the file, the key and the fix.
    """
    root = Path(folder)
    if not root.is_dir():
        problem = (
            f"slides.annotations {root} is not a folder. Fix: the folder of your "
            '{slide_id}.geojson files exported from QuPath, or "" for none.'
        )
        return {}, [problem], []
    files = {path.stem: path for path in sorted(root.glob("*.geojson"))}
    if not files:
        problem = (
            f"slides.annotations {root} holds no .geojson file. Fix: {FIX_EXPORT} into it as "
            '{slide_id}.geojson, or set slides.annotations: "".'
        )
        return {}, [problem], []
    problems, notes = [], []
    strangers = sorted(set(files) - set(slide_ids))
    if strangers and slide_ids:
        hints = "".join(
            f" ({name}.geojson: did you mean {close[0]}.geojson?)"
            for name in strangers
            if (close := difflib.get_close_matches(name, list(slide_ids), 1, 0.6))
        )
        problems.append(
            f"slides.annotations: {', '.join(f'{name}.geojson' for name in strangers)} in "
            f"{root} name no slide of the input{hints}. Fix: name each file after its slide "
            f"({{slide_id}}.geojson; ids look like {', '.join(sorted(slide_ids)[:3])}), or move "
            "it out of the folder."
        )
    files = {slide: path for slide, path in files.items() if slide in slide_ids}
    classes: set[str] = set()
    complete = True  # every file read and holding polygons: its classes are all known
    for path, summary in summaries(files.values(), cache).items():
        if isinstance(summary, str):
            problems.append(summary)
            complete = False
        else:
            classes |= set(summary[0])
            complete &= bool(summary[0])
            problems += file_problems(path, *summary, settings)
    if complete:
        for key, names in (
            ("annotation_include", settings.include),
            ("annotation_exclude", settings.exclude),
        ):
            problems += filter(None, [_unknown_names(key, names, classes)])
    missing = sorted(set(slide_ids) - set(files))
    if settings.mode == "replace" and missing and files:
        notes.append(
            f"slides.annotation_mode is replace, but {len(missing)} slides have no file in "
            f"slides.annotations and keep their automatic tissue mask: "
            f"{', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}."
        )
    return files, problems, notes

"""An experiment: cohort, feature files, splits and model runs, from the config's sections.

The Snakemake adapters (from their rule's params) and the CLI (from ``config.yaml``) build the
same :class:`Experiment` from the same sections, so a model trained by ``querent train`` equals
the workflow's. Where files are written is said by the rules and the CLI's defaults, not here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from extractors.errors import CohortError, SettingsError
from querent.data.case_bags import BagFiles, case_bags
from querent.data.cohort import Cohort, CohortSettings, format_items, read_cohort
from querent.data.splits import SplitSettings, fold_slides, read_splits
from querent.engine.runs import ModelRun

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Experiment:
    """Everything a training or evaluation job needs besides the model run.

    Attributes:
        cohort: The bags the models train on: the sheet's slides that have features, or with
            ``cohort.bag: case`` one row per case, its ``slide_id`` the case id
            (:func:`~querent.data.case_bags.case_bags`).
        files: Bag id -> feature file; a case bag's: its slides' files (a tuple).
        encoder: Encoder name (paths, checkpoints).
        splits: Split settings.
        runs: Model runs by name.
        sheet: With case bags, the sheet's slides that have features; None: ``cohort``.
    """

    cohort: Cohort
    files: dict[str, BagFiles]
    encoder: str
    splits: SplitSettings
    runs: dict[str, ModelRun]
    sheet: Cohort | None = None

    @property
    def slides(self) -> Cohort:
        """The sheet's slides that have features (splits are made and read on them)."""
        return self.cohort if self.sheet is None else self.sheet

    def fold(self, splits_path: str | Path, fold: int) -> tuple[list[str], list[str], list[str]]:
        """(train, validation, evaluation) bag ids of ``fold``: slides, or with case bags cases."""
        table = read_splits(splits_path, self.slides)
        ids = fold_slides(
            table, self.slides, fold, val_fraction=self.splits.val_fraction, seed=self.splits.seed
        )
        if self.sheet is None:
            return ids
        case_of = self.sheet.table.set_index("slide_id")["case_id"]
        train, val, evaluation = (sorted(set(case_of.loc[part])) for part in ids)
        return train, val, evaluation


def cohort_settings(config: Mapping, demo_sheet: str | Path) -> CohortSettings:
    """The ``cohort`` section, with ``demo_sheet`` (the demo's cohort sheet) when none is set."""
    section = dict(config.get("cohort", {}))
    if not section.get("sheet"):
        section["sheet"] = str(demo_sheet)
    return CohortSettings(**section)


def config_encoders(config: Mapping) -> list[str]:
    """The encoders of ``features.encoder`` (one name or a list), in the config's order."""
    names = config["features"]["encoder"]
    return [names] if isinstance(names, str) else list(names)


def pick_encoder(config: Mapping, encoder: str | None = None) -> str:
    """``encoder``, checked against the config's; None: the config's only encoder.

    Raises:
        SettingsError: ``encoder`` is not in the config, or None while the config has several.
    """
    names = config_encoders(config)
    if encoder is None and len(names) == 1:
        return names[0]
    if encoder not in names:
        raise SettingsError(
            f"features.encoder lists {names}: name one of them (CLI: --encoder NAME)"
            + ("" if encoder is None else f", not {encoder!r}")
            + "."
        )
    return encoder


def features_folder(config: Mapping, encoder: str, extracted: str) -> Path:
    """Where ``encoder``'s feature files are: ``features.dir``, else ``extracted``.

    Args:
        config: The config (its ``features`` section).
        encoder: The encoder.
        extracted: Folder the extraction writes, with ``{encoder}``.
    """
    return Path(config["features"].get("dir") or extracted.format(encoder=encoder))


def match_features(
    cohort: Cohort,
    folder: Path,
    on_missing: str,
    available: set[str] | None = None,
    slides_from: str = "",
) -> tuple[Cohort, dict[str, Path]]:
    """Pair the cohort's slides with ``folder``/{slide_id}.h5.

    Args:
        cohort: The checked cohort sheet.
        folder: Folder of feature files.
        on_missing: ``error`` or ``skip`` (leave such slides out, listed in the log).
        available: Slide ids whose files will exist (the workflow's slides, before extraction);
            None: the files in ``folder`` now.
        slides_from: Where the slides of ``available`` come from (``slides.dir /data``), to
            name slide files rather than feature files in the messages.

    Raises:
        CohortError: With ``error``: sheet slides without a file, or files without a sheet row
            (both listed), or no slide left at all.
    """
    folder = Path(folder)
    if available is None:
        available = {path.stem for path in folder.glob("*.h5")} if folder.is_dir() else set()
    sheet = set(cohort.slide_ids)
    no_file, no_row = sorted(sheet - available), sorted(available - sheet)
    problems = []
    if no_file and slides_from:
        problems.append(
            f"sheet slides with no slide file in {slides_from}: {format_items(no_file)}"
        )
    elif no_file:
        problems.append(f"sheet slides without features in {folder}: {format_items(no_file)}")
    if no_row and slides_from:
        problems.append(f"slides in {slides_from} without a sheet row: {format_items(no_row)}")
    elif no_row:
        problems.append(f"feature files without a sheet row: {format_items(no_row)}")
    if problems and on_missing == "error":
        raise CohortError(
            f"{cohort.source}: " + "; ".join(problems) + ". Fix the sheet or the "
            f"{'slides' if slides_from else 'feature folder'}, or set cohort.on_missing: skip "
            "to leave them out."
        )
    for problem in problems:
        logger.warning("%s: skipped %s", cohort.source, problem)
    kept = sorted(sheet & available)
    if not kept:
        where = f"a slide file in {slides_from}" if slides_from else f"features in {folder}"
        raise CohortError(f"{cohort.source}: no slide of the sheet has {where}")
    subset = cohort.subset(kept) if no_file else cohort
    return subset, {slide_id: folder / f"{slide_id}.h5" for slide_id in kept}


def load_experiment(
    cohort: CohortSettings,
    splits: SplitSettings,
    folder: Path,
    *,
    encoder: str,
    runs: dict[str, ModelRun],
    available: set[str] | None = None,
) -> Experiment:
    """The cohort sheet read and paired with the feature files of ``folder``.

    Args:
        cohort: The cohort settings (sheet, task, columns, bags of slides or of cases).
        splits: The split settings.
        folder: Folder of the encoder's feature files (``{slide_id}.h5``).
        encoder: The encoder whose features these are.
        runs: Model runs by name.
        available: Slide ids whose files will exist; None: the files in ``folder`` now.
    """
    table, files = match_features(
        read_cohort(cohort.sheet, cohort), folder, cohort.on_missing, available
    )
    if cohort.bag == "slide":
        return Experiment(cohort=table, files=files, encoder=encoder, splits=splits, runs=runs)
    bags, bag_files = case_bags(table, files)
    logger.info("%d case bags of %d slides", len(bags.table), len(table.table))
    return Experiment(bags, bag_files, encoder, splits, runs, sheet=table)


def job_experiment(
    cohort: Mapping,
    splits: Mapping,
    features: Sequence[str | Path],
    *,
    encoder: str,
    runs: dict[str, ModelRun] | None = None,
) -> Experiment:
    """The experiment of one workflow job, from its rule's params and declared feature files.

    Args:
        cohort: The ``cohort`` section, its sheet resolved (the demo's when empty).
        splits: The ``splits`` section.
        features: The job's feature files (one folder, ``{slide_id}.h5``).
        encoder: The encoder whose features these are.
        runs: The job's model runs by name (none for splits and evaluation).
    """
    files = [Path(path) for path in features]
    return load_experiment(
        CohortSettings(**cohort),
        SplitSettings(**splits),
        files[0].parent,
        encoder=encoder,
        runs=runs or {},
        available={path.stem for path in files},
    )

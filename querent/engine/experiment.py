"""An experiment from the config: cohort, feature files, splits and model runs.

The Snakemake adapters and the CLI build the same :class:`Experiment` from the same config
mapping (``config.yaml``), so a model trained by ``querent train`` equals the workflow's.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from extractors.errors import CohortError, SettingsError
from querent.data.cohort import Cohort, CohortSettings, format_items, read_cohort
from querent.data.splits import SplitSettings, fold_slides, make_splits, read_splits
from querent.engine.runs import ModelRun, model_runs

logger = logging.getLogger(__name__)

#: The demo's cohort sheet, the default when ``cohort.sheet`` is empty.
DEMO_SHEET = "resources/demo/cohort.csv"


@dataclass(frozen=True)
class Experiment:
    """Everything a training or evaluation job needs besides the model run.

    Attributes:
        cohort: The sheet's slides that have features.
        files: Slide id -> feature file.
        encoder: Encoder name (paths, checkpoints).
        splits: Split settings.
        runs: Model runs by name.
    """

    cohort: Cohort
    files: dict[str, Path]
    encoder: str
    splits: SplitSettings
    runs: dict[str, ModelRun]

    def fold(self, splits_path: str | Path, fold: int) -> tuple[list[str], list[str], list[str]]:
        """(train, validation, evaluation) slide ids of ``fold``."""
        table = read_splits(splits_path, self.cohort)
        return fold_slides(
            table, self.cohort, fold, val_fraction=self.splits.val_fraction, seed=self.splits.seed
        )


def cohort_settings(config: Mapping) -> CohortSettings:
    """The ``cohort`` section, with the demo sheet when none is set."""
    section = dict(config.get("cohort", {}))
    if not section.get("sheet"):
        section["sheet"] = DEMO_SHEET
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


def features_folder(config: Mapping, encoder: str) -> Path:
    """Where ``encoder``'s feature files are: ``features.dir``, else the extraction output."""
    return Path(config["features"].get("dir") or f"results/features/{encoder}")


def match_features(
    cohort: Cohort, folder: Path, on_missing: str, available: set[str] | None = None
) -> tuple[Cohort, dict[str, Path]]:
    """Pair the cohort's slides with ``folder``/{slide_id}.h5.

    Args:
        cohort: The checked cohort sheet.
        folder: Folder of feature files.
        on_missing: ``error`` or ``skip`` (leave such slides out, listed in the log).
        available: Slide ids whose files will exist (the workflow's slides, before extraction);
            None: the files in ``folder`` now.

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
    if no_file:
        problems.append(f"sheet slides without features in {folder}: {format_items(no_file)}")
    if no_row:
        problems.append(f"feature files without a sheet row: {format_items(no_row)}")
    if problems and on_missing == "error":
        raise CohortError(
            f"{cohort.source}: " + "; ".join(problems) + ". Fix the sheet or the feature "
            "folder, or set cohort.on_missing: skip to leave them out."
        )
    for problem in problems:
        logger.warning("%s: skipped %s", cohort.source, problem)
    kept = sorted(sheet & available)
    if not kept:
        raise CohortError(f"{cohort.source}: no slide of the sheet has features in {folder}")
    subset = cohort.subset(kept) if no_file else cohort
    return subset, {slide_id: folder / f"{slide_id}.h5" for slide_id in kept}


def load_experiment(
    config: Mapping, encoder: str | None = None, available: set[str] | None = None
) -> Experiment:
    """The experiment the config describes, on ``encoder``'s features (see :func:`pick_encoder`).

    Paths are relative to the working directory.
    """
    encoder = pick_encoder(config, encoder)
    settings = cohort_settings(config)
    cohort = read_cohort(settings.sheet, settings)
    folder = features_folder(config, encoder)
    cohort, files = match_features(cohort, folder, settings.on_missing, available)
    return Experiment(
        cohort=cohort,
        files=files,
        encoder=encoder,
        splits=SplitSettings(**config.get("splits", {})),
        runs=model_runs(config.get("models", {}), config.get("training", {})),
    )


def splits_table(experiment: Experiment):
    """The splits: the user's file (checked) or new folds."""
    if experiment.splits.file:
        return read_splits(experiment.splits.file, experiment.cohort)
    return make_splits(experiment.cohort, experiment.splits)

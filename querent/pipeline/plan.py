"""The workflow's plan: the config and its inputs checked into what the rules run on.

Runs while Snakemake builds the DAG, before any job. Each step takes the config (and what the
steps before it found) and returns values; a user's mistake becomes one line of
:attr:`Findings.problems`, so every problem is reported at once, and a remark that stops
nothing becomes one line of :attr:`Findings.notes`. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
from jsonschema import Draft202012Validator

from extractors.demo import DEMO_MPP, demo_cohort
from extractors.errors import QuerentError
from extractors.stain import feature_sets, split_feature_set, stain_findings, stain_methods
from extractors.wsi.annotation_files import plan_annotations
from extractors.wsi.annotations import AnnotationSettings
from extractors.wsi.discovery import (
    SlideEntry,
    discover_slides,
    metadata_mpps,
    read_slide_sheet,
)
from extractors.wsi.reader import MPP_TOLERANCE
from extractors.wsi.tiling import TilingParams
from querent.data.cohort import Cohort, cohort_from_table, format_items, read_cohort
from querent.data.splits import SplitSettings, check_splits, read_splits
from querent.engine.experiment import (
    cohort_settings,
    config_encoders,
    features_folder,
    match_features,
)
from querent.engine.runs import model_run
from querent.pipeline.storage import KeyLister, bucket_slides, is_bucket_url

T = TypeVar("T")


@dataclass
class Findings:
    """What planning found: problems stop the run before any job; notes are said and pass."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def check(self, step: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """``step(*args, **kwargs)``; a user error becomes a problem and the result None."""
        try:
            return step(*args, **kwargs)
        except QuerentError as err:
            self.problems.append(str(err))
            return None

    def message(self, source: str = "config.yaml") -> str | None:
        """One message listing every problem (None when there is none)."""
        if len(self.problems) == 1:
            return f"{source}: {self.problems[0]}"
        if not self.problems:
            return None
        lines = "\n".join(f"  {line}" for problem in self.problems for line in problem.splitlines())
        return (
            f"{source}: {len(self.problems)} problems; nothing was run. Fix them all, then run "
            f"the same command again:\n{lines}"
        )


def table_problems(table: pd.DataFrame, schema: Mapping, source: str) -> list[str]:
    """Rows of ``table`` that break a one-row ``schema`` (sheet line numbers, header = 1)."""
    validator = Draft202012Validator(schema)
    return [
        f"{source} line {line}: {error.message}"
        for line, record in enumerate(table.to_dict("records"), start=2)
        for error in validator.iter_errors(record)
    ]


# --- which input: the demo, your slides or your feature files --------------------------------


@dataclass(frozen=True)
class Inputs:
    """Where the run's data comes from.

    Attributes:
        own_features: ``features.dir``: a lab's own feature files (no slides, no extraction).
        own_slides: ``slides.dir`` or ``slides.sheet``.
        demo: The synthetic demo cohort (switched on, or ``auto`` with no input of your own).
    """

    own_features: bool
    own_slides: bool
    demo: bool


def choose_inputs(config: Mapping, findings: Findings) -> Inputs:
    """The run's input, from ``demo``, ``slides`` and ``features``; contradictions are problems."""
    slides, features = config["slides"], config["features"]
    own_features = bool(features["dir"])
    own_slides = bool(slides["dir"] or slides["sheet"])
    demo = config["demo"]["enabled"]
    if demo is True and own_slides:
        which = "slides.dir" if slides["dir"] else "slides.sheet"
        findings.problems.append(
            f"demo.enabled is true and {which} is set: the demo would replace your slides. Fix: "
            f"set demo.enabled: auto (or false) to run your slides, or empty {which} to run the "
            "demo."
        )
    if own_features and own_slides:
        findings.problems.append(
            "features.dir and slides.dir/slides.sheet are both set: with your own feature files "
            "no slide is read. Fix: empty one of them."
        )
    if own_features and demo is True:
        findings.notes.append(
            "demo.enabled: true is ignored: features.dir is set (say demo.enabled: auto)."
        )
    if own_features:
        exports = [key for key in ("export_stamp", "export_clam") if features[key]]
        if exports:
            findings.problems.append(
                f"features.{' and features.'.join(exports)} export this workflow's own features,"
                " but features.dir is set (no extraction runs). Fix: set them to false, or empty "
                "features.dir."
            )
    return Inputs(
        own_features=own_features,
        own_slides=own_slides,
        demo=not own_features and (demo is True or (demo == "auto" and not own_slides)),
    )


# --- the slides -------------------------------------------------------------------------------


def load_slides(
    config: Mapping,
    inputs: Inputs,
    demo_slides: dict[str, Path],
    findings: Findings,
    list_bucket: KeyLister | None = None,
) -> dict[str, SlideEntry]:
    """Slide id -> SlideEntry (``mpp``: the sheet's override), from the demo, a folder or a sheet.

    Args:
        config: The workflow's config.
        inputs: The run's input.
        demo_slides: The demo's slide files by id (where the demo rules write them).
        findings: Where problems go.
        list_bucket: Lists a bucket's keys, for ``slides.dir: s3://...`` (None: no S3 plugin).
    """
    if inputs.own_features:
        return {}
    if inputs.demo:
        return {slide: SlideEntry(slide, path) for slide, path in demo_slides.items()}
    folder, sheet = config["slides"]["dir"], config["slides"]["sheet"]
    if bool(folder) == bool(sheet):
        findings.problems.append(
            "set exactly one of slides.dir and slides.sheet (or demo.enabled: auto with both "
            "empty for the demo cohort)."
        )
        return {}
    if sheet:
        entries = findings.check(read_slide_sheet, sheet)
    elif is_bucket_url(folder):  # each entry's path is the object's URL
        entries = findings.check(bucket_slides, folder, list_bucket)
    else:
        entries = findings.check(discover_slides, folder)
    return {entry.slide_id: entry for entry in entries or ()}


def apply_per_slide(
    config: Mapping, slides: dict[str, SlideEntry], inputs: Inputs, findings: Findings
) -> dict[str, SlideEntry]:
    """``slides`` with ``slides.per_slide``'s MPP overrides; unknown or twice-set slides fail."""
    slides = dict(slides)
    for section in ("slides", "tissue"):
        unknown = sorted(set(config[section]["per_slide"]) - set(slides))
        if unknown and (slides or inputs.demo or inputs.own_features):
            findings.problems.append(
                f"{section}.per_slide names slides that are not in the input: "
                f"{format_items(unknown)}; fix the slide ids (known ids look like "
                f"{format_items(sorted(slides)[:3])})."
            )
    for slide, settings in config["slides"]["per_slide"].items():
        if slide not in slides or settings.get("mpp") is None:
            continue
        entry = slides[slide]
        if entry.mpp is not None and entry.mpp != settings["mpp"]:
            findings.problems.append(
                f"slide {slide!r} has mpp {entry.mpp} in the slide sheet and "
                f"{settings['mpp']} in slides.per_slide; keep one of them."
            )
            continue
        slides[slide] = SlideEntry(entry.slide_id, entry.path, float(settings["mpp"]))
    return slides


def metadata_mpp(
    slides: Mapping[str, SlideEntry], inputs: Inputs, cache: Path
) -> dict[str, float | None]:
    """Slide id -> µm/px its own metadata gives (None: none), for the slides without override.

    Slides that OpenSlide cannot open are left out: their jobs say what is wrong. The demo's
    slides, which may not exist yet, are made at ``DEMO_MPP``. The metadata is read from each
    slide's header (milliseconds) and kept in ``cache`` while the file is unchanged. Slides in
    a bucket are not read before their jobs fetch them: they are left out too.
    """
    probe = {
        slide: entry.path
        for slide, entry in slides.items()
        if entry.mpp is None and not is_bucket_url(entry.path)
    }
    if inputs.demo:
        return dict.fromkeys(probe, DEMO_MPP)
    return metadata_mpps(probe, cache=cache)


def level0_mpps(
    config: Mapping, slides: Mapping[str, SlideEntry], metadata: Mapping[str, float | None]
) -> dict[str, float | None]:
    """Slide id -> level-0 µm/px as the reader will resolve it (None: no MPP anywhere)."""
    default = config["slides"]["mpp_default"]
    mpps = {slide: entry.mpp for slide, entry in slides.items() if entry.mpp is not None}
    mpps.update({slide: default if mpp is None else mpp for slide, mpp in metadata.items()})
    return mpps


def tileable(
    config: Mapping,
    slides: Mapping[str, SlideEntry],
    mpps: Mapping[str, float | None],
    findings: Findings,
) -> dict[str, SlideEntry]:
    """The slides that can be tiled at ``tiling.target_mpp``; the others are left out, noted.

    A target finer than a slide's level 0 would invent resolution, so that slide's tile job
    could only fail, and Snakemake deletes a job's old output before it runs: leaving it out
    keeps its coords and features of the last config, so reverting re-runs nothing.
    """
    target = config["tiling"]["target_mpp"]
    finer = {
        slide: mpp
        for slide, mpp in mpps.items()
        if mpp is not None and target < mpp * (1 - MPP_TOLERANCE)
    }
    if finer and len(finer) == len(slides):
        findings.problems.append(
            f"tiling.target_mpp {target} is finer than level 0 of every slide (coarsest "
            f"{max(finer.values())} µm/px): patches would invent resolution. Fix: set "
            f"tiling.target_mpp to at least {max(finer.values())}."
        )
        return dict(slides)
    for slide, mpp in sorted(finer.items()):
        findings.notes.append(
            f"slide {slide!r} is left out: tiling.target_mpp {target} is finer than its level 0 "
            f"({mpp} µm/px); its files of earlier runs are kept. Fix: tiling.target_mpp >= {mpp}, "
            "or remove the slide from the input."
        )
    return {slide: entry for slide, entry in slides.items() if slide not in finer}


def check_annotations(
    config: Mapping,
    inputs: Inputs,
    slides: Mapping[str, SlideEntry],
    cache: Path,
    findings: Findings,
) -> dict[str, Path]:
    """Slide id -> its annotation file (``slides.annotations``), each file checked."""
    section = config["slides"]
    if not section["annotations"]:
        if section["annotation_include"] or section["annotation_exclude"]:
            findings.notes.append(
                "slides.annotation_include/_exclude do nothing while slides.annotations is empty."
            )
        return {}
    if inputs.own_features:
        findings.problems.append(
            "slides.annotations is set, but features.dir is set too: no slide is segmented. "
            "Fix: empty one of them."
        )
        return {}
    settings = findings.check(AnnotationSettings.from_config, section)
    if settings is None:
        return {}
    files, problems, notes = plan_annotations(section["annotations"], settings, slides, cache)
    findings.problems += problems
    findings.notes += notes
    return files


def slide_batches(slides: Mapping[str, SlideEntry], per_job: int) -> dict[str, list[str]]:
    """Batch name (``b0000``, ...) -> slide ids of one feature extraction job, in id order."""
    ordered = sorted(slides)
    return {
        f"b{start // per_job:04d}": ordered[start : start + per_job]
        for start in range(0, len(ordered), per_job)
    }


# --- settings that need no slide ------------------------------------------------------------


def check_settings(config: Mapping, encoders: list[str], inputs: Inputs, findings: Findings):
    """Cross-field settings that need no slide: tiling geometry, encoders, cohort task."""
    findings.check(TilingParams, **config["tiling"])
    features = config["features"]
    if inputs.own_features and len(encoders) > 1:
        findings.problems.append(
            f"features.dir holds one set of feature files, but features.encoder lists "
            f"{encoders}. Fix: name the one encoder whose features are in {features['dir']}."
        )
    weights = features["checkpoint"]
    if isinstance(weights, str) and weights and len(encoders) > 1:
        findings.problems.append(
            f"features.checkpoint is one file but features.encoder lists {encoders}. Fix: give "
            "it per encoder, e.g. checkpoint: {uni_v2: /path/to/uni_v2.bin}."
        )
    if isinstance(weights, dict) and set(weights) - set(encoders):
        findings.problems.append(
            f"features.checkpoint names encoders that features.encoder does not list: "
            f"{format_items(sorted(set(weights) - set(encoders)))}. Fix the names."
        )
    problems, notes = stain_findings(features, own_features=inputs.own_features)
    findings.problems += problems
    findings.notes += notes
    cohort = config["cohort"]
    if cohort["task"] == "survival" and cohort["classes"] is not None:
        findings.problems.append(
            "cohort.classes is set but cohort.task is survival (classes order labels of a "
            "classification). Fix: set cohort.classes: null, or cohort.task: classification."
        )


# --- the cohort, its splits and the model runs ------------------------------------------------


#: Said at the start and the end of a run without a cohort sheet (the demo has its own).
NO_COHORT_SHEET = (
    "cohort.sheet is not set, so this run stops after the features: no model trains. To "
    "train, set cohort.sheet: path/to/cohort.csv (columns slide_id, case_id and label, or time "
    "and event for survival)."
)


def check_feature_dir(config: Mapping, inputs: Inputs, findings: Findings) -> bool:
    """Whether ``features.dir`` may hold the feature files; a CLAM root is a problem.

    CLAM writes ``h5_files/`` (features and coordinates) and ``pt_files/`` (features only) into
    the folder it is given; the files to read are those of ``h5_files/``.
    """
    folder = Path(config["features"]["dir"])
    if not inputs.own_features or any(folder.glob("*.h5")) or not (folder / "h5_files").is_dir():
        return True
    findings.problems.append(
        f"features.dir {folder} holds no .h5 file but CLAM's h5_files/ folder: its feature "
        f"files, with their coordinates, are in there. Fix: features.dir: {folder / 'h5_files'}"
    )
    return False


@dataclass(frozen=True)
class CohortInputs:
    """Where the cohort's files are, as the rules write them.

    Attributes:
        demo_sheet: The demo's cohort sheet (the default of ``cohort.sheet``).
        features: Folder of one encoder's feature files, with ``{encoder}``; ``features.dir``
            replaces it.
        schema: The one-row schema of the cohort sheet.
    """

    demo_sheet: str
    features: str
    schema: Mapping


def check_cohort(
    config: Mapping,
    inputs: Inputs,
    where: CohortInputs,
    slides: Mapping[str, SlideEntry],
    demo_table: pd.DataFrame,
    encoders: list[str],
    findings: Findings,
) -> list[str]:
    """Slide ids that train, sorted; every cohort and split problem goes to ``findings``.

    Without a cohort sheet (and not the demo) no slide trains: the workflow stops at features,
    and a note says so.
    """
    features_found = check_feature_dir(config, inputs, findings)
    settings = findings.check(cohort_settings, config, where.demo_sheet)
    splits = findings.check(SplitSettings, **config["splits"])
    if settings is None or splits is None:
        return []
    cohort: Cohort | None
    if str(settings.sheet) == where.demo_sheet and not inputs.own_features:
        if not inputs.demo:
            findings.notes.append(NO_COHORT_SHEET)
            return []
        # the demo sheet is written by a job; check the same table in memory
        cohort = findings.check(
            cohort_from_table, demo_table.astype(str), settings, Path(where.demo_sheet)
        )
        files = dict.fromkeys(cohort.slide_ids) if cohort else {}
    else:
        cohort = findings.check(read_cohort, settings.sheet, settings)
        if cohort is None:
            return []
        findings.problems.extend(
            table_problems(cohort.table[["slide_id", "case_id"]], where.schema, settings.sheet)
        )
        if not features_found:
            return []
        folder = features_folder(config, encoders[0], where.features)
        if inputs.own_features:
            matched = findings.check(match_features, cohort, folder, settings.on_missing)
        else:
            source = "dir" if config["slides"]["dir"] else "sheet"
            matched = findings.check(
                match_features, cohort, folder, settings.on_missing, set(slides),
                slides_from=f"slides.{source} {config['slides'][source]}",
            )  # fmt: skip
        cohort, files = matched if matched else (None, {})
    if cohort is None:
        return []
    if splits.file:
        table = findings.check(read_splits, splits.file, cohort)
        if table is not None:
            folds = sorted({fold for fold in table["fold"] if fold != "test"}, key=int)
            if len(folds) != splits.folds:
                findings.problems.append(
                    f"split file {splits.file} has {len(folds)} folds, splits.folds says "
                    f"{splits.folds}; set splits.folds: {len(folds)}."
                )
    else:
        findings.check(check_splits, cohort, splits)
    unknown = sorted(set(config["plots"]["heatmap_slides"]) - set(cohort.slide_ids))
    if unknown:
        findings.problems.append(
            f"plots.heatmap_slides names slides that do not train: {format_items(unknown)}; "
            "fix the ids or drop them."
        )
    return sorted(files)


def check_registries(
    config: Mapping, inputs: Inputs, encoders: list[str], registries: Mapping, findings: Findings
) -> None:
    """Encoders, model runs and what they need of the settings, from the registries.

    Args:
        config: The workflow's config.
        inputs: The run's input (with ``features.dir`` no encoder runs).
        encoders: The run's feature sets (encoder names, with a stain method or not).
        registries: What :mod:`querent.pipeline.registries` reads.
        findings: Where problems go.
    """
    known = registries["encoders"]
    tiling = config["tiling"]
    encoders = list(dict.fromkeys(split_feature_set(name)[0] for name in encoders))
    for encoder in [] if inputs.own_features else encoders:
        if encoder not in known:
            findings.problems.append(
                f"features.encoder {encoder!r} is not a registered encoder; choose one of "
                f"{', '.join(sorted(known))}."
            )
            continue
        if config["features"]["allow_mpp_mismatch"]:
            continue
        # what extractors.extract.check_resolution refuses in every extraction job
        spec = known[encoder]
        seen = tiling["target_mpp"] * tiling["patch_size"] / spec["input_px"]
        if abs(seen / spec["native_mpp"] - 1) > registries["mpp_tolerance"]:
            findings.problems.append(
                f"tiling.target_mpp {tiling['target_mpp']} and patch_size "
                f"{tiling['patch_size']} reach encoder {encoder} at {seen:.3f} µm/px, but it "
                f"expects {spec['native_mpp']} µm/px. Fix: tile at target_mpp "
                f"{spec['native_mpp']} with patch_size about {spec['input_px']}, or set "
                "features.allow_mpp_mismatch."
            )
    runs = [
        run
        for name, spec in config["models"].items()
        if (run := findings.check(model_run, name, spec, config["training"], registries["models"]))
    ]
    for run in runs:  # what each model's own checks refuse (registries.run_problems)
        findings.problems.extend(
            f"models.{run.name}.{problem}"
            for problem in registries["run_problems"].get(run.name, [])
        )
        if not run.covariates and not config["cohort"]["covariates"]:
            findings.notes.append(
                f"models.{run.name}.covariates: false changes nothing while cohort.covariates "
                "is empty."
            )
    cox = registries["min_batch"].get("cox", 1)
    if config["cohort"]["task"] == "survival":
        for run in runs:
            if run.training.survival_loss == "cox" and run.training.batch_size < cox:
                findings.problems.append(
                    f"models.{run.name}: training.batch_size {run.training.batch_size} is too "
                    f"small for the Cox loss, which needs {cox} slides per batch (its risk set). "
                    "Fix: raise batch_size, or use survival_loss: discrete."
                )


# --- the plan ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What the rules run on.

    Attributes:
        inputs: Where the data comes from.
        encoders: The run's feature sets, in the config's order: each encoder's name, with
            ``-{method}`` for stain-normalised patches (``features.stain_norm``); they name the
            features' folders and stand for the encoder in every path after extraction.
        demo_cohort: The demo's sheet as a table (labels of the demo slides).
        slide_files: Every slide of the input, by id.
        metadata_mpp: µm/px from the metadata of each slide without an override (None: none
            there); a slide missing here has an override or could not be read.
        slides: The slides this run processes (the others are left out, see ``left_out``).
        batches: Slides of each feature extraction job, by batch name.
        train_slides: Slides that train and evaluate (empty: the run stops at features).
        annotations: The annotation file of each slide that has one (``slides.annotations``).
    """

    inputs: Inputs
    encoders: list[str]
    demo_cohort: pd.DataFrame
    slide_files: dict[str, SlideEntry] = field(default_factory=dict)
    metadata_mpp: dict[str, float | None] = field(default_factory=dict)
    slides: dict[str, SlideEntry] = field(default_factory=dict)
    batches: dict[str, list[str]] = field(default_factory=dict)
    train_slides: list[str] = field(default_factory=list)
    annotations: dict[str, Path] = field(default_factory=dict)

    @property
    def left_out(self) -> list[str]:
        """Slides of the input this run leaves out (``tiling.target_mpp`` finer than level 0)."""
        return sorted(set(self.slide_files) - set(self.slides))

    @property
    def slide_batch(self) -> dict[str, str]:
        """Slide id -> its extraction batch."""
        return {slide: batch for batch, slides in self.batches.items() for slide in slides}

    def slide_kwargs(self, config: Mapping, slide: str) -> dict:
        """Keyword arguments of ``extractors.wsi.reader.Slide`` for one slide.

        ``slides.mpp_default`` goes only to the slides whose metadata has no MPP, so setting it
        re-runs those slides alone; an override (slide sheet or ``slides.per_slide``) goes to its
        slide only. A slide in a bucket, whose metadata is read by its jobs alone, gets it too.
        """
        lacks_mpp = slide in self.metadata_mpp and self.metadata_mpp[slide] is None
        lacks_mpp |= self.slide_files[slide].mpp is None and is_bucket_url(
            self.slide_files[slide].path
        )
        return {
            "slide_id": slide,
            "mpp_override": self.slide_files[slide].mpp,
            "mpp_default": config["slides"]["mpp_default"] if lacks_mpp else None,
        }

    def annotation_input(self, slide: str) -> list[str]:
        """The slide's annotation file as a segmentation input ([] for none)."""
        return [str(self.annotations[slide])] if slide in self.annotations else []

    def annotation_params(self, config: Mapping, slide: str) -> dict | None:
        """How the slide's annotations apply (None without a file: no other slide re-runs)."""
        if slide not in self.annotations:
            return None
        return AnnotationSettings.from_config(config["slides"]).params()


def plan_workflow(
    config: Mapping,
    *,
    demo_slides: str,
    where: CohortInputs,
    mpp_cache: Path,
    findings: Findings,
    list_bucket: KeyLister | None = None,
) -> Plan:
    """Check the config and the inputs; the plan of what runs.

    Slide metadata is read only when the settings so far have no problem.

    Args:
        config: The workflow's config (validated against the schema).
        demo_slides: Path of a demo slide, with ``{slide}``.
        where: Where the cohort's files are.
        mpp_cache: Cache file of the slides' metadata MPP; the annotation files' classes are
            cached beside it (``annotations.json``).
        findings: Where problems and notes go.
        list_bucket: Lists a bucket's keys (``slides.dir: s3://...``); None: no S3 plugin.
    """
    inputs = choose_inputs(config, findings)
    demo = config["demo"]
    table = demo_cohort(demo["n_slides"], demo["seed"])
    encoders = config_encoders(config)
    check_settings(config, encoders, inputs, findings)
    sets = feature_sets(encoders, stain_methods(config["features"]["stain_norm"]))
    paths = {slide: Path(demo_slides.format(slide=slide)) for slide in table["slide_id"]}
    slide_files = apply_per_slide(
        config, load_slides(config, inputs, paths, findings, list_bucket), inputs, findings
    )
    metadata = {}
    if slide_files and not findings.problems:
        metadata = metadata_mpp(slide_files, inputs, mpp_cache)
    slides = tileable(config, slide_files, level0_mpps(config, slide_files, metadata), findings)
    return Plan(
        inputs=inputs,
        encoders=sets,
        demo_cohort=table,
        slide_files=slide_files,
        metadata_mpp=metadata,
        slides=slides,
        batches=slide_batches(slides, config["features"]["slides_per_job"]),
        train_slides=check_cohort(config, inputs, where, slides, table, sets, findings),
        annotations=check_annotations(
            config, inputs, slide_files, mpp_cache.with_name("annotations.json"), findings
        ),
    )

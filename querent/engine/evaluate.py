"""Evaluation of a trained fold, and deployment of a run's fold models on new slides.

Both apply a ``model.pt`` to whole bags (no patch subsets) and write predictions.csv,
attention.h5 and, where the truth is known, metrics.json (:mod:`querent.engine.outputs`).
Deployment averages the folds' probabilities (survival: risks and hazards) and attention.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from extractors.devices import pick_device
from extractors.errors import CohortError, FileFormatError
from extractors.io import write_attention
from querent.data.bags import BagDataset, EpochOrder, bag_loader, inspect_feature_files
from querent.data.case_bags import attention_entries, bag_mode, slide_files
from querent.data.cohort import Cohort, format_items
from querent.engine import checkpoint
from querent.engine.covariates import covariate_tensors, deployment_covariates, saved_covariates
from querent.engine.device_feed import DeviceFeed
from querent.engine.metrics import fold_metrics
from querent.engine.outputs import write_metrics, write_predictions
from querent.engine.tasks import Task, predictions_table, task_from_state
from querent.models import MILModel, create_model

logger = logging.getLogger(__name__)


#: Defaults that changed since checkpoints recorded only the settings a config gave
#: (Querent then was neither local nor distance-biased by default).
LEGACY_DEFAULTS = {"querent": {"local": False, "distance_bias": False}}

#: The features' encoder that checkpoints of earlier versions record for files without one.
UNKNOWN_ENCODER = "unknown"


def load_model(path: str | Path) -> tuple[MILModel, Task, dict]:
    """The model, fitted task and checkpoint of a ``model.pt`` (eval mode, on the CPU)."""
    ckpt = checkpoint.load(path)
    task = task_from_state(ckpt["task"])
    run = ckpt["run"]
    arguments = ckpt.get("model_arguments")
    if arguments is None:  # saved before checkpoints recorded every setting
        arguments = LEGACY_DEFAULTS.get(run["arch"], {}) | run["model"]
    covariates = saved_covariates(ckpt)
    model = create_model(
        run["arch"],
        in_dim=ckpt["in_dim"],
        n_outputs=task.n_outputs,
        covariate_dim=covariates.dim if covariates else 0,
        **arguments,
    )
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), task, ckpt


@torch.no_grad()
def apply_model(
    model: MILModel,
    files: Mapping[str, Path],
    slide_ids: Sequence[str],
    *,
    device: torch.device,
    workers: int = 0,
    covariates: Mapping[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[str, dict[str, object]]]:
    """(bags, n_outputs) logits and per-slide attention outputs over whole bags.

    A case bag's attention is written per slide (:func:`~querent.data.case_bags.attention_entries`).

    ``covariates`` maps each slide to its encoded covariates (models that read them).
    """
    model = model.to(device).eval()
    dataset = BagDataset(files, slide_ids, region_size=model.region_size, read_features=False)
    logits, per_slide = [], {}
    loader = bag_loader(dataset, EpochOrder(len(slide_ids)), workers=workers)
    for bag in DeviceFeed(loader, device):
        extra = covariates[bag.slide_id].to(device) if covariates else None
        out = model(bag.features.to(device), bag.cells.to(device), grid=bag.grid, covariates=extra)
        logits.append(out.logits.float().cpu())
        arrays = {
            "attention": out.attention.float().cpu().numpy(),
            "selected": None if out.selected is None else out.selected.cpu().numpy(),
            "region_of_patch": (
                None if out.region_of_patch is None else out.region_of_patch.cpu().numpy()
            ),
        }
        per_slide |= attention_entries(
            bag.slide_id, files[bag.slide_id], arrays, bag.slide_of_patch.numpy(), model.region_size
        )
    return torch.stack(logits), per_slide


def evaluate_fold(
    model_path: str | Path,
    cohort: Cohort,
    files: Mapping[str, Path],
    slide_ids: Sequence[str],
    out_dir: str | Path,
    *,
    device: str | None = None,
    workers: int = 0,
) -> dict:
    """Evaluate one fold's model on its held-out slides; returns the metrics.

    Writes ``out_dir``/predictions.csv, metrics.json and attention.h5.
    """
    out_dir = Path(out_dir)
    model, task, ckpt = load_model(model_path)
    if ckpt.get("bag", "slide") != bag_mode(files):
        raise CohortError(
            f"{model_path} was trained on {ckpt.get('bag', 'slide')} bags, but cohort.bag is "
            f"{bag_mode(files)}. Fix: set cohort.bag: {ckpt.get('bag', 'slide')}, or train again."
        )
    used = slide_files({s: files[s] for s in slide_ids})
    check_compatible(ckpt, used, inspect_feature_files(used), model_path)
    covariates = covariate_tensors(saved_covariates(ckpt), cohort.table, slide_ids, cohort.source)
    logits, per_slide = apply_model(
        model, files, slide_ids, device=pick_device(device), workers=workers, covariates=covariates
    )
    case_ids = cohort.table.set_index("slide_id").loc[list(slide_ids), "case_id"].tolist()
    table = predictions_table(task, cohort, list(slide_ids), case_ids, logits)
    metrics = fold_metrics(table)
    write_predictions(table, out_dir / "predictions.csv")
    write_metrics(
        {**metrics, "fold": ckpt["fold"], "epoch": ckpt["epoch"]}, out_dir / "metrics.json"
    )
    write_attention(per_slide, out_dir / "attention.h5")
    return metrics


def check_compatible(
    ckpt: dict,
    files: Mapping[str, Path],
    found: Mapping[str, tuple[int, str | None]],
    model_path: str | Path,
    *,
    allow_encoder_mismatch: bool = False,
) -> None:
    """Refuse feature files of another width, or of another encoder, than the model's.

    ``found`` holds each slide's width and ``encoder`` attribute
    (:func:`~querent.data.bags.inspect_feature_files` of ``files``). Every width is checked;
    the encoder only where both the model and the file name one (older checkpoints may record
    "unknown"), and a mismatch is let through, with a warning, under ``allow_encoder_mismatch``.

    Raises:
        CohortError: The message names the files, the model, both widths or encoders, and the
            fix.
    """
    trained = ckpt["features_encoder"]
    known = trained != UNKNOWN_ENCODER
    wrong_width: dict[int, list[str]] = {}
    wrong_encoder: dict[str, list[str]] = {}
    for slide_id, (width, encoder) in found.items():
        if width != ckpt["in_dim"]:
            wrong_width.setdefault(width, []).append(str(files[slide_id]))
        elif known and encoder not in (None, trained):
            wrong_encoder.setdefault(encoder, []).append(str(files[slide_id]))
    if wrong_width:
        of_encoder = f" of encoder {trained!r}" if known else ""
        fix = f"encoder {trained!r}" if known else "the model's encoder"
        widths = "; ".join(
            f"{width} wide: {format_items(paths)}" for width, paths in sorted(wrong_width.items())
        )
        raise CohortError(
            f"{model_path} was trained on {ckpt['in_dim']}-wide features{of_encoder}, but these "
            f"feature files are not: {widths}. Fix: extract these slides with {fix} (a width "
            "mismatch cannot be overridden)."
        )
    for encoder, paths in sorted(wrong_encoder.items()):
        message = (
            f"{format_items(paths)}: features of encoder {encoder!r}, but {model_path} was "
            f"trained on features of encoder {trained!r}"
        )
        if not allow_encoder_mismatch:
            raise CohortError(
                f"{message}. Fix: extract these slides with {trained!r}, or, if both names stand "
                "for the same features, allow it (querent predict --allow-encoder-mismatch)."
            )
        logger.warning("%s; going on, as the encoder mismatch is allowed", message)


def predict_slides(
    model_paths: Sequence[str | Path],
    files: Mapping[str, Path],
    out_dir: str | Path,
    *,
    cohort: Cohort | None = None,
    case_ids: Mapping[str, str] | None = None,
    device: str | None = None,
    workers: int = 0,
    allow_encoder_mismatch: bool = False,
    covariates: pd.DataFrame | None = None,
) -> None:
    """Apply a run's fold models to new slides: the mean of their predictions and attention.

    Writes ``out_dir``/predictions.csv (with the truth and metrics.json when ``cohort`` is
    given) and attention.h5. ``allow_encoder_mismatch`` accepts files whose ``encoder``
    attribute differs from the models' (:func:`check_compatible`). Models that read clinical
    covariates take them from ``covariates`` (a sheet of ``slide_id`` and the columns, as
    :func:`~querent.data.cohort.read_table` reads it), else from ``cohort``'s table.

    Raises:
        FileFormatError: No model given, or models of different runs or tasks.
        CohortError: Features of another width than the models', or of another encoder; or
            models that read covariates and no values for them.
    """
    if not model_paths:
        raise FileFormatError("no model.pt given; train the run first (rule train_model)")
    slide_ids = sorted(files)
    out_dir = Path(out_dir)
    dev = pick_device(device)
    found = inspect_feature_files(files)
    outputs, tasks, per_model = [], [], []
    for path in model_paths:
        model, task, ckpt = load_model(path)
        if ckpt.get("bag", "slide") != "slide":
            raise FileFormatError(
                f"{path} was trained on case bags (cohort.bag: case): querent predict applies "
                "models of single slides. Fix: evaluate it on a cohort sheet (querent evaluate, "
                "or the workflow), or deploy a run trained with cohort.bag: slide."
            )
        check_compatible(ckpt, files, found, path, allow_encoder_mismatch=allow_encoder_mismatch)
        values = deployment_covariates(saved_covariates(ckpt), path, slide_ids, cohort, covariates)
        logits, per_slide = apply_model(
            model, files, slide_ids, device=dev, workers=workers, covariates=values
        )
        outputs.append(task.prediction_columns(logits))
        tasks.append(task.state())
        per_model.append(per_slide)
    if len({(state["name"], *columns) for state, columns in zip(tasks, outputs, strict=True)}) > 1:
        raise FileFormatError(
            f"models of different tasks or classes cannot be averaged: {list(model_paths)}"
        )
    if case_ids is None:
        case_ids = (
            dict(zip(cohort.table["slide_id"], cohort.table["case_id"], strict=True))
            if cohort is not None
            else {s: s for s in slide_ids}
        )
    table = predictions_table(task, cohort, slide_ids, [case_ids[s] for s in slide_ids], logits)
    for column in outputs[0]:
        table[column] = np.mean([columns[column] for columns in outputs], axis=0)
    write_predictions(table, out_dir / "predictions.csv")
    if cohort is not None:
        write_metrics(fold_metrics(table), out_dir / "metrics.json")
    write_attention(_mean_attention(per_model), out_dir / "attention.h5")
    logger.info(
        "%d slides predicted with %d models -> %s", len(slide_ids), len(model_paths), out_dir
    )


def _mean_attention(per_model: list[dict[str, dict[str, object]]]) -> dict[str, dict[str, object]]:
    """Mean pooling attention over models; region selections are per model and left out."""
    merged = {}
    for slide_id, first in per_model[0].items():
        merged[slide_id] = {
            "attention": np.mean([m[slide_id]["attention"] for m in per_model], axis=0),
            "features": first["features"],
            "n_models": len(per_model),
        }
    return merged

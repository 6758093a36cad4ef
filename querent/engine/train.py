"""Training one model run on one fold: a timm-style loop, one slide per forward pass.

``train_one_epoch`` and ``validate`` are the loop; ``train_fold`` builds the fold's task,
model, optimizer and loaders, then runs the epochs with a
:class:`~querent.engine.checkpoint.CheckpointSaver`. A batch is ``batch_size`` slides whose
logits are stacked before the loss, so Cox's risk set is the batch and class weights apply
within it. The epoch's slide order and patch subsets come from generators seeded by (seed,
epoch), and the global RNG states are saved every epoch, so a run killed at any point and
started again ends with the same ``model.pt`` as one that was never interrupted.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from extractors.devices import pick_device
from extractors.errors import QuerentError
from querent.data.bags import (
    IN_MEMORY_BYTES,
    BagDataset,
    EpochOrder,
    bag_loader,
    check_feature_files,
    cohort_bytes,
)
from querent.data.case_bags import BagFiles, bag_mode, case_slides, slide_files
from querent.data.cohort import Cohort
from querent.data.covariates import CovariateEncoder
from querent.engine import checkpoint
from querent.engine.allocator import keep_freed_memory
from querent.engine.covariates import covariate_tensors, fit_covariates
from querent.engine.device_feed import DeviceFeed
from querent.engine.fold_lock import fold_lock
from querent.engine.metrics import case_level, compute_metrics
from querent.engine.provenance import provenance
from querent.engine.runs import ModelRun, TrainSettings
from querent.engine.tasks import Task, predictions_table
from querent.engine.threads import intra_op_threads
from querent.models import MILModel, create_model
from querent.models.registry import resolved_arguments

logger = logging.getLogger(__name__)


class TrainingError(QuerentError):
    """Training cannot go on (e.g. a NaN loss); the message names the epoch and slides."""


def _forward(
    model: MILModel, bag, device: torch.device, covariates: Mapping[str, torch.Tensor] | None
) -> torch.Tensor:
    features = bag.features.to(device, non_blocking=True)
    cells = bag.cells.to(device, non_blocking=True)
    extra = covariates[bag.slide_id].to(device) if covariates else None
    amp = device.type == "cuda"
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        return model(features, cells, grid=bag.grid, covariates=extra).logits.float()


def train_one_epoch(
    model: MILModel,
    loader,
    task: Task,
    targets: Mapping[str, dict[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    *,
    settings: TrainSettings,
    device: torch.device,
    epoch: int,
    covariates: Mapping[str, torch.Tensor] | None = None,
) -> float:
    """One pass over the training slides; returns the mean batch loss.

    ``covariates`` maps each slide to its encoded covariates (models that read them).

    Raises:
        TrainingError: A loss is NaN or infinite (names the epoch and the batch's slides).
    """
    model.train()
    losses, logits, slides = [], [], []
    bar = tqdm(loader, desc=f"epoch {epoch}", unit="slide", leave=False, disable=None)
    for i, bag in enumerate(bar):
        logits.append(_forward(model, bag, device, covariates))
        slides.append(bag.slide_id)
        if len(slides) < settings.batch_size and i + 1 < len(loader):
            continue
        batch_targets = {
            key: torch.stack([targets[s][key] for s in slides]).to(device)
            for key in targets[slides[0]]
        }
        loss = task.loss(torch.stack(logits), batch_targets)
        if not torch.isfinite(loss):
            raise TrainingError(
                f"epoch {epoch}: the loss is {loss.item()} on slides {', '.join(slides)}; check "
                "their features, or lower training.lr."
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        logits, slides = [], []
    return float(np.mean(losses)) if losses else math.nan


@torch.no_grad()
def predict(
    model: MILModel,
    loader,
    device: torch.device,
    covariates: Mapping[str, torch.Tensor] | None = None,
) -> tuple[list[str], torch.Tensor]:
    """Slide ids and (slides, n_outputs) logits of every bag of ``loader`` (whole bags)."""
    model.eval()
    slides, logits = [], []
    for bag in loader:
        slides.append(bag.slide_id)
        logits.append(_forward(model, bag, device, covariates).cpu())
    return slides, torch.stack(logits) if logits else torch.empty(0)


def validate(
    model: MILModel,
    loader,
    task: Task,
    cohort: Cohort,
    device: torch.device,
    covariates: Mapping[str, torch.Tensor] | None = None,
) -> tuple[float, float]:
    """Validation loss (all slides as one batch) and the task's main metric at case level."""
    slides, logits = predict(model, loader, device, covariates)
    if not slides:
        return math.nan, math.nan
    targets = task.targets(cohort, slides)
    loss = task.loss(logits, targets).item()
    case_ids = cohort.table.set_index("slide_id").loc[slides, "case_id"].tolist()
    table = predictions_table(task, cohort, slides, case_ids, logits)
    return loss, compute_metrics(case_level(table))[task.main_metric]


def _score(metric: float, loss: float) -> tuple[float, float]:
    """Higher is better: the metric, then the lower loss; NaN counts as -inf."""
    return (-math.inf if math.isnan(metric) else metric, -math.inf if math.isnan(loss) else -loss)


@dataclass(frozen=True)
class _Fold:
    """What one fold trains with, built from its model run."""

    device: torch.device
    task: Task
    model: MILModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_order: EpochOrder
    train_loader: DeviceFeed
    val_loader: DeviceFeed
    targets: dict[str, dict[str, torch.Tensor]]
    in_dim: int
    file_encoder: str | None
    covariates: CovariateEncoder | None
    covariate_values: dict[str, torch.Tensor]


def _prepare(
    run: ModelRun,
    cohort: Cohort,
    files: Mapping[str, BagFiles],
    train_ids: list[str],
    val_ids: list[str],
    *,
    device: str | None,
    workers: int,
    in_memory: bool | None,
) -> _Fold:
    """Check the feature files, fit the task, build model, optimizer, scheduler and loaders."""
    settings, dev = run.training, pick_device(device)
    if dev.type == "cpu":
        keep_freed_memory()
    used = slide_files({s: files[s] for s in [*train_ids, *val_ids]})
    in_dim, file_encoder = check_feature_files(used)
    task = settings.task(cohort)
    task.fit(cohort.subset(train_ids))
    covariates = fit_covariates(run, cohort, train_ids)
    torch.manual_seed(settings.seed)
    model = create_model(
        run.arch,
        in_dim=in_dim,
        n_outputs=task.n_outputs,
        covariate_dim=covariates.dim if covariates else 0,
        **run.model,
    ).to(dev)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=settings.resolved_lr(cohort.task),
        weight_decay=settings.weight_decay,
    )
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=settings.epochs)
        if settings.scheduler == "cosine"
        else torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    )
    if in_memory is None:
        in_memory = cohort_bytes(used) < IN_MEMORY_BYTES
    datasets = {
        name: BagDataset(
            files,
            ids,
            region_size=model.region_size,
            max_patches=settings.max_patches if name == "train" else None,
            subset=settings.subset,
            seed=settings.seed,
            in_memory=in_memory,
            augment=settings.augment and name == "train",
            read_features=in_memory,  # streamed: the feed's threads read them
        )
        for name, ids in (("train", train_ids), ("val", val_ids))
    }
    loader_workers = 0 if in_memory else workers
    train_order = EpochOrder(len(train_ids), seed=settings.seed, shuffle=True)
    train_loader = DeviceFeed(
        bag_loader(datasets["train"], train_order, workers=loader_workers), dev
    )
    val_loader = DeviceFeed(
        bag_loader(datasets["val"], EpochOrder(len(val_ids)), workers=loader_workers), dev
    )
    batch = task.targets(cohort, train_ids)
    targets = {s: {key: value[i] for key, value in batch.items()} for i, s in enumerate(train_ids)}
    values = covariate_tensors(covariates, cohort.table, [*train_ids, *val_ids], cohort.source)
    return _Fold(
        dev, task, model, optimizer, scheduler, train_order, train_loader, val_loader, targets,
        in_dim, file_encoder, covariates, values,
    )  # fmt: skip


def train_fold(
    run: ModelRun,
    cohort: Cohort,
    files: Mapping[str, BagFiles],
    train_ids: list[str],
    val_ids: list[str],
    out_dir: str | Path,
    *,
    encoder: str,
    fold: int,
    device: str | None = None,
    workers: int = 1,
    in_memory: bool | None = None,
    threads: int | None = None,
    config: Mapping | None = None,
) -> Path:
    """Train ``run`` on ``train_ids``, select its epoch on ``val_ids``, write ``model.pt``.

    Writes ``history.csv`` (one row per epoch) and keeps ``resume.pt`` until the run ends; a
    ``resume.pt`` of the same run (same settings, slides and fold) is continued. Once its
    inputs are checked it holds ``train.lock`` in ``out_dir`` (:mod:`querent.engine.fold_lock`)
    to the end.

    Args:
        run: The model run (architecture, model and training settings).
        cohort: The cohort (targets of every bag: slides, or cases with one row each).
        files: Bag id -> feature file, or a case bag's tuple of its slides' files
            (:mod:`querent.data.case_bags`); the checkpoint records which (``bag``).
        train_ids: Slides (or cases) to train on.
        val_ids: Slides that select the epoch (by the task's main metric); empty: the last.
        out_dir: Folder of model.pt, history.csv and resume.pt.
        encoder: The configured encoder (``features.encoder``), recorded in the checkpoint;
            also as the features' encoder where the files carry no ``encoder`` attribute
            (TRIDENT's and CLAM's files).
        fold: Fold number recorded in the checkpoint.
        device: ``cuda``, ``cpu`` or None (CUDA when available).
        workers: Processes that read bags' coordinates and build their grids ahead of the
            model when streaming (threads of :mod:`~querent.engine.device_feed` read the
            features).
        in_memory: Hold every bag after its first read (no workers then); None: when the
            cohort's features take less than :data:`~querent.data.bags.IN_MEMORY_BYTES`.
        threads: Cores the job was given: before every epoch torch gets the idle ones among
            them (:func:`~querent.engine.threads.intra_op_threads`); None: torch's setting
            stays.
        config: The settings the run was given (a workflow job's params), for the provenance.

    Returns:
        The path of ``model.pt``.

    Raises:
        FoldBusyError: Another process is training this fold (its pid and host named).
    """
    settings = run.training
    setup = _prepare(
        run, cohort, files, train_ids, val_ids, device=device, workers=workers, in_memory=in_memory
    )
    model, task, optimizer, dev = setup.model, setup.task, setup.optimizer, setup.device
    if setup.file_encoder not in (None, encoder):
        logger.warning(
            "the feature files say encoder %r, the settings %r; the model records the files'",
            setup.file_encoder, encoder,
        )  # fmt: skip
    with fold_lock(out_dir):
        signature = {
            "run": run.to_dict(),
            "train": list(train_ids),
            "val": list(val_ids),
            "fold": fold,
            "encoder": encoder,
            "task": task.state(),  # the targets and their classes (cohort.label, cohort.classes)
            "covariates": setup.covariates.state() if setup.covariates else None,
            "bag": bag_mode(files),
            "case_slides": case_slides(files, [*train_ids, *val_ids]),
        }
        saver = checkpoint.CheckpointSaver(
            model,
            optimizer,
            setup.scheduler,
            Path(out_dir),
            signature,
            min_delta=settings.min_delta,
        )
        for epoch in range(saver.resume(), settings.epochs):
            if settings.patience is not None and saver.stale >= settings.patience:
                break
            if threads is not None:
                torch.set_num_threads(intra_op_threads(threads))
            started = time.perf_counter()
            setup.train_order.set_epoch(epoch)
            train_loss = train_one_epoch(
                model, setup.train_loader, task, setup.targets, optimizer, settings=settings,
                device=dev, epoch=epoch, covariates=setup.covariate_values,
            )  # fmt: skip
            lr = optimizer.param_groups[0]["lr"]
            setup.scheduler.step()
            val_loss, val_metric = validate(
                model, setup.val_loader, task, cohort, dev, setup.covariate_values
            )
            score = _score(val_metric, val_loss) if val_ids else (float(epoch), 0.0)
            row = {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": val_loss,
                f"val_{task.main_metric}": val_metric,
                "lr": lr,
                "seconds": round(time.perf_counter() - started, 3),
            }
            if val_ids and math.isnan(val_metric) and not saver.history:
                logger.warning(
                    "fold %d: validation %s is undefined on its %d slides (one class, or no "
                    "events?): epochs are chosen and stopped by the validation loss",
                    fold, task.main_metric, len(val_ids),
                )  # fmt: skip
            saver.save_checkpoint(epoch, score, row)
            logger.info(
                "epoch %d: train loss %.4f, val loss %.4f, val %s %.4f",
                epoch, train_loss, val_loss, task.main_metric, val_metric,
            )  # fmt: skip
        history = saver.history
        best_epoch = _best_epoch(history, task.main_metric, bool(val_ids))
        record = provenance(config, cohort.source)
        return saver.save_model(
            {
                "run": run.to_dict(),
                "model_arguments": resolved_arguments(run.arch, run.model),
                "task": task.state(),
                "covariates": setup.covariates.state() if setup.covariates else None,
                "encoder": encoder,
                "features_encoder": setup.file_encoder or encoder,
                "bag": bag_mode(files),
                "in_dim": setup.in_dim,
                "fold": fold,
                "epoch": best_epoch,
                "metric": history[best_epoch][f"val_{task.main_metric}"] if history else math.nan,
                "querent_version": record["packages"]["querent"],
                "git_revision": record["git_revision"],
                "provenance": record,
            }
        )


def _best_epoch(history: list[dict], metric: str, selected: bool) -> int:
    """The epoch :class:`~querent.engine.checkpoint.CheckpointSaver` kept: the first best."""
    if not selected or not history:
        return len(history) - 1
    scores = [_score(row[f"val_{metric}"], row["val_loss"]) for row in history]
    return max(range(len(scores)), key=lambda i: (scores[i], -i))

"""Checkpoints: the deployable ``model.pt`` and the ``resume.pt`` that continues a killed run.

Both load with ``torch.load(path, weights_only=True)``: state dicts, tensors and plain data
(str, int, float, bool, None, lists, tuples, dicts), no pickled code.

``model.pt``: ``state_dict`` (the selected epoch's weights), ``run`` (arch and model settings,
training settings), ``task`` (fitted task state: class order or time-bin edges),
``covariates`` (the fitted clinical covariates, :mod:`querent.data.covariates`; None or absent
for a model without them), ``encoder`` (the configured one), ``features_encoder`` (the feature
files' ``encoder`` attribute, else the configured encoder; "unknown" in older checkpoints),
``in_dim`` (feature width), ``fold``,
``epoch``, ``metric``, ``querent_version``, ``git_revision``, ``provenance``
(:func:`querent.engine.provenance.provenance`).

``resume.pt`` (beside it, deleted when training ends): the last completed epoch's model,
optimizer, scheduler and RNG states, the best epoch so far, the history and the patience count.

:class:`CheckpointSaver` writes both, and ``history.csv``, for one training run.
"""

from __future__ import annotations

import logging
import math
import random
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from extractors.errors import FileFormatError
from extractors.io import atomic_path

logger = logging.getLogger(__name__)


def save(payload: dict, path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load(path: str | Path) -> dict:
    """Load a checkpoint with ``weights_only=True``.

    Raises:
        FileFormatError: Missing or not a checkpoint; the message names the file.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as err:
        raise FileFormatError(
            f"{path}: not a readable checkpoint ({err}); train the model again."
        ) from err


def rng_state() -> dict:
    """The global RNG states that training touches (torch, numpy, random)."""
    numpy_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)),
                  *numpy_state[2:]],
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }  # fmt: skip


def set_rng_state(state: dict) -> None:
    """Restore :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    random.setstate(_tuples(state["python"]))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(value: object) -> object:
    """Lists back to tuples (``random.setstate`` wants its nested tuples)."""
    if isinstance(value, list | tuple):
        return tuple(_tuples(v) for v in value)
    return value


class CheckpointSaver:
    """The files of one training run, after each epoch and at its end (timm's ``CheckpointSaver``).

    Holds the best score so far (higher is better; a tie keeps the earlier epoch) and its
    weights, the history, and the patience count ``stale``: epochs since the main metric last
    beat its best by more than ``min_delta``. A score is ``(metric, -loss)``; the loss only
    breaks ties of the weights kept, it never resets the patience, so a run whose validation
    AUC is 1.0 from its first epoch (2 validation cases) stops instead of running on while its
    loss keeps falling. Where the metric is undefined (``-inf``: a one-class validation set)
    the loss takes its place. After every epoch it writes ``history.csv`` and ``resume.pt``,
    atomically; :meth:`save_model` writes ``model.pt`` and deletes ``resume.pt``.

    Args:
        model: The model trained.
        optimizer: Its optimizer.
        scheduler: Its learning-rate scheduler.
        out_dir: Folder of ``history.csv``, ``resume.pt`` and ``model.pt``.
        signature: What makes a run the same run (settings, slides, fold, encoder): a
            ``resume.pt`` of another signature is not continued.
        min_delta: The gain of the metric that counts as better for the patience.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        out_dir: Path,
        signature: dict,
        min_delta: float = 0.0,
    ) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.out_dir, self.signature, self.min_delta = out_dir, signature, min_delta
        self.resume_path = out_dir / "resume.pt"
        self.history: list[dict] = []
        self.best: tuple[float, float] | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.reference: tuple[float, float] | None = None  # the score that last reset `stale`
        self.stale = 0

    def resume(self) -> int:
        """Continue this very run's ``resume.pt``, if there is one; returns the next epoch."""
        if not self.resume_path.exists():
            return 0
        state = load(self.resume_path)
        if state.get("signature") != self.signature:
            logger.warning(
                "%s belongs to other settings or slides; starting afresh", self.resume_path
            )
            return 0
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        self.history, self.stale = state["history"], state["stale"]
        self.best = tuple(state["best"]) if state["best"] is not None else None
        self.reference = tuple(state["reference"]) if state["reference"] is not None else None
        self.best_state = state["best_state"]
        logger.info("%s: resuming after epoch %d", self.out_dir, state["epoch"])
        return state["epoch"] + 1

    def save_checkpoint(self, epoch: int, score: tuple[float, float], row: dict) -> None:
        """Record a finished epoch, its ``score`` and history ``row``; save the resume state."""
        if self.best is None or score > self.best:
            self.best, self.best_state = score, _cpu_state(self.model)
        if self._improves(score):
            self.reference, self.stale = score, 0
        else:
            self.stale += 1
        self.history.append(row)
        self._write_history()
        save(
            {
                "signature": self.signature,
                "epoch": epoch,
                "model": _cpu_state(self.model),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": rng_state(),
                "history": self.history,
                "best": list(self.best),
                "best_state": self.best_state,
                "reference": list(self.reference) if self.reference is not None else None,
                "stale": self.stale,
            },
            self.resume_path,
        )

    def _improves(self, score: tuple[float, float]) -> bool:
        """Whether ``score`` beats the reference by more than ``min_delta`` (metric, else loss)."""
        if self.reference is None:
            return True
        metric, reference = score[0], self.reference[0]
        if metric == reference == -math.inf:
            metric, reference = score[1], self.reference[1]
        return metric > reference + self.min_delta

    def save_model(self, record: dict) -> Path:
        """Write ``model.pt``: the best epoch's weights and ``record``; end the run's resume.

        ``history.csv`` is written again first: a run killed after its last epoch resumes with
        no epoch left to write it.
        """
        self._write_history()
        path = self.out_dir / "model.pt"
        save({"state_dict": self.best_state, **record}, path)
        self.resume_path.unlink(missing_ok=True)
        return path

    def _write_history(self) -> None:
        with atomic_path(self.out_dir / "history.csv") as tmp:
            pd.DataFrame(self.history).to_csv(tmp, index=False)


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the model's state dict on the CPU."""
    return {key: value.detach().cpu().clone() for key, value in model.state_dict().items()}

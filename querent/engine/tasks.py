"""Tasks: what a model predicts, its loss, its prediction columns and its main metric.

A task carries everything task-specific, so the training loop has no ``if task == ...``:

- ``classification``: one logit per class, (class-weighted) cross-entropy, ``prob_<class>``
  columns; main metric AUC.
- ``survival``: discrete-time hazards over quantile bins of the training event times (NLL as in
  PORPOISE / MCAT); ``risk`` column (minus the summed survival) and ``hazard_<j>`` columns.
- ``cox``: one log hazard ratio, Cox partial likelihood over the slides of a batch (the risk
  set), so batches need several slides; ``risk`` column.
- ``regression``: one output, the value standardised by the training slides' mean and standard
  deviation; squared error or Huber's loss; ``prediction`` column in the target's unit; main
  metric R².
- ``multilabel``: several classification targets on one head (:mod:`querent.engine.multitask`).

Built by name (``create_task``); ``fit`` sets what depends on the training set (class weights,
bin edges, the target's mean and scale), and ``state`` / ``from_state`` carry it into a
checkpoint as plain data.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from extractors.errors import SettingsError
from querent.data.cohort import Cohort
from querent.engine.losses import (
    REGRESSION_LOSSES,
    balanced_class_weights,
    cox_partial_nll,
    cross_entropy,
    discrete_time_nll,
    quantile_bin_edges,
    regression_loss,
    risk_from_discrete,
    time_to_bin,
)


class Task:
    """Base class of tasks.

    Attributes:
        name: Registry name.
        cohort_task: ``classification``, ``survival`` or ``regression`` (the cohort sheet it
            needs).
        main_metric: Metric for model selection (higher is better).
        min_batch: Fewest slides a batch needs for the loss to be defined.
    """

    name = ""
    cohort_task = ""
    main_metric = ""
    min_batch = 1

    @property
    def n_outputs(self) -> int:
        """Head outputs of a model for this task."""
        raise NotImplementedError

    def fit(self, cohort: Cohort) -> None:
        """Set what depends on the training slides (no-op by default)."""

    def targets(self, cohort: Cohort, slide_ids: list[str]) -> dict[str, torch.Tensor]:
        """Per-slide targets, each a tensor with one row per slide."""
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        """Scalar loss of a batch: logits (b, n_outputs), targets of the same b slides."""
        raise NotImplementedError

    def prediction_columns(self, logits: torch.Tensor) -> dict[str, np.ndarray]:
        """Columns of predictions.csv (besides ids and truth) from (b, n_outputs) logits."""
        raise NotImplementedError

    def truth_columns(self, cohort: Cohort, slide_ids: list[str]) -> dict[str, list]:
        """The truth columns of predictions.csv."""
        raise NotImplementedError

    def state(self) -> dict:
        """Plain data that rebuilds the fitted task (checkpoints)."""
        return {"name": self.name}

    @classmethod
    def from_state(cls, state: dict) -> Task:
        """Rebuild a fitted task from :meth:`state`."""
        return cls()


class ClassificationTask(Task):
    """Slide classification with cross-entropy.

    Args:
        classes: Class names in the model's output order.
        class_weights: ``balanced`` weighs classes inversely to their training frequency;
            ``none`` weighs slides equally.
    """

    name = cohort_task = "classification"
    main_metric = "auc"

    def __init__(self, *, classes: tuple[str, ...], class_weights: str = "none") -> None:
        if class_weights not in ("none", "balanced"):
            raise SettingsError(f"class_weights must be none or balanced, got {class_weights!r}")
        self.classes = tuple(classes)
        self.class_weights = class_weights
        self.weights: list[float] | None = None

    @property
    def n_outputs(self) -> int:  # noqa: D102
        return len(self.classes)

    def fit(self, cohort: Cohort) -> None:  # noqa: D102
        if self.class_weights == "balanced":
            labels = cohort.targets(cohort.slide_ids)
            self.weights = balanced_class_weights(labels, len(self.classes)).tolist()

    def targets(self, cohort, slide_ids):  # noqa: D102
        return {"label": torch.tensor(cohort.targets(slide_ids), dtype=torch.long)}

    def loss(self, logits, targets):  # noqa: D102
        weights = None if self.weights is None else torch.tensor(self.weights)
        return cross_entropy(logits, targets["label"].to(logits.device), class_weights=weights)

    def prediction_columns(self, logits):  # noqa: D102
        probs = torch.softmax(logits.float(), dim=-1).cpu().numpy()
        return {f"prob_{name}": probs[:, i] for i, name in enumerate(self.classes)}

    def truth_columns(self, cohort, slide_ids):  # noqa: D102
        table = cohort.table.set_index("slide_id").loc[slide_ids]
        return {"truth": table["label"].tolist()}

    def state(self) -> dict:  # noqa: D102
        return {
            "name": self.name,
            "classes": list(self.classes),
            "class_weights": self.class_weights,
            "weights": self.weights,
        }

    @classmethod
    def from_state(cls, state: dict) -> ClassificationTask:  # noqa: D102
        task = cls(classes=tuple(state["classes"]), class_weights=state["class_weights"])
        task.weights = state["weights"]
        return task


class _SurvivalTask(Task):
    cohort_task = "survival"
    main_metric = "c_index"

    def targets(self, cohort, slide_ids):  # noqa: D102
        time, event = cohort.targets(slide_ids)
        return {
            "time": torch.tensor(np.asarray(time), dtype=torch.float64),
            "event": torch.tensor(np.asarray(event), dtype=torch.long),
        }

    def truth_columns(self, cohort, slide_ids):  # noqa: D102
        time, event = cohort.targets(slide_ids)
        return {"time": list(np.asarray(time, float)), "event": list(np.asarray(event, int))}


class DiscreteSurvivalTask(_SurvivalTask):
    """Discrete-time survival: hazards over ``n_bins`` quantile bins of the event times.

    Args:
        n_bins: Time bins (head outputs).
        alpha: Extra weight of uncensored patients in the NLL (MCAT's ``alpha``).
    """

    name = "survival"

    def __init__(self, *, n_bins: int = 4, alpha: float = 0.0) -> None:
        if n_bins < 1:
            raise SettingsError(f"survival_bins must be >= 1, got {n_bins}")
        self.n_bins, self.alpha = n_bins, alpha
        self.edges: list[float] | None = None

    @property
    def n_outputs(self) -> int:  # noqa: D102
        return self.n_bins

    def fit(self, cohort: Cohort) -> None:  # noqa: D102
        time, event = cohort.targets(cohort.slide_ids)
        self.edges = quantile_bin_edges(time, event, self.n_bins).tolist()

    def loss(self, logits, targets):  # noqa: D102
        if self.edges is None:
            raise RuntimeError("fit the task on the training cohort first")
        edges = torch.tensor(self.edges, dtype=torch.float64, device=targets["time"].device)
        bins = time_to_bin(targets["time"], edges)
        return discrete_time_nll(
            logits, bins.to(logits.device), targets["event"].to(logits.device), alpha=self.alpha
        )

    def prediction_columns(self, logits):  # noqa: D102
        logits = logits.float()
        hazards = torch.sigmoid(logits).cpu().numpy()
        columns = {"risk": risk_from_discrete(logits).cpu().numpy()}
        columns.update({f"hazard_{j}": hazards[:, j] for j in range(self.n_bins)})
        return columns

    def state(self) -> dict:  # noqa: D102
        return {"name": self.name, "n_bins": self.n_bins, "alpha": self.alpha, "edges": self.edges}

    @classmethod
    def from_state(cls, state: dict) -> DiscreteSurvivalTask:  # noqa: D102
        task = cls(n_bins=state["n_bins"], alpha=state["alpha"])
        task.edges = state["edges"]
        return task


class CoxTask(_SurvivalTask):
    """Cox proportional hazards: one log hazard ratio per slide, the batch as risk set."""

    name = "cox"
    min_batch = 8

    @property
    def n_outputs(self) -> int:  # noqa: D102
        return 1

    def loss(self, logits, targets):  # noqa: D102
        events = targets["event"].to(logits.device)
        if not events.any():
            return logits.sum() * 0.0  # a batch without events carries no information
        return cox_partial_nll(logits[:, 0], targets["time"].to(logits.device), events)

    def prediction_columns(self, logits):  # noqa: D102
        return {"risk": logits[:, 0].float().cpu().numpy()}


class RegressionTask(Task):
    """A continuous target: the model predicts it standardised, the table in its own unit.

    Standardising by the training slides' mean and standard deviation keeps the head's output
    near 0 and the loss's scale (and Huber's ``delta``) the same whatever the target's unit.

    Args:
        loss: ``mse`` or ``huber`` (``delta`` one standard deviation).
    """

    name = cohort_task = "regression"
    main_metric = "r2"

    def __init__(self, *, loss: str = "mse") -> None:
        if loss not in REGRESSION_LOSSES:
            raise SettingsError(
                f"regression_loss must be one of {', '.join(REGRESSION_LOSSES)}, got {loss!r}"
            )
        self.loss_kind = loss
        self.mean: float | None = None
        self.scale: float | None = None

    @property
    def n_outputs(self) -> int:  # noqa: D102
        return 1

    def fit(self, cohort: Cohort) -> None:
        """The training slides' mean and standard deviation (1 where every value is equal)."""
        values = cohort.targets(cohort.slide_ids)
        self.mean = float(np.mean(values))
        self.scale = float(np.std(values)) or 1.0

    def _fitted(self) -> tuple[float, float]:
        if self.mean is None or self.scale is None:
            raise RuntimeError("fit the task on the training cohort first")
        return self.mean, self.scale

    def targets(self, cohort, slide_ids):  # noqa: D102
        return {"target": torch.tensor(cohort.targets(slide_ids), dtype=torch.float32)}

    def loss(self, logits, targets):  # noqa: D102
        mean, scale = self._fitted()
        standardised = (targets["target"].to(logits.device) - mean) / scale
        return regression_loss(logits[:, 0], standardised, kind=self.loss_kind)

    def prediction_columns(self, logits):  # noqa: D102
        mean, scale = self._fitted()
        return {"prediction": mean + scale * logits[:, 0].double().cpu().numpy()}

    def truth_columns(self, cohort, slide_ids):  # noqa: D102
        return {"target": list(cohort.targets(slide_ids))}

    def state(self) -> dict:  # noqa: D102
        return {"name": self.name, "loss": self.loss_kind, "mean": self.mean, "scale": self.scale}

    @classmethod
    def from_state(cls, state: dict) -> RegressionTask:  # noqa: D102
        task = cls(loss=state["loss"])
        task.mean, task.scale = state["mean"], state["scale"]
        return task


#: Tasks by name, each built from the cohort and the training settings.
TASKS: dict[str, type[Task]] = {
    "classification": ClassificationTask,
    "survival": DiscreteSurvivalTask,
    "cox": CoxTask,
    "regression": RegressionTask,
}


def registered_tasks() -> dict[str, type[Task]]:
    """:data:`TASKS` and the multi-label task, which builds on them."""
    from querent.engine.multitask import MultiLabelTask

    return {**TASKS, MultiLabelTask.name: MultiLabelTask}


def create_task(name: str, **kwargs: object) -> Task:
    """Build a task by name (a key of :func:`registered_tasks`)."""
    tasks = registered_tasks()
    if name not in tasks:
        raise SettingsError(f"unknown task {name!r}; choose one of: {', '.join(tasks)}")
    return tasks[name](**kwargs)


def task_from_state(state: dict) -> Task:
    """Rebuild a fitted task from :meth:`Task.state`."""
    tasks = registered_tasks()
    if state["name"] not in tasks:
        raise SettingsError(f"unknown task {state['name']!r}; choose one of: {', '.join(tasks)}")
    return tasks[state["name"]].from_state(state)


def predictions_table(
    task: Task,
    cohort: Cohort | None,
    slide_ids: list[str],
    case_ids: list[str],
    logits: torch.Tensor,
) -> pd.DataFrame:
    """predictions.csv rows: ``slide_id, case_id``, the truth (with a cohort), the predictions."""
    table = {"slide_id": slide_ids, "case_id": case_ids}
    if cohort is not None:
        table.update(task.truth_columns(cohort, slide_ids))
    table.update(task.prediction_columns(logits))
    return pd.DataFrame(table)

"""Several classification targets on one model (``cohort.label: [subtype, grade]``).

The head's outputs are the targets' logits side by side (``n_outputs`` = the sum of their
classes), and each target is a :class:`~querent.engine.tasks.ClassificationTask` on its slice
of them. The loss is the mean over targets of each one's (class-weighted) cross-entropy on the
slides whose label is known; a target that no slide of the batch knows is left out of the mean.
The predictions table has ``{target}:truth`` and ``{target}:prob_<class>`` columns
(:mod:`querent.engine.target_tables`); model selection uses the mean of the targets' AUCs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch

from extractors.errors import CohortError, SettingsError
from querent.data.cohort import Cohort
from querent.engine.losses import balanced_class_weights
from querent.engine.target_tables import TRUTH, target_column
from querent.engine.tasks import ClassificationTask, Task

#: The targets' label indices in a batch: (slides, targets), -1 where a label is unknown.
LABELS = "labels"


class MultiLabelTask(Task):
    """Several classification targets, each with its own classes, on one head.

    Args:
        targets: Target (label column) -> its class names, in the head's output order.
        class_weights: ``none`` or ``balanced`` (per target, over its known training labels).
    """

    name = "multilabel"
    cohort_task = "classification"
    main_metric = "auc"

    def __init__(
        self, *, targets: Mapping[str, Sequence[str]], class_weights: str = "none"
    ) -> None:
        if len(targets) < 2:
            raise SettingsError(
                f"a multi-label task needs two or more targets, got {list(targets)}"
            )
        self.parts = {
            str(target): ClassificationTask(classes=tuple(classes), class_weights=class_weights)
            for target, classes in targets.items()
        }
        self.class_weights = class_weights

    @property
    def n_outputs(self) -> int:  # noqa: D102
        return sum(part.n_outputs for part in self.parts.values())

    def _split(
        self, logits: torch.Tensor
    ) -> Iterator[tuple[str, ClassificationTask, torch.Tensor]]:
        """Each target, its task and its (b, classes) slice of ``logits``."""
        start = 0
        for target, part in self.parts.items():
            yield target, part, logits[:, start : start + part.n_outputs]
            start += part.n_outputs

    def fit(self, cohort: Cohort) -> None:
        """Balanced class weights per target, from the training slides that know its label."""
        if self.class_weights == "balanced":
            labels = np.asarray(cohort.targets(cohort.slide_ids))
            for column, part in zip(labels.T, self.parts.values(), strict=True):
                part.weights = balanced_class_weights(column[column >= 0], part.n_outputs).tolist()

    def targets(self, cohort, slide_ids):  # noqa: D102
        return {LABELS: torch.tensor(np.asarray(cohort.targets(slide_ids)), dtype=torch.long)}

    def loss(self, logits, targets):  # noqa: D102
        labels = targets[LABELS].to(logits.device)
        terms = []
        for j, (_, part, own) in enumerate(self._split(logits)):
            known = labels[:, j] >= 0
            if known.any():
                terms.append(part.loss(own[known], {"label": labels[known, j]}))
        return torch.stack(terms).mean() if terms else logits.sum() * 0.0

    def prediction_columns(self, logits):  # noqa: D102
        return {
            target_column(target, column): values
            for target, part, own in self._split(logits)
            for column, values in part.prediction_columns(own).items()
        }

    def truth_columns(self, cohort, slide_ids):  # noqa: D102
        absent = [target for target in self.parts if target not in cohort.labels]
        if absent:
            raise CohortError(
                f"{cohort.source}: the model predicts the label columns {', '.join(self.parts)}, "
                f"but the cohort was read without {', '.join(absent)}. Fix: set cohort.label: "
                f"[{', '.join(self.parts)}]."
            )
        table = cohort.table.set_index("slide_id").loc[slide_ids]
        return {target_column(target, TRUTH): table[target].tolist() for target in self.parts}

    def state(self) -> dict:  # noqa: D102
        return {"name": self.name, "targets": {t: part.state() for t, part in self.parts.items()}}

    @classmethod
    def from_state(cls, state: dict) -> MultiLabelTask:  # noqa: D102
        parts = {t: ClassificationTask.from_state(s) for t, s in state["targets"].items()}
        first = next(iter(parts.values()))
        task = cls(
            targets={t: p.classes for t, p in parts.items()}, class_weights=first.class_weights
        )
        task.parts = parts
        return task

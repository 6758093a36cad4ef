"""A model run's clinical covariates: fitted on a fold's training cases, kept in its checkpoint.

:mod:`querent.data.covariates` encodes the values; here a run decides whether it reads them
(``models.{run}.covariates``, ``cohort.covariates``), and each slide's encoding becomes the
tensor the model's head reads beside the slide embedding.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import pandas as pd
import torch

from extractors.errors import CohortError
from querent.data.cohort import Cohort
from querent.data.covariates import CovariateEncoder
from querent.engine.runs import ModelRun

logger = logging.getLogger(__name__)


def fit_covariates(
    run: ModelRun, cohort: Cohort, train_ids: Sequence[str]
) -> CovariateEncoder | None:
    """The run's covariates fitted on the training cases; None when it reads none."""
    if not (run.covariates and cohort.covariates):
        return None
    cases = cohort.subset(train_ids).table.drop_duplicates("case_id").set_index("case_id")
    encoder = CovariateEncoder.fit(cases, cohort.covariate_kinds())
    logger.info("covariates of %d training cases: %s", len(cases), ", ".join(encoder.features))
    return encoder


def covariate_tensors(
    encoder: CovariateEncoder | None, table: pd.DataFrame, slide_ids: Sequence[str], source: str
) -> dict[str, torch.Tensor]:
    """Slide id -> its (dim,) float32 covariates (empty without an encoder).

    Args:
        encoder: The fitted covariates, or None.
        table: ``slide_id`` and the covariate columns (a cohort table, or a sheet of values).
        slide_ids: The slides.
        source: Where ``table`` comes from, for messages.
    """
    if encoder is None:
        return {}
    vectors = encoder.slide_vectors(table, slide_ids, source)
    return {slide: torch.from_numpy(vector) for slide, vector in vectors.items()}


def saved_covariates(ckpt: Mapping) -> CovariateEncoder | None:
    """The fitted covariates a checkpoint holds (None: the model reads none)."""
    state = ckpt.get("covariates")
    return None if state is None else CovariateEncoder.from_state(state)


def deployment_covariates(
    encoder: CovariateEncoder | None,
    model_path: object,
    slide_ids: Sequence[str],
    cohort: Cohort | None,
    sheet: pd.DataFrame | None,
) -> dict[str, torch.Tensor]:
    """Covariates of new slides from ``sheet``, else ``cohort``'s table.

    Raises:
        CohortError: The model reads covariates and neither gives them.
    """
    if encoder is None:
        return {}
    if sheet is not None:
        return covariate_tensors(encoder, sheet, slide_ids, "the covariate sheet")
    if cohort is not None:
        return covariate_tensors(encoder, cohort.table, slide_ids, cohort.source)
    raise CohortError(
        f"{model_path} reads the clinical covariates {', '.join(encoder.names)}, and no values "
        "were given for the new slides. Fix: give a sheet with columns slide_id, "
        f"{', '.join(encoder.names)} (querent predict --covariates SHEET; empty cells where "
        "unknown)."
    )

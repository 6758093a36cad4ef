"""Model runs and their training settings.

A run is a name from the config, an architecture, its settings and training overrides:

``models: {querent_k8: {arch: querent, top_k: 8, training: {lr: 2e-4}}}`` is the run
``querent_k8``: ``create_model("querent", top_k=8, ...)`` trained with the ``training`` section
updated by ``{lr: 2e-4}``. The run name is used in output paths, so two settings of one
architecture coexist in the cache. ``covariates: false`` trains a run without the cohort's
clinical covariates (``cohort.covariates``), to compare it with the same run with them.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from extractors.errors import SettingsError

if TYPE_CHECKING:  # torch is imported by the functions that need it, never at DAG time
    from querent.data.cohort import Cohort
    from querent.engine.tasks import Task

#: Run names become folder names and wildcards.
RUN_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
#: Constructor arguments the data decides, not the config.
_DATA_ARGUMENTS = {"in_dim", "n_outputs"}
#: Keys of a run that are not model arguments.
RUN_KEYS = ("arch", "training", "covariates")
#: How a bag bigger than ``max_patches`` is cut (:class:`~querent.data.bags.BagDataset`).
SUBSETS = ("random", "crop")
#: Learning rates of the paper when ``lr`` is not set.
DEFAULT_LR = {"classification": 1e-4, "survival": 2e-4, "regression": 1e-4}


@dataclass(frozen=True)
class TrainSettings:
    """The config section ``training``; a model run may override any key."""

    epochs: int = field(default=50, metadata={"help": "training epochs (the paper: 50)"})
    lr: float | None = field(
        default=None,
        metadata={
            "help": "AdamW learning rate; null: 1e-4 classification and regression, 2e-4 survival"
        },
    )
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay"})
    batch_size: int = field(
        default=1, metadata={"help": "slides per optimizer step (cox: the risk set, >= 8)"}
    )
    max_patches: int | None = field(
        default=8192,
        metadata={"help": "random patches per slide at training time; null: whole slides"},
    )
    subset: str = field(
        default="random",
        metadata={"help": "random | crop (contiguous whole regions) above max_patches"},
    )
    augment: bool = field(
        default=False,
        metadata={"help": "random flips, quarter turns and shifts of each slide's lattice"},
    )
    patience: int | None = field(
        default=10,
        metadata={"help": "stop after this many epochs without a better validation metric"},
    )
    min_delta: float = field(
        default=0.001,
        metadata={"help": "a gain of the validation metric that counts as better (ties do not)"},
    )
    grad_clip: float = field(default=1.0, metadata={"help": "gradient norm clipping"})
    scheduler: str = field(default="cosine", metadata={"help": "cosine | constant"})
    class_weights: str = field(
        default="none", metadata={"help": "none | balanced (classification)"}
    )
    survival_loss: str = field(
        default="discrete", metadata={"help": "discrete (NLL over time bins) | cox"}
    )
    survival_bins: int = field(default=4, metadata={"help": "time bins of the discrete loss"})
    regression_loss: str = field(
        default="mse",
        metadata={"help": "mse | huber (regression, on targets standardised by the training set)"},
    )
    seeds: tuple[int, ...] = field(
        default=(0,),
        metadata={
            "help": "seeds of weights, order and patch subsets; every fold is trained once per "
            "seed (results/models/{model}/{encoder}/seed_{s}/fold_{k})"
        },
    )

    def __post_init__(self) -> None:
        """Reject settings that cannot train; seeds become a tuple of ints."""
        problems = []
        seeds = (self.seeds,) if isinstance(self.seeds, int) else tuple(self.seeds or ())
        if not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
            problems.append(f"seeds must be a list of integers >= 0, got {self.seeds!r}")
        elif len(set(seeds)) < len(seeds):
            problems.append(f"seeds lists a seed twice: {list(seeds)}")
        object.__setattr__(self, "seeds", seeds)
        if self.epochs < 1 or self.batch_size < 1:
            problems.append("epochs and batch_size must be >= 1")
        if self.lr is not None and self.lr <= 0:
            problems.append("lr must be > 0")
        if self.max_patches is not None and self.max_patches < 1:
            problems.append("max_patches must be >= 1 or null")
        if self.subset not in SUBSETS:
            problems.append(f"subset must be one of {SUBSETS}, got {self.subset!r}")
        if self.patience is not None and self.patience < 1:
            problems.append("patience must be >= 1 or null")
        if self.min_delta < 0:
            problems.append("min_delta must be >= 0")
        if self.scheduler not in ("cosine", "constant"):
            problems.append(f"scheduler must be cosine or constant, got {self.scheduler!r}")
        if self.survival_loss not in ("discrete", "cox"):
            problems.append(f"survival_loss must be discrete or cox, got {self.survival_loss!r}")
        if self.regression_loss not in ("mse", "huber"):
            problems.append(f"regression_loss must be mse or huber, got {self.regression_loss!r}")
        if problems:
            raise SettingsError("training: " + "; ".join(problems))

    def task(self, cohort: Cohort) -> Task:
        """The task these settings train on ``cohort``."""
        from querent.engine.tasks import create_task

        if cohort.labels:
            return create_task(
                "multilabel", targets=cohort.labels, class_weights=self.class_weights
            )
        if cohort.task == "classification":
            return create_task(
                "classification", classes=cohort.classes, class_weights=self.class_weights
            )
        if cohort.task == "regression":
            return create_task("regression", loss=self.regression_loss)
        if self.survival_loss == "cox":
            task = create_task("cox")
            if self.batch_size < task.min_batch:
                raise SettingsError(
                    f"training.batch_size {self.batch_size}: the Cox loss needs at least "
                    f"{task.min_batch} slides per batch (its risk set); raise batch_size or use "
                    "survival_loss: discrete."
                )
            return task
        return create_task("survival", n_bins=self.survival_bins)

    @property
    def seed(self) -> int:
        """The seed of a single training (a run for one seed: :meth:`ModelRun.with_seed`)."""
        return self.seeds[0]

    def resolved_lr(self, cohort_task: str) -> float:
        """The learning rate: ``lr`` or the paper's default for the task."""
        return self.lr if self.lr is not None else DEFAULT_LR[cohort_task]


def settings_from(mapping: Mapping[str, object]) -> TrainSettings:
    """TrainSettings from a config mapping, naming unknown keys.

    Raises:
        SettingsError: A key that is not a training setting.
    """
    known = {f.name for f in dataclasses.fields(TrainSettings)}
    unknown = sorted(set(mapping) - known)
    if unknown:
        raise SettingsError(
            f"unknown training settings {unknown}; valid ones: {', '.join(sorted(known))}"
        )
    return TrainSettings(**mapping)


@dataclass(frozen=True)
class ModelRun:
    """One model run.

    Attributes:
        name: Run name (paths and wildcards).
        arch: Registered model name.
        model: Keyword arguments of the model besides ``in_dim`` and ``n_outputs``.
        training: Training settings with the run's overrides applied.
        covariates: The head reads the cohort's covariates (``cohort.covariates``), if any.
    """

    name: str
    arch: str
    model: dict
    training: TrainSettings
    covariates: bool = True

    def with_seed(self, seed: int) -> ModelRun:
        """The run trained with one of its seeds (a training job)."""
        return dataclasses.replace(self, training=dataclasses.replace(self.training, seeds=(seed,)))

    def to_dict(self) -> dict:
        """Plain data (checkpoints, resume signatures)."""
        return {
            "name": self.name,
            "arch": self.arch,
            "model": dict(self.model),
            "training": dataclasses.asdict(self.training),
            "covariates": self.covariates,
        }


def model_arguments() -> dict[str, list[str]]:
    """Every registered model and the arguments a config may give it (imports the models)."""
    from querent.models import list_models
    from querent.models.registry import model_class

    return {
        arch: sorted(set(inspect.signature(model_class(arch)).parameters) - _DATA_ARGUMENTS)
        for arch in list_models()
    }


def model_run(
    name: str,
    spec: Mapping[str, object],
    training: Mapping[str, object],
    arguments: Mapping[str, Sequence[str]] | None = None,
) -> ModelRun:
    """Build and check one run of the config.

    Args:
        name: Run name.
        spec: ``{arch: ..., <model arguments>..., training: {<overrides>}, covariates: bool}``.
        training: The config's ``training`` section.
        arguments: :func:`model_arguments`, when the caller has it without importing the models
            (the workflow at DAG time); None: ask the registry.

    Raises:
        SettingsError: Bad name, unknown arch (lists the valid ones), unknown model argument
            (lists the valid ones) or bad training setting; the message names the run.
    """
    where = f"models.{name}"
    if not re.fullmatch(RUN_NAME_PATTERN, name):
        raise SettingsError(f"{where}: run names may hold letters, digits, '_', '.' and '-' only")
    spec = dict(spec)
    arch = spec.pop("arch", None)
    arguments = model_arguments() if arguments is None else arguments
    if arch not in arguments:
        raise SettingsError(
            f"{where}: arch {arch!r} is not a model; choose one of: {', '.join(sorted(arguments))}"
        )
    overrides = spec.pop("training", None) or {}
    covariates = spec.pop("covariates", True)
    if not isinstance(covariates, bool):
        raise SettingsError(
            f"{where}.covariates must be true or false (read cohort.covariates or not), got "
            f"{covariates!r}"
        )
    if "seeds" in overrides:
        raise SettingsError(
            f"{where}.training.seeds: seeds are shared by every run (their folds are compared "
            "case by case). Fix: set training.seeds, not a run's."
        )
    valid = list(arguments[arch])
    unknown = sorted(set(spec) - set(valid))
    if unknown:
        close = [m for key in unknown for m in difflib.get_close_matches(key, valid, n=1)]
        raise SettingsError(
            f"{where}: {arch} takes no argument {', '.join(unknown)}"
            + (f" (did you mean `{'`, `'.join(close)}`?)" if close else "")
            + f"; valid ones: {', '.join(valid)}"
        )
    try:
        settings = settings_from({**training, **overrides})
    except SettingsError as err:
        raise SettingsError(f"{where}: {err}") from None
    return ModelRun(name, arch, spec, settings, covariates)


def model_runs(
    models: Mapping[str, Mapping[str, object]],
    training: Mapping[str, object],
    arguments: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, ModelRun]:
    """Every run of the config's ``models`` section, checked (``arguments``: as model_run)."""
    if not models:
        raise SettingsError("models: name at least one model run, e.g. {abmil: {arch: abmil}}")
    arguments = model_arguments() if arguments is None else arguments
    return {name: model_run(name, spec, training, arguments) for name, spec in models.items()}

"""Model subcommands of ``querent``: splits, train, evaluate, predict.

``splits``, ``train`` and ``evaluate`` read the workflow's ``config.yaml`` (cohort, features,
splits, training and model runs) and write to the workflow's paths unless told otherwise, so
they give the same files as the Snakemake rules. ``predict`` deploys a run on new slides.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from extractors.errors import SettingsError
from querent.schemas import CONFIG_SCHEMA

if TYPE_CHECKING:
    from querent.engine.runs import ModelRun

#: The workflow's paths, the defaults of these commands (its rules write the same files).
DEMO_SHEET = "resources/demo/cohort.csv"
EXTRACTED_FEATURES = "results/features/{encoder}"
SPLITS = Path("results/splits/splits.csv")


def _config(path: Path) -> dict:
    """The config file, with the schema's defaults filled in (as planning does).

    Raises:
        SettingsError: Every place where it breaks the schema, one line each, by key.
    """
    import yaml

    from querent.schemas.validation import check_config

    try:
        config = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise SettingsError(f"{path}: not a readable YAML config ({err})") from err
    problems, _ = check_config(config, yaml.safe_load(CONFIG_SCHEMA.read_text()))
    if problems:
        raise SettingsError(f"{path}:\n" + "\n".join(f"  {line}" for line in problems))
    return config


def _experiment(args: argparse.Namespace):
    from querent.data.splits import SplitSettings
    from querent.engine.experiment import (
        cohort_settings,
        features_folder,
        load_experiment,
        pick_encoder,
    )
    from querent.engine.runs import model_runs

    config = _config(args.config)
    encoder = pick_encoder(config, args.encoder)
    return load_experiment(
        cohort_settings(config, DEMO_SHEET),
        SplitSettings(**config.get("splits", {})),
        features_folder(config, encoder, EXTRACTED_FEATURES),
        encoder=encoder,
        runs=model_runs(config.get("models", {}), config.get("training", {})),
    )


def _seed(args: argparse.Namespace, run: ModelRun | None) -> int:
    """``--seed``, else the first of the run's ``training.seeds`` (0 for a run not configured)."""
    if args.seed is not None:
        return args.seed
    return run.training.seeds[0] if run is not None else 0


def run_splits(args: argparse.Namespace) -> None:
    """Write patient-level folds of the cohort (or check the user's split file)."""
    from querent.data.splits import split_cohort, write_splits

    experiment = _experiment(args)
    table = split_cohort(experiment.slides, experiment.splits)  # by case, slide by slide
    write_splits(table, args.out)
    counts = table["fold"].value_counts().sort_index()
    print(f"{args.out}\t" + ", ".join(f"fold {k}: {n} slides" for k, n in counts.items()))


def run_train(args: argparse.Namespace) -> None:
    """Train one model run on one fold (resumes an interrupted run of the same settings)."""
    from querent.engine.outputs import run_folder
    from querent.engine.train import train_fold

    experiment = _experiment(args)
    if args.model not in experiment.runs:
        raise SettingsError(
            f"no model run {args.model!r}; the config has {sorted(experiment.runs)}"
        )
    train_ids, val_ids, _ = experiment.fold(args.splits, args.fold)
    seed = _seed(args, experiment.runs[args.model])
    path = train_fold(
        experiment.runs[args.model].with_seed(seed),
        experiment.cohort,
        experiment.files,
        train_ids,
        val_ids,
        args.out_dir or run_folder("models", args.model, experiment.encoder, seed, args.fold),
        encoder=experiment.encoder,
        fold=args.fold,
        device=args.device,
        workers=args.workers,
    )
    print(path)


def run_evaluate(args: argparse.Namespace) -> None:
    """Evaluate one fold's model on the fold's held-out slides."""
    from querent.engine.evaluate import evaluate_fold
    from querent.engine.outputs import run_folder

    experiment = _experiment(args)
    _, _, eval_ids = experiment.fold(args.splits, args.fold)
    run = experiment.runs.get(args.model)
    seed = _seed(args, run)
    model = run_folder("models", args.model, experiment.encoder, seed, args.fold) / "model.pt"
    out_dir = args.out_dir or run_folder("eval", args.model, experiment.encoder, seed, args.fold)
    metrics = evaluate_fold(
        args.model_path or model,
        experiment.cohort,
        experiment.files,
        eval_ids,
        out_dir,
        device=args.device,
        workers=args.workers,
    )
    print(f"{out_dir}\t" + ", ".join(f"{k} {v:.3f}" for k, v in metrics["level"]["case"].items()))


def run_predict(args: argparse.Namespace) -> None:
    """Apply a run's fold models (mean of their predictions) to feature files of new slides.

    Every file must have the models' feature width; a file whose encoder attribute names
    another encoder than the models' is refused unless --allow-encoder-mismatch is given.
    Models trained with clinical covariates read their values from --covariates.
    """
    from querent.data.cohort import read_table
    from querent.engine.evaluate import predict_slides

    models = []
    for path in args.models:
        models += sorted(path.glob("**/fold_*/model.pt")) if path.is_dir() else [path]
    features = []
    for path in args.features:
        features += sorted(path.glob("*.h5")) if path.is_dir() else [path]
    if not features:
        raise SettingsError(f"no feature files (*.h5) in {[str(p) for p in args.features]}")
    files = {path.stem: path for path in features}
    predict_slides(
        models,
        files,
        args.out_dir,
        device=args.device,
        workers=args.workers,
        allow_encoder_mismatch=args.allow_encoder_mismatch,
        covariates=read_table(args.covariates, "covariate sheet") if args.covariates else None,
    )
    print(f"{args.out_dir}/predictions.csv\t{len(files)} slides, {len(models)} models")


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, default=Path("config.yaml"), help="config (default: config.yaml)"
    )
    parser.add_argument(
        "--encoder", help="whose features (default: the config's features.encoder, if only one)"
    )


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    _add_config_arguments(parser)
    parser.add_argument("--model", required=True, help="model run name (a key of `models`)")
    parser.add_argument("--fold", type=int, required=True, help="fold to hold out")
    parser.add_argument(
        "--seed", type=int, help="training seed (default: the first of training.seeds)"
    )
    parser.add_argument(
        "--splits",
        type=Path,
        default=SPLITS,
        help=f"split file (default: {SPLITS}, from `querent splits`)",
    )
    parser.add_argument(
        "-o", "--out-dir", type=Path, help="output folder (default: the workflow's path)"
    )
    _add_device_arguments(parser)


def _add_device_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", help="cuda, cuda:1 or cpu (default: CUDA if available)")
    parser.add_argument(
        "--workers", type=int, default=0, help="feature-reading processes (default: 0)"
    )


def add_commands(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``splits``, ``train``, ``evaluate`` and ``predict`` on the ``querent`` parser."""
    splits = subparsers.add_parser(
        "splits", parents=[common], help="patient-level folds", description=run_splits.__doc__
    )
    _add_config_arguments(splits)
    splits.add_argument(
        "-o",
        "--out",
        type=Path,
        default=SPLITS,
        help=f"split file to write (default: {SPLITS})",
    )
    splits.set_defaults(func=run_splits)

    train = subparsers.add_parser(
        "train", parents=[common], help="train a model run on a fold", description=run_train.__doc__
    )
    _add_run_arguments(train)
    train.set_defaults(func=run_train)

    evaluate = subparsers.add_parser(
        "evaluate",
        parents=[common],
        help="evaluate a fold's model",
        description=run_evaluate.__doc__,
    )
    _add_run_arguments(evaluate)
    evaluate.add_argument("--model-path", type=Path, help="model.pt (default: the workflow's)")
    evaluate.set_defaults(func=run_evaluate)

    predict = subparsers.add_parser(
        "predict",
        parents=[common],
        help="deploy a run's models on new slides",
        description=run_predict.__doc__,
    )
    predict.add_argument(
        "models",
        type=Path,
        nargs="+",
        help="model.pt files, or a run folder (results/models/{model}/{encoder}) of "
        "seed_*/fold_*/ (every seed's fold models are averaged)",
    )
    predict.add_argument(
        "--features", type=Path, nargs="+", required=True, help="feature files or folders"
    )
    predict.add_argument("-o", "--out-dir", type=Path, required=True, help="output folder")
    predict.add_argument(
        "--allow-encoder-mismatch",
        action="store_true",
        help="accept feature files whose encoder attribute names another encoder than the "
        "models' (when both names stand for the same features); the width must still match",
    )
    predict.add_argument(
        "--covariates",
        type=Path,
        help="CSV/TSV of slide_id and the clinical covariates the models read "
        "(cohort.covariates when they were trained; empty cells where unknown)",
    )
    _add_device_arguments(predict)
    predict.set_defaults(func=run_predict)

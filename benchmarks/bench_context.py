"""Does context pay off? MIL models on cohorts where only the arrangement of patches matters.

Generates context cohorts (:mod:`querent.data.context`), then trains and evaluates every model
run with the code the workflow runs (``make_splits``, ``fold_slides``, ``train_fold``,
``evaluate_fold``), k-fold, and prints one table per study:

- ``design``: the cohort's promise: a permutation-invariant bag statistic (logistic regression
  on per-bag mean, sd, min, max and size) at chance, the neighbourhood statistic of each
  arrangement far above; and the paper's summary-quality measure.
- ``main``: every model on the context cohort (AUC per fold, mean +- sd, seconds per epoch).
- ``control``: the attention models where single patches carry the label.
- ``survival``: the survival variant at ``--survival-slides`` slides (C-index; the ceiling is
  that of the true score).
- ``summary``, ``region_size``, ``top_k``, ``scorer``: the paper's ablations of Querent (a
  setting equal to the main study's default Querent reuses its row).
- ``cost``: seconds and peak memory of one training step at ``--patches`` and ``--large``
  (``--width``: the transformers at that width; written to ``..._cost_width{W}.json``).
- ``large``: the context cohort at ``--large`` patches per slide (fewer slides and models).
- ``peers``: the protocol against torchmil's context-aware models and the locality controls,
  one table per cohort of ``--cohorts`` (``real-{kind}``: real features, see
  ``context_bank.py``): the cohort's promise, then ``--seeds`` x ``--folds`` per model (with
  ``--search``: learning rate x weight decay chosen per fold on its validation cases), mean
  +- sd, pooled out-of-fold AUC with its bootstrap CI, and for Querent the measures of its
  picks and its AUC with random picks (:mod:`querent.engine.selection`). ``--models`` also
  takes the Querent variants of ``QUERENT_VARIANTS``.
- ``peer_cost``: seconds and peak memory of one training step of the peer study's models on
  1,280-d features at ``--patches`` and ``--large``, each in a fresh process.

    python benchmarks/bench_context.py --study design main control cost survival summary ...
        [--folds 5] [--epochs 15] [--lr 1e-3] [--slides 80] [--patches 2000] [--threads 2]

Results go to benchmarks/results/bench_context_{study}.json (one file per study, rewritten
as each model finishes, so a long run can be read while it goes). Trained folds are kept under
``--work``/{study}/{cohort} and reused by a later run of the same study on the same cohort
(delete the folder after changing ``--epochs`` or ``--lr``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import re
import resource
import statistics
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
from context_bank import feature_bank
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from extractors.devices import pick_device
from extractors.io import read_attention
from querent.data.bags import read_bag_arrays
from querent.data.cohort import CohortSettings, read_cohort
from querent.data.context import (
    STATISTICS,
    ContextSettings,
    FeatureBank,
    bag_statistics,
)
from querent.data.grid import build_grid
from querent.data.splits import SplitSettings, fold_slides, make_splits
from querent.data.synthetic import write_context_cohort
from querent.engine.aggregate import read_predictions, summarize_run
from querent.engine.evaluate import apply_model, evaluate_fold, load_model
from querent.engine.experiment import match_features
from querent.engine.metrics import fold_metrics, survival_metrics
from querent.engine.runs import model_run
from querent.engine.selection import pick_statistics, random_picks
from querent.engine.tasks import predictions_table
from querent.engine.train import train_fold
from querent.layers.attention import QueryAwareSelfAttention
from querent.layers.regions import RegionLayout, region_summary
from querent.models import create_model

HERE = Path(__file__).resolve().parent
#: Model width of every transformer run (small: the cohorts are small).
SMALL = {"dim": 32, "heads": 2}
#: Querent as in the paper: regions of 4 x 4 cells, top 8, per-patch selection, no geometry.
PAPER = {
    "arch": "querent",
    **SMALL,
    "region_size": 4,
    "top_k": 8,
    "selection": "patch",
    "local": False,
    "distance_bias": False,
}
#: The paper's Querent with the learned scorer: the base of the ablations (per-patch selection,
#: as the paper ablates it).
QUERENT = {**PAPER, "scorer": "learned"}
#: The default Querent of the main study (docs/context-study.md, "Defaults"), before the peer
#: study made it local with a distance bias.
DEFAULT = {**QUERENT, "selection": "region"}
LOCAL = {**PAPER, "local": True}
GEOMETRY = {"positional": "relative", "training": {"augment": True}}

MAIN = {
    "mean_pool": {"arch": "mean_pool", "dim": 32},
    "max_pool": {"arch": "max_pool", "dim": 32},
    "abmil": {"arch": "abmil"},
    "transmil": {"arch": "transmil", **SMALL},
    "full_attention": {"arch": "full_attention", **SMALL},
    "full_attention+relpos+aug": {"arch": "full_attention", **SMALL, **GEOMETRY},
    "querent quest (paper)": PAPER,
    "querent learned (paper)": QUERENT,
    "querent quest region-shared": {**PAPER, "selection": "region"},
    "querent learned region-shared": DEFAULT,
    "querent quest+relpos+aug": {**PAPER, **GEOMETRY},
    "querent quest+local": LOCAL,
    "querent learned+local": {**LOCAL, "scorer": "learned"},
    "querent quest+local region-shared": {**LOCAL, "selection": "region"},
    "querent learned+local region-shared": {**LOCAL, "scorer": "learned", "selection": "region"},
}
CONTROL = {
    name: MAIN[name]
    for name in ("abmil", "transmil", "full_attention", "querent quest+local")
    + ("querent learned (paper)", "querent learned region-shared")
}
SURVIVAL = {
    name: MAIN[name]
    for name in ("mean_pool", "abmil", "querent learned (paper)", "querent learned region-shared")
}
LARGE = {name: MAIN[name] for name in ("mean_pool", "abmil", "querent learned region-shared")}
ABLATIONS = {
    "summary": {s: {**QUERENT, "summary": s} for s in ("minmax", "min", "max", "mean", "meanstd")},
    "region_size": {str(r): {**QUERENT, "region_size": r} for r in (1, 2, 4, 6, 8)},
    "top_k": {str(k): {**QUERENT, "top_k": k} for k in (1, 2, 4, 8, 16)}
    | {"all": {**QUERENT, "top_k": None}},
    "scorer": {s: {**QUERENT, "scorer": s} for s in ("quest", "learned", "mean", "random")},
}


def write_cohort(root: Path, settings: ContextSettings, bank: FeatureBank | None = None):
    """The cohort (written once per settings) and its feature files."""
    name = f"{settings.kind}_{settings.task}_{settings.patches}_{settings.slides}"
    if settings.range != 2:
        name += f"_r{settings.range}"
    folder = root / (f"real_{name}" if bank is not None else name)
    if not (folder / "cohort.csv").is_file():
        write_context_cohort(folder, settings, bank=bank)
    cohort = read_cohort(folder / "cohort.csv", CohortSettings(task=settings.task))
    return match_features(cohort, folder / "features", "error")


def design_check(root: Path, settings: ContextSettings, bank: FeatureBank | None = None) -> dict:
    """The cohort's promise: bag statistics at chance, the defining statistic separating.

    Bag statistics: cross-validated AUC of a logistic regression on per-bag mean, sd, min, max
    and size. Defining statistic: the arrangement's, from the true types (``truth.csv``).
    """
    cohort, files = write_cohort(root, settings, bank)
    table = cohort.table.set_index("slide_id")
    ids = sorted(files)
    stats = []
    for slide_id in ids:
        with h5py.File(files[slide_id], "r") as h5:
            stats.append(bag_statistics(h5["features"][:]))
    truth = pd.read_csv(files[ids[0]].parents[1] / "truth.csv").set_index("slide_id").loc[ids]
    y = (table.loc[ids, "label"] == "pos").to_numpy()
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000))
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    probs = cross_val_predict(model, np.array(stats), y, cv=folds, method="predict_proba")[:, 1]
    statistic = truth["statistic"].to_numpy()
    return {
        "kind": settings.kind,
        "features": "real" if bank is not None else "synthetic",
        "range": settings.range,
        "slides": len(ids),
        "patches_mean": round(float(truth["patches"].mean())),
        "bag_statistic_auc": round(roc_auc_score(y, probs), 3),
        "defining_statistic": STATISTICS[settings.kind],
        "defining_auc": round(roc_auc_score(y, statistic), 3),
        "pos_mean": round(float(statistic[y].mean()), 3),
        "neg_mean": round(float(statistic[~y].mean()), 3),
    }


def cross_validate(name: str, spec: dict, cohort, files, args, out: Path) -> dict:
    """k-fold main metric of one model run, with seconds per epoch.

    A fold whose evaluation exists in ``out`` (an earlier, interrupted run of the benchmark)
    is read, not trained again.
    """
    training = {"epochs": args.epochs, "max_patches": None, "lr": args.lr}
    run = model_run(re.sub(r"[^A-Za-z0-9_.-]", "_", name), spec, training)
    splits = make_splits(cohort, SplitSettings(folds=args.folds, seed=0))
    scores, seconds = [], []
    for fold in range(args.folds):
        train, val, test = fold_slides(splits, cohort, fold, val_fraction=0.2, seed=0)
        folder = out / run.name / f"fold_{fold}"
        if (folder / "eval" / "metrics.json").is_file():
            metrics = json.loads((folder / "eval" / "metrics.json").read_text())
        else:
            model = train_fold(run, cohort, files, train, val, folder, encoder="s", fold=fold)
            metrics = evaluate_fold(model, cohort, files, test, folder / "eval", workers=0)
        scores.append(metrics["level"]["case"][metric_name(cohort)])
        seconds.extend(pd.read_csv(folder / "history.csv")["seconds"].tolist())
    return {
        "model": name,
        "mean": round(statistics.mean(scores), 3),
        "sd": round(statistics.stdev(scores), 3),
        "folds": [round(s, 3) for s in scores],
        "s_per_epoch": round(statistics.median(seconds), 2),
    }


#: Cohorts of the peer study: every arrangement but the control, at ``--range``; ``real-``
#: before a kind draws its features from the real-feature bank (benchmarks/context_bank.py).
PEER_COHORTS = ("margin", "aggregate", "contact", "pair", "layers", "motif")
#: Models of the peer study, each at its library's defaults: ours, torchmil's context-aware
#: models, and the two locality controls.
PEER_MODELS = {
    "abmil": {"arch": "abmil"},
    "neighbour_abmil": {"arch": "neighbour_abmil"},
    "local_window": {"arch": "local_window"},
    "patchgcn": {"arch": "patchgcn"},
    "smabmil": {"arch": "smabmil"},
    "camil": {"arch": "camil"},
    "torchmil_transmil": {"arch": "torchmil_transmil"},
    "querent": {"arch": "querent"},
}
#: Querent before the peer study: global picks, no distance bias.
GLOBAL = {"local": False, "distance_bias": False}
#: Querent changes under test (run when named in ``--models``), besides the default.
QUERENT_VARIANTS = {
    "querent_paper": {"arch": "querent", "selection": "patch", **GLOBAL},
    "querent_global": {"arch": "querent", **GLOBAL},
    "querent_distance": {"arch": "querent", "scorer": "learned_distance", **GLOBAL},
    "querent_local": {"arch": "querent", "local": True, "distance_bias": False},
}
#: The same small search for every model (``--search``): learning rate x weight decay, the
#: setting of each fold chosen on its validation cases only.
SEARCH = tuple((lr, wd) for lr in (1e-4, 1e-3) for wd in (1e-4, 1e-2))


def protocol_row(name: str, spec: dict, cohort, files, args, out: Path) -> dict:
    """``--seeds`` training seeds x ``--folds`` folds of one model on one cohort.

    Returns the mean and sd of the test AUC over seeds and folds, the pooled out-of-fold AUC
    (a case's probability averaged over seeds) with its 95% bootstrap CI, the number of cases,
    the chosen settings and the median seconds per epoch. Trained folds under ``out`` are
    reused.
    """
    metric = metric_name(cohort)
    splits = make_splits(cohort, SplitSettings(folds=args.folds, seed=0))
    grid = SEARCH if args.search else ((args.lr, args.weight_decay),)
    predictions, scores, seconds, chosen, folders, tests = [], [], [], [], [], []
    for seed in range(args.seeds):
        for fold in range(args.folds):
            train, val, test = fold_slides(splits, cohort, fold, val_fraction=0.2, seed=0)
            candidates = []
            for lr, wd in grid:
                training = {"epochs": args.epochs, "lr": lr, "weight_decay": wd, "seeds": [seed]}
                run = model_run(re.sub(r"[^A-Za-z0-9_.-]", "_", name), spec, training)
                folder = out / run.name / f"lr{lr:g}_wd{wd:g}_seed{seed}" / f"fold_{fold}"
                if not (folder / "model.pt").is_file():
                    train_fold(run, cohort, files, train, val, folder, encoder="s", fold=fold)
                history = pd.read_csv(folder / "history.csv")
                seconds.extend(history["seconds"].tolist())
                candidates.append((history[f"val_{metric}"].max(), -lr, -wd, folder))
            best = max(candidates, key=lambda c: c[:3])  # ties: the smaller lr and wd
            folder = best[3]
            chosen.append(f"{-best[1]:g}/{-best[2]:g}")
            if not (folder / "eval" / "metrics.json").is_file():
                evaluate_fold(folder / "model.pt", cohort, files, test, folder / "eval", workers=0)
            scores.append(json.loads((folder / "eval" / "metrics.json").read_text()))
            folders.append(folder)
            tests.append(list(test))
            predictions.append(read_predictions(folder / "eval" / "predictions.csv"))
    runs = [s["level"]["case"][metric] for s in scores]
    per_seed = [predictions[s * args.folds : (s + 1) * args.folds] for s in range(args.seeds)]
    summary = summarize_run(name, "bench", per_seed)
    row = {
        "model": name,
        "cases": summary["n_cases"],
        "runs": len(runs),
        "mean": round(statistics.mean(runs), 3),
        "sd": round(statistics.stdev(runs), 3) if len(runs) > 1 else float("nan"),
        "pooled": round(summary[f"{metric}_pooled"], 3),
        "ci_low": round(summary[f"{metric}_ci_low"], 3),
        "ci_high": round(summary[f"{metric}_ci_high"], 3),
        "per_run": [round(r, 3) for r in runs],
        "lr/wd": sorted(set(chosen)),
        "s_per_epoch": round(statistics.median(seconds), 2),
    }
    if spec["arch"] == "querent":
        row["selection"] = selection_measures(folders, cohort, files, tests)
    return row


def selection_measures(folders: list[Path], cohort, files, tests: list[list[str]]) -> dict:
    """Pick measures of trained query-aware models on their test slides, averaged over runs.

    Only the scored picks count: a local model's own and adjacent regions (always attended,
    never scored) are left out. Also the test AUC of each run's model with random picks at the
    same k (the ablation of :mod:`querent.engine.selection`).
    """
    measures, random_auc = [], []
    for folder, test in zip(folders, tests, strict=True):
        model, task, _ = load_model(folder / "model.pt")
        layer = next(m for m in model.modules() if isinstance(m, QueryAwareSelfAttention))
        for slide_id in test:
            picks = read_attention(folder / "eval" / "attention.h5", slide_id)
            scored = picks["selected"][..., -layer.top_k :] if layer.local else picks["selected"]
            cells = read_bag_arrays(files[slide_id])[1]
            measures.append(
                pick_statistics(
                    torch.from_numpy(scored),
                    torch.from_numpy(picks["region_of_patch"]),
                    torch.from_numpy(cells),
                )
            )
        with random_picks(model):
            logits, _ = apply_model(model, files, test, device=torch.device("cpu"))
        case_ids = cohort.table.set_index("slide_id").loc[test, "case_id"].tolist()
        table = predictions_table(task, cohort, test, case_ids, logits)
        random_auc.append(fold_metrics(table)["level"]["case"][metric_name(cohort)])
    row = {key: round(float(np.mean([m[key] for m in measures])), 3) for key in measures[0]}
    return row | {"random_picks_mean": round(statistics.mean(random_auc), 3)}


def cohort_settings(name: str, args) -> tuple[ContextSettings, FeatureBank | None]:
    """Settings of cohort ``name`` (a kind, or ``real-{kind}``) and its feature bank."""
    kind = name.removeprefix("real-")
    bank = feature_bank(args.work / "bank") if kind != name else None
    settings = ContextSettings(
        kind=kind,
        slides=args.slides,
        patches=args.patches,
        range=args.range,
        dim=32 if bank is None else bank.features.shape[1],
    )
    return settings, bank


def peer_study(args) -> None:
    """The peer study: one table (and JSON) per cohort, every model under the protocol."""
    for name in args.cohorts:
        settings, use_bank = cohort_settings(name, args)
        suffix = f"_r{args.range}" if args.range != 2 else ""
        path = args.results / f"bench_context_peers_{name}{suffix}.json"
        record = {
            "study": "peers",
            "cohort": name,
            "args": vars(args) | {"work": None, "results": None},
        }
        record["design"] = design_check(args.work, settings, use_bank)
        print(record["design"], flush=True)
        cohort, files = write_cohort(args.work, settings, use_bank)
        rows = record["rows"] = []
        if args.models and path.is_file():  # rerun some models: keep the other rows
            rows.extend(
                r for r in json.loads(path.read_text())["rows"] if r["model"] not in args.models
            )
        out = args.work / "peers" / next(iter(files.values())).parents[1].name
        models = PEER_MODELS | QUERENT_VARIANTS
        for model in args.models or PEER_MODELS:
            spec = models[model]
            rows.append(protocol_row(model, spec, cohort, files, args, out))
            print(rows[-1], flush=True)
            path.write_text(json.dumps(record, indent=2) + "\n")
        path.write_text(json.dumps(record, indent=2) + "\n")
        table = pd.DataFrame(rows).drop(columns=["per_run", "selection"], errors="ignore")
        print(f"\npeers: {name}\n" + table.to_string(index=False) + f"\nwritten: {path}")
        for kind, frame in peer_tables(rows).items():
            csv = args.results / f"context_{kind}_{name}{suffix}.csv"
            frame.to_csv(csv, index=False)
            print(f"{kind}\n{frame.to_string(index=False)}\nwritten: {csv}")


def peer_tables(rows: list[dict]) -> dict[str, pd.DataFrame]:
    """The docs' tables of a cohort: ``peers`` (every model) and ``selection`` (Querent's)."""
    peers = pd.DataFrame(
        {
            "model": r["model"],
            "AUC mean ± sd": f"{r['mean']:.3f} ± {r['sd']:.3f}",
            "pooled AUC [95% CI]": f"{r['pooled']:.3f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]",
            "runs": r["runs"],
            "s / epoch": r["s_per_epoch"],
        }
        for r in rows
    )
    tables = {"peers": peers}
    picked = [r for r in rows if "selection" in r]
    if picked:
        tables["selection"] = pd.DataFrame(
            {
                "model": r["model"],
                "own region (random)": _versus(r["selection"], "own"),
                "distance (random)": _versus(r["selection"], "distance", 1),
                "top-8 share (random)": _versus(r["selection"], "top8"),
                "overlap (random)": _versus(r["selection"], "overlap"),
                "AUC": f"{r['mean']:.3f}",
                "AUC, random picks": f"{r['selection']['random_picks_mean']:.3f}",
            }
            for r in picked
        )
    return tables


def cost_table(rows: list[dict], args) -> pd.DataFrame:
    """The docs' cost table: seconds per step and peak MiB at both sizes, and the ratios."""
    small, large = args.patches, args.large
    cheaper = {
        n: min(r[f"s_step_{n}"] for r in rows if r["model"] in ("patchgcn", "smabmil"))
        if any(r["model"] in ("patchgcn", "smabmil") for r in rows)
        else float("nan")
        for n in (small, large)
    }
    return pd.DataFrame(
        {
            "model": r["model"],
            f"s / step, {small:,}": r[f"s_step_{small}"],
            f"MiB, {small:,}": r[f"mib_{small}"],
            f"s / step, {large:,}": r[f"s_step_{large}"],
            f"MiB, {large:,}": r[f"mib_{large}"],
            f"x cheaper peer, {small:,}": round(r[f"s_step_{small}"] / cheaper[small], 2),
            f"x cheaper peer, {large:,}": round(r[f"s_step_{large}"] / cheaper[large], 2),
        }
        for r in rows
    )


def _versus(measures: dict, key: str, digits: int = 2) -> str:
    return f"{measures[key]:.{digits}f} ({measures[key + '_random']:.{digits}f})"


def main_table_row(name: str, spec: dict, folds: int) -> dict | None:
    """The main study's row of the same model run on the same cohort and folds, if any."""
    path = HERE / "results" / "bench_context_main.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if record["args"]["folds"] != folds:
        return None
    for row in record["rows"]:
        if MAIN.get(row["model"]) == spec:
            return row | {"model": name, "from": row["model"]}
    return None


def earlier_ablations(folds: int) -> dict[str, dict]:
    """Rows of the ablation studies written before with the same folds, by model setting."""
    rows = {}
    for study, models in ABLATIONS.items():
        path = HERE / "results" / f"bench_context_{study}.json"
        if path.is_file() and json.loads(path.read_text())["args"]["folds"] == folds:
            for row in json.loads(path.read_text())["rows"]:
                rows[json.dumps(models[row["model"]], sort_keys=True)] = row
    return rows


def metric_name(cohort) -> str:
    """The main metric of the cohort's task."""
    return "auc" if cohort.task == "classification" else "c_index"


def _step_cost(spec: dict, n: int, in_dim: int, threads: int, queue) -> None:
    """Put (seconds, peak MiB) of a training step on a bag of ``n`` patches into ``queue``.

    The peak is that of the first full-size step; the seconds are the median of the three
    steps after it (the first one pays for one-off set-up: allocator, kernels' first calls).
    """
    torch.set_num_threads(threads)
    arguments = {k: v for k, v in spec.items() if k not in ("arch", "training")}
    model = create_model(spec["arch"], in_dim=in_dim, n_outputs=2, **arguments)
    rng = np.random.default_rng(0)
    side = int(np.ceil(np.sqrt(n / 0.6)))
    cells = np.argwhere(rng.random((side, side)) < 0.6)[:n][:, ::-1].copy()
    features = torch.randn(len(cells), in_dim)
    grid = None if model.region_size is None else build_grid(cells, 1, model.region_size)
    model(features[:64], torch.from_numpy(cells[:64])).logits.sum().backward()  # warm up
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model(features, torch.from_numpy(cells), grid=grid).logits.sum().backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    elapsed = []
    for _ in range(3):
        start = time.perf_counter()
        model(features, torch.from_numpy(cells), grid=grid).logits.sum().backward()
        elapsed.append(time.perf_counter() - start)
    queue.put((statistics.median(elapsed), (peak - before) / 1024))


def step_cost(spec: dict, n: int, in_dim: int, threads: int) -> tuple[float, float]:
    """(seconds, peak MiB above the model's baseline) of one training step, in a fresh process."""
    context = multiprocessing.get_context("spawn")  # fork after OpenMP can hang
    queue = context.Queue()
    process = context.Process(target=_step_cost, args=(spec, n, in_dim, threads, queue))
    process.start()
    process.join()
    return queue.get() if process.exitcode == 0 else (float("nan"), float("nan"))


def summary_fidelity(root: Path, settings: ContextSettings, region_size: int = 4) -> dict:
    """The paper's summary quality, averaged over 10 slides.

    Pearson correlation of the inter-region distances from the summaries (Euclidean, low and
    high concatenated) with those from the raw patches, measured two ways: the mean pairwise
    patch distance and the Hausdorff distance between the regions' patch sets.
    """
    cohort, files = write_cohort(root, settings)
    result = {}
    for kind in ("minmax", "min", "max", "mean", "meanstd"):
        values = {"mean_pairwise": [], "hausdorff": []}
        for slide_id in sorted(files)[:10]:
            with h5py.File(files[slide_id], "r") as h5:
                x = torch.from_numpy(h5["features"][:]).double()
                cells = h5["coords"][:] // h5["coords"].attrs["step_level0"]
            layout = RegionLayout.from_grid(build_grid(cells, 1, region_size))
            low, high = region_summary(x, layout, kind)
            summary = torch.cdist(torch.cat([low, high], 1), torch.cat([low, high], 1))
            slots = layout.slots.clamp(min=0)
            pair = torch.cdist(x[slots], x[slots][:, None])  # (r, r, s, s) patch distances
            both = layout.valid[None, :, :, None] & layout.valid[:, None, None, :]
            mean = (pair * both).sum((2, 3)) / both.sum((2, 3))
            nearest_ab = pair.masked_fill(~both, torch.inf).amin(3)
            nearest_ba = pair.masked_fill(~both, torch.inf).amin(2)
            hausdorff = torch.maximum(
                nearest_ab.masked_fill(~layout.valid[None, :, :], -torch.inf).amax(2),
                nearest_ba.masked_fill(~layout.valid[:, None, :], -torch.inf).amax(2),
            )
            upper = tuple(torch.triu_indices(len(slots), len(slots), 1))
            for name, raw in (("mean_pairwise", mean), ("hausdorff", hausdorff)):
                stacked = torch.stack([summary[upper], raw[upper]])
                values[name].append(torch.corrcoef(stacked)[0, 1].item())
        result[kind] = {name: round(float(np.mean(v)), 3) for name, v in values.items()}
    return result


def main() -> None:
    studies = ["design", "main", "control", "survival", *ABLATIONS, "cost", "large", "peers"]
    studies.append("peer_cost")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", nargs="+", choices=studies, default=["design", "main"])
    parser.add_argument(
        "--models", nargs="*", help="only (re)run these model runs of a study, keep other rows"
    )
    parser.add_argument("--cohorts", nargs="+", default=list(PEER_COHORTS), help="peers")
    parser.add_argument("--seeds", type=int, default=3, help="peers: training seeds")
    parser.add_argument("--search", action="store_true", help="peers: the lr x wd search")
    parser.add_argument("--weight-decay", type=float, default=1e-4, help="peers, no search")
    parser.add_argument("--range", type=int, default=2, help="peers: interaction range")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--slides", type=int, default=80)
    parser.add_argument("--patches", type=int, default=2000)
    parser.add_argument("--large", type=int, default=20000, help="patches: cost, large")
    parser.add_argument("--large-slides", type=int, default=60, help="slides of study large")
    parser.add_argument(
        "--survival-slides", type=int, default=200, help="slides of study survival (noisy times)"
    )
    parser.add_argument("--kind", default="margin", help="arrangement of the context cohort")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--width", type=int, help="cost study: transformer width (heads: width / 64) instead of 32"
    )
    parser.add_argument("--work", type=Path, default=HERE / "results" / "context_work")
    parser.add_argument("--results", type=Path, default=HERE / "results", help="JSON folder")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = pick_device()
    base = ContextSettings(kind=args.kind, slides=args.slides, patches=args.patches)
    ablated = earlier_ablations(args.folds)  # the default setting recurs in every ablation
    for study in args.study:
        if study == "peers":
            peer_study(args)
            continue
        record = {
            "study": study,
            "device": device.type,
            "args": vars(args) | {"work": None, "results": None},
        }
        suffix = f"_width{args.width}" if study == "cost" and args.width else ""
        path = args.results / f"bench_context_{study}{suffix}.json"
        rows = record["rows"] = []
        if args.models and path.is_file():  # rerun some models: keep the other rows
            kept = json.loads(path.read_text())["rows"]
            rows.extend(row for row in kept if row["model"] not in args.models)
        if study == "design":  # every cohort of --cohorts and the control, at --range
            for name in [*args.cohorts, "control"]:
                settings, bank = cohort_settings(name, args)
                rows.append(design_check(args.work, settings, bank))
                print(rows[-1], flush=True)
            pd.DataFrame(rows).to_csv(args.results / "context_design_peers.csv", index=False)
            record["summary_fidelity"] = summary_fidelity(args.work, base)
            print("summary fidelity:", record["summary_fidelity"])
        elif study == "peer_cost":  # the peer study's models on 1,280-d features
            for name in args.models or PEER_MODELS:
                row = {"model": name}
                for n in (args.patches, args.large):
                    spec = (PEER_MODELS | QUERENT_VARIANTS)[name]
                    seconds, mib = step_cost(spec, n, 1280, args.threads)
                    row |= {f"s_step_{n}": round(seconds, 3), f"mib_{n}": round(mib)}
                rows.append(row)
                print(row, flush=True)
                path.write_text(json.dumps(record, indent=2) + "\n")
                cost_table(rows, args).to_csv(args.results / "context_peer_cost.csv", index=False)
        elif study == "cost":
            for name, spec in MAIN.items():
                if args.models and name not in args.models:
                    continue
                if args.width and spec["arch"] in ("querent", "full_attention", "transmil"):
                    spec = spec | {"dim": args.width, "heads": args.width // 64}
                row = {"model": name}
                for n in (args.patches, args.large):
                    seconds, mib = step_cost(spec, n, 32, args.threads)
                    row |= {f"s_step_{n}": round(seconds, 3), f"mib_{n}": round(mib)}
                rows.append(row)
                print(row, flush=True)
                path.write_text(json.dumps(record, indent=2) + "\n")
        else:
            settings = base
            if study == "control":
                settings = ContextSettings(**{**vars(base), "kind": "control"})
            if study == "survival":
                settings = ContextSettings(
                    **{**vars(base), "task": "survival", "slides": args.survival_slides}
                )
            if study == "large":
                settings = ContextSettings(
                    **{**vars(base), "patches": args.large, "slides": args.large_slides}
                )
            cohort, files = write_cohort(args.work, settings)
            if study == "survival":
                truth = pd.read_csv(files[cohort.slide_ids[0]].parents[1] / "truth.csv")
                table = cohort.table.set_index("slide_id").loc[truth["slide_id"]]
                record["ceiling_c_index"] = round(
                    survival_metrics(table["time"], table["event"], truth["score"])["c_index"], 3
                )
            models = {"main": MAIN, "control": CONTROL, "survival": SURVIVAL, "large": LARGE}
            for name, spec in (models | ABLATIONS)[study].items():
                if args.models and name not in args.models:
                    continue
                key = json.dumps(spec, sort_keys=True)
                earlier = None
                if study in ABLATIONS:
                    earlier = main_table_row(name, spec, args.folds) or ablated.get(key)
                cohort_dir = next(iter(files.values())).parents[1].name  # one cache per cohort
                out = args.work / study / cohort_dir
                row = earlier or cross_validate(name, spec, cohort, files, args, out)
                rows.append(row | {"model": name})
                if study in ABLATIONS:
                    ablated[key] = rows[-1]
                print(rows[-1], flush=True)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(record, indent=2) + "\n")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2) + "\n")
        print(f"\n{study}\n" + pd.DataFrame(rows).to_string(index=False) + f"\nwritten: {path}")


if __name__ == "__main__":
    main()

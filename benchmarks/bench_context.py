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
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from extractors.devices import pick_device
from querent.data.cohort import CohortSettings, read_cohort
from querent.data.context import (
    IMMUNE,
    TUMOUR,
    TYPES,
    ContextSettings,
    bag_statistics,
    neighbour_cooccurrence,
)
from querent.data.grid import build_grid
from querent.data.splits import SplitSettings, fold_slides, make_splits
from querent.data.synthetic import write_context_cohort
from querent.engine.evaluate import evaluate_fold
from querent.engine.experiment import match_features
from querent.engine.metrics import survival_metrics
from querent.engine.runs import model_run
from querent.engine.train import train_fold
from querent.layers.regions import RegionLayout, region_summary
from querent.models import create_model

HERE = Path(__file__).resolve().parent
#: Model width of every transformer run (small: the cohorts are small).
SMALL = {"dim": 32, "heads": 2}
#: Querent as in the paper: regions of 4 x 4 cells, top 8, per-patch selection, no geometry.
PAPER = {"arch": "querent", **SMALL, "region_size": 4, "top_k": 8, "selection": "patch"}
#: The paper's Querent with the learned scorer: the base of the ablations (per-patch selection,
#: as the paper ablates it).
QUERENT = {**PAPER, "scorer": "learned"}
#: The default Querent (chosen from the main study: docs/context-study.md, "Defaults").
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


def write_cohort(root: Path, settings: ContextSettings):
    """The cohort (written once per settings) and its feature files."""
    folder = root / f"{settings.kind}_{settings.task}_{settings.patches}_{settings.slides}"
    if not (folder / "cohort.csv").is_file():
        write_context_cohort(folder, settings)
    cohort = read_cohort(folder / "cohort.csv", CohortSettings(task=settings.task))
    return match_features(cohort, folder / "features", "error")


#: The neighbourhood statistic that shows each arrangement: (type, neighbour type).
STATISTIC = {"margin": (IMMUNE, TUMOUR), "aggregate": (IMMUNE, IMMUNE), "control": (IMMUNE, TUMOUR)}


def design_check(root: Path, settings: ContextSettings) -> dict:
    """Cross-validated AUC of a permutation-invariant bag statistic; AUC of the co-occurrence."""
    cohort, files = write_cohort(root, settings)
    table = cohort.table.set_index("slide_id")
    ids = sorted(files)
    stats, shares = [], []
    a, b = STATISTIC[settings.kind]
    for slide_id in ids:
        with h5py.File(files[slide_id], "r") as h5:
            stats.append(bag_statistics(h5["features"][:]))
            cells = h5["coords"][:] // h5["coords"].attrs["step_level0"]
            shares.append(neighbour_cooccurrence(cells, h5["types"][:], a, b))
    y = (table.loc[ids, "label"] == "pos").to_numpy()
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000))
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    probs = cross_val_predict(model, np.array(stats), y, cv=folds, method="predict_proba")[:, 1]
    shares = np.array(shares)
    return {
        "kind": settings.kind,
        "slides": len(ids),
        "bag_statistic_auc": round(roc_auc_score(y, probs), 3),
        "neighbourhood_statistic": f"{TYPES[a]} next to {TYPES[b]}",
        "neighbourhood_auc": round(roc_auc_score(y, shares), 3),
        "share_pos": round(shares[y].mean(), 3),
        "share_neg": round(shares[~y].mean(), 3),
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
    """Put (seconds, peak MiB) of one training step on a bag of ``n`` patches into ``queue``."""
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
    start = time.perf_counter()
    model(features, torch.from_numpy(cells), grid=grid).logits.sum().backward()
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    queue.put((elapsed, (peak - before) / 1024))


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
    studies = ["design", "main", "control", "survival", *ABLATIONS, "cost", "large"]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", nargs="+", choices=studies, default=["design", "main"])
    parser.add_argument(
        "--models", nargs="*", help="only (re)run these model runs of a study, keep other rows"
    )
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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = pick_device()
    base = ContextSettings(kind=args.kind, slides=args.slides, patches=args.patches)
    ablated = earlier_ablations(args.folds)  # the default setting recurs in every ablation
    for study in args.study:
        record = {"study": study, "device": device.type, "args": vars(args) | {"work": None}}
        suffix = f"_width{args.width}" if study == "cost" and args.width else ""
        path = HERE / "results" / f"bench_context_{study}{suffix}.json"
        rows = record["rows"] = []
        if args.models and path.is_file():  # rerun some models: keep the other rows
            kept = json.loads(path.read_text())["rows"]
            rows.extend(row for row in kept if row["model"] not in args.models)
        if study == "design":
            for kind in ("margin", "aggregate", "control"):
                rows.append(
                    design_check(args.work, ContextSettings(**{**vars(base), "kind": kind}))
                )
            record["summary_fidelity"] = summary_fidelity(args.work, base)
            print("summary fidelity:", record["summary_fidelity"])
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

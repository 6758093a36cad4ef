"""The tiny workflow submitted to a real SLURM cluster through profiles/slurm, against a local run.

The SLURM run finishes a copy of the session's local tiny run (``tiny_run``) from which one
slide's tissue, patches and features and every model output were removed, so that every kind
of job (per-slide, GPU, training, evaluation, plots) goes through SLURM, at a third of the jobs
of a run from scratch. It must give the local run's files back: the same file set (exports that
other tests add to the local run aside), bit-identical features and identical results.
"""

import json
import re
import shutil
import subprocess
import time

import h5py
import numpy as np
import pytest
import yaml

from tests.helpers import ROOT, snakemake

pytestmark = pytest.mark.slurm

PROFILE = "profiles/slurm/config.yaml"
#: Exports that tests/workflow add to the local run; not part of the tiny config's run.
EXPORTS = ("clam", "stamp")
#: The slide whose per-slide outputs the SLURM run makes anew, and what it removes of it.
SLIDE = "demo_000"
REMOVED = (
    f"results/tissue/{SLIDE}.geojson", f"results/coords/{SLIDE}.h5",
    f"results/features/efficientnet_lite0/{SLIDE}.h5", "results/models", "results/eval",
    "results/plots", "results/heatmaps", "results/top_patches", "results/provenance.tsv",
    "results/qc/summary.tsv",
)  # fmt: skip
SLURM_ARGS = (
    "--workflow-profile", "profiles/slurm",
    # No job accounting on the test cluster: squeue lists finished jobs for MinJobAge.
    "--slurm-status-command", "squeue",
    # Short jobs: first status check after 2 s, not the default 40 s.
    "--slurm-init-seconds-before-status-checks", "2",
)  # fmt: skip


def _for_test_cluster(project, partition):
    """Point the copy's profiles/slurm at the test cluster: every rule on its partition."""
    profile = yaml.safe_load((project / PROFILE).read_text())
    profile["default-resources"].update(slurm_partition=partition, slurm_account="")
    for resources in profile.get("set-resources", {}).values():
        resources["slurm_partition"] = partition
    (project / PROFILE).write_text(yaml.safe_dump(profile))


def _timed_run(project, *args, cluster=None):
    start = time.monotonic()
    code, output = snakemake(project, *args)
    assert code == 0, output + (cluster.tail() if cluster else "")
    return time.monotonic() - start, output


def _results(project):
    return {p.relative_to(project) for p in (project / "results").rglob("*") if p.is_file()}


def _submitted_rules():
    """(rules submitted, rules whose jobs got a GPU), from the comment the plugin gives jobs."""
    rows = subprocess.run(
        ["squeue", "--states=all", "--noheader", "--Format=Comment:300,tres-per-job:100"],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    jobs = [(re.match(r"rule_(.+?)(_wildcards_.*)?$", row.split()[0])[1], row) for row in rows]
    return {rule for rule, _ in jobs}, {rule for rule, row in jobs if "gpu" in row.split()[1]}


def test_tiny_workflow_on_slurm_equals_the_local_run(slurm_cluster, tiny_run, tmp_path):
    local, _ = tiny_run
    on_slurm = tmp_path / "slurm"
    shutil.copytree(local, on_slurm, symlinks=True, ignore=shutil.ignore_patterns(*EXPORTS))
    for name in REMOVED:
        path = on_slurm / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    _for_test_cluster(on_slurm, slurm_cluster.partition)

    slurm_s, output = _timed_run(on_slurm, *SLURM_ARGS, cluster=slurm_cluster)
    submitted = output.count("has been submitted with SLURM jobid")
    times = {"slurm_s": round(slurm_s, 1), "slurm_jobs": submitted}
    (tmp_path / "wall_times.json").write_text(json.dumps(times, indent=2))
    print(f"\ntiny workflow wall time: {times}")

    assert submitted > 0, output
    # gpu=1 rules were submitted with --gpus=1, and the profile sends exactly these to its GPUs
    # (of the rules this run has: extract_feature_batch only runs with features.slides_per_job)
    profile = yaml.safe_load((ROOT / PROFILE).read_text())
    to_gpus = {
        rule for rule, res in profile["set-resources"].items() if res["slurm_partition"] == "gpu"
    }
    submitted_rules, gpu_rules = _submitted_rules()
    assert {"segment_tissue", "tile_slide", "build_region_grid", "plot_run"} <= submitted_rules
    assert {"extract_features", "train_model", "evaluate_model"} <= gpu_rules
    assert gpu_rules == to_gpus & submitted_rules

    files = {p for p in _results(local) if p.parts[1] not in EXPORTS}
    slurm_files = _results(on_slurm)
    assert slurm_files == files, (
        f"only local: {sorted(files - slurm_files)}\nonly on SLURM: {sorted(slurm_files - files)}"
    )
    features = [p for p in files if p.parts[1] == "features" and p.suffix == ".h5"]
    metrics = [p for p in files if p.name == "metrics.json"]
    assert features and metrics
    for path in features:
        with h5py.File(local / path) as ours, h5py.File(on_slurm / path) as theirs:
            for name in ("features", "coords"):
                assert np.array_equal(ours[name][:], theirs[name][:]), f"{path}: {name}"
    for path in metrics:
        assert json.loads((on_slurm / path).read_text()) == json.loads((local / path).read_text())
    for path in [p for p in files if p.name == "predictions.csv"] + ["results/eval/summary.tsv"]:
        assert (on_slurm / path).read_bytes() == (local / path).read_bytes(), path

"""What the workflow checks while it builds the DAG, before any job: inputs, settings, locks, GPUs.

Each test runs Snakemake for real on a copy of the workflow (mostly dry runs, ``-n``).
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml

from tests.helpers import ROOT, job_counts, snakemake, workflow_copy

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def registries(tmp_path_factory):
    """The registry catalogue a first DAG writes (encoders, models), to seed later copies."""
    project = workflow_copy(tmp_path_factory.mktemp("registries"))
    code, output = snakemake(project, "-n")
    assert code == 0, output
    return project / ".snakemake" / "querent" / "registries.json"


@pytest.fixture
def project(tmp_path, registries):
    """A copy of the workflow that already knows the registries (as after a first run)."""
    copy = workflow_copy(tmp_path / "project")
    (copy / ".snakemake" / "querent").mkdir(parents=True)
    shutil.copy(registries, copy / ".snakemake" / "querent" / "registries.json")
    return copy


def _root_config_only(project):
    """Make the copy run with the repository's config.yaml alone, as a fresh clone does."""
    (project / "tiny.yaml").write_text("{}\n")
    return project


#: The tiny config says demo.enabled: true; a user's own slides need it back at auto.
OWN = {"demo": {"enabled": "auto"}}


def _slides(folder, **files):
    folder.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        shutil.copy(source, folder / f"{name}.svs")
    return folder


def _planned_slides(output, rule="tile_slide"):
    """Slide wildcards of the jobs of ``rule`` in a dry run's plan."""
    blocks = output.split(f"rule {rule}:")[1:]
    return sorted(re.search(r"wildcards: slide=(\S+)", block).group(1) for block in blocks)


# --- 8: DAG construction imports no torch --------------------------------------------------


def test_what_common_smk_imports_loads_no_torch_or_timm():
    header = []  # the import block at the top of common.smk
    for line in (ROOT / "workflow/rules/common.smk").read_text().splitlines():
        if line and not line.startswith(("import ", "from ", " ", ")")):
            break
        header.append(line)
    header = "\n".join(header)
    modules = re.findall(r"^from (\S+) import", header, re.MULTILINE)
    modules += re.findall(r"^import (\S+)$", header, re.MULTILINE)
    assert "querent.pipeline.plan" in modules and "querent.pipeline" in modules
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "import extractors.encoders, querent.engine.runs\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'timm'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out) == []


def test_a_dry_run_never_imports_torch_even_the_first(tmp_path):
    project = workflow_copy(tmp_path)
    runner = tmp_path / "run.py"
    runner.write_text(
        "import atexit, sys\n"
        "atexit.register(lambda: print('heavy:', sorted({m.split('.')[0] for m in sys.modules}"
        " & {'torch', 'timm'})))\n"
        "from snakemake.cli import main\n"
        "sys.argv = ['snakemake', *sys.argv[1:]]\n"
        "main()\n"
    )
    for _ in range(2):  # the first asks a subprocess for the registries, the second its cache
        result = subprocess.run(
            [sys.executable, str(runner), "--cores", "1", "--configfile", "tiny.yaml", "-n"],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "heavy: []" in result.stdout + result.stderr
    assert (project / ".snakemake/querent/registries.json").exists()


# --- 1: the demo never replaces your slides ------------------------------------------------


def test_a_fresh_clone_runs_the_demo_and_your_folder_replaces_it(project, cmu_slide):
    _root_config_only(project)
    code, output = snakemake(project, "-n")
    assert code == 0, output
    assert job_counts(output)["make_demo_slide"] == 16
    slides = _slides(project / "lab", good=cmu_slide)
    code, output = snakemake(project, "-n", config={"slides": {"dir": str(slides)}})
    assert code == 0, output
    assert "make_demo_slide" not in job_counts(output)
    assert _planned_slides(output) == ["good"]


@pytest.mark.parametrize("key", ["dir", "sheet"])
def test_demo_enabled_with_your_slides_is_an_error_naming_both(project, cmu_slide, key):
    slides = _slides(project / "lab", good=cmu_slide)
    sheet = project / "lab.csv"
    sheet.write_text(f"path\n{slides / 'good.svs'}\n")
    config = yaml.safe_load((project / "config.yaml").read_text())
    config["demo"]["enabled"] = True  # in the same file, as a user edits config.yaml
    config["slides"][key] = str(slides if key == "dir" else sheet)
    (project / "config.yaml").write_text(yaml.safe_dump(config))
    _root_config_only(project)
    code, output = snakemake(project, "-n")
    assert code != 0
    assert "demo.enabled" in output and f"slides.{key}" in output and "Fix:" in output
    assert not (project / "results").exists() and not (project / "resources").exists()


# --- 2 and 9: every problem of the config, at once, before any job ---------------------------


def test_cross_field_problems_are_reported_together(project):
    config = {
        "tiling": {"patch_size": 128, "overlap": 128},
        "features": {"encoder": "uni_v3"},
        "models": {"big": {"arch": "querent", "topk": 3}},
        "cohort": {"classes": ["A", "B"], "task": "survival"},
        "plots": {"heatmap_slides": ["no_such_slide"]},
    }
    code, output = snakemake(project, "-n", config=config)
    assert code != 0
    assert "5 problems" in output, output
    for named in ("overlap", "uni_v3", "topk", "cohort.classes", "no_such_slide"):
        assert named in output, named
    assert not (project / "results").exists()


def test_schema_typo_and_model_value_problems_are_reported_together(project):
    config = {
        "models": {"querent": {"region_size": 0}},
        "training": {"epoch": 3},
        "tiling": {"patch_size": "big"},
    }
    code, output = snakemake(project, "-n", config=config)
    assert code != 0
    assert "3 problems" in output, output
    for line in (
        "tiling.patch_size: 'big' is not of type 'integer'",
        "training.epoch: unknown setting; did you mean `epochs`?",
        "models.querent.region_size: must be >= 1 (got 0)",
    ):
        assert f"  {line}\n" in output, line
    assert not (project / "results").exists()


# Every other problem is unit-tested in tests/querent/pipeline/test_plan.py; these few check
# that planning's problems reach the person through Snakemake.
@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"tiling": {"target_mpp": 0.25}}, "reach encoder efficientnet_lite0"),
        ({"features": {"dir": "lab"}, "slides": {"dir": "lab"}}, "features.dir and slides.dir"),
        ({"demo": {"enabled": "yes"}}, "demo.enabled"),
    ],
)  # fmt: skip
def test_conflicting_settings_stop_before_any_job(project, config, named):
    (project / "lab").mkdir()
    code, output = snakemake(project, "-n", config=config)
    assert code != 0
    assert named in output, output
    assert not (project / "results").exists()


def _sheet(path, text):
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("inputs", "named"),
    [
        (lambda p: {"slides": {"sheet": _sheet(p / "s.csv", "")}}, "cannot read it"),
        (lambda p: {"cohort": {"sheet": str(p / "nowhere.csv")}}, "set cohort.sheet"),
    ],
)  # fmt: skip
def test_missing_or_empty_inputs_stop_before_any_job(project, inputs, named):
    config = inputs(project)
    if "slides" in config:
        config.update(OWN)
    code, output = snakemake(project, "-n", config=config)
    assert code != 0
    assert named in output, output
    assert "Traceback" not in output
    assert not (project / "results").exists()


def test_a_split_file_with_other_folds_than_the_config_stops(project, synthetic_cohort):
    sheet, features = synthetic_cohort
    shutil.copytree(features, project / "lab/features")
    cohort = pd.read_csv(sheet, dtype=str)
    splits = cohort[["slide_id", "case_id"]].assign(
        fold=cohort["case_id"].rank(method="dense").astype(int) % 3
    )
    splits.to_csv(project / "lab/splits.csv", index=False)
    shutil.copy(sheet, project / "lab/cohort.csv")
    config = {
        "features": {"dir": "lab/features"},
        "cohort": {"sheet": "lab/cohort.csv"},
        "splits": {"file": "lab/splits.csv", "folds": 2},
    }
    code, output = snakemake(project, "-n", config=config)
    assert code != 0 and "has 3 folds" in output and "splits.folds: 3" in output, output


# --- 3: every bad file name or sheet row at once ------------------------------------------


def test_every_slide_folder_problem_is_listed_at_once(project):
    slides = project / "lab"
    for name in ("bad name.svs", "a/x.svs", "b/x.svs", "c/also bad.tif"):
        (slides / name).parent.mkdir(parents=True, exist_ok=True)
        (slides / name).write_bytes(b"")
    code, output = snakemake(project, "-n", config={**OWN, "slides": {"dir": str(slides)}})
    assert code != 0
    assert "3 problems" in output, output
    assert "'bad name'" in output and "'also bad'" in output and "x: " in output


# --- 4: symlinked sub-folders ---------------------------------------------------------------


def test_slides_in_symlinked_subfolders_are_planned(project, cmu_slide, tmp_path):
    elsewhere = _slides(tmp_path / "scanner2", second=cmu_slide)
    slides = _slides(project / "lab", first=cmu_slide)
    (slides / "batch2").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "loop").symlink_to(slides, target_is_directory=True)
    code, output = snakemake(project, "-n", config={**OWN, "slides": {"dir": str(slides)}})
    assert code == 0, output
    assert _planned_slides(output) == ["first", "second"]


# --- 5 and 2: per-slide settings re-plan their own slide only --------------------------------


def test_mpp_default_and_per_slide_mpp_replan_only_the_slides_without_mpp(
    project, cmu_slide, tcga_slide
):
    slides = _slides(project / "lab", good=cmu_slide, no_mpp=tcga_slide)
    coords = ["results/coords/good.h5", "results/coords/no_mpp.h5"]
    config = {**OWN, "slides": {"dir": str(slides), "mpp_default": 0.5}}
    code, output = snakemake(project, *coords, config=config)
    assert code == 0, output
    assert "Nothing to be done" in snakemake(project, "-n", *coords, config=config)[1]

    config["slides"]["mpp_default"] = 0.45
    code, output = snakemake(project, "-n", *coords, config=config)
    assert job_counts(output) == {"segment_tissue": 1, "tile_slide": 1}, output
    assert _planned_slides(output) == ["no_mpp"]

    config["slides"] = {"dir": str(slides), "per_slide": {"no_mpp": {"mpp": 0.25}}}
    code, output = snakemake(project, "-n", *coords, config=config)
    assert _planned_slides(output) == ["no_mpp"], output


def test_a_target_finer_than_a_slide_leaves_it_out_and_keeps_its_files(
    project, cmu_slide, relabelled_40x_slide
):
    slides = _slides(project / "lab", at20x=cmu_slide, at40x=relabelled_40x_slide)
    coords = ["results/coords/at20x.h5", "results/coords/at40x.h5"]
    config = {**OWN, "slides": {"dir": str(slides)}, "features": {"allow_mpp_mismatch": True}}
    code, output = snakemake(project, *coords, config=config)
    assert code == 0, output
    kept = (project / coords[0]).read_bytes()

    finer = {**config, "tiling": {"target_mpp": 0.3}}
    code, output = snakemake(project, "-n", config=finer)
    assert code == 0, output
    assert "'at20x' is left out" in output and "tiling.target_mpp >= 0.499" in output
    assert _planned_slides(output) == ["at40x"]
    code, output = snakemake(project, coords[1], config=finer)
    assert code == 0, output
    assert (project / coords[0]).read_bytes() == kept

    code, output = snakemake(project, "-n", *coords, config=config)  # revert: at40x only
    assert _planned_slides(output) == ["at40x"], output

    code, output = snakemake(project, "-n", config={**config, "tiling": {"target_mpp": 0.1}})
    assert code != 0 and "finer than level 0 of every slide" in output


# --- 6: a crashed run's lock ----------------------------------------------------------------


def _command(*args):
    return [sys.executable, "-m", "snakemake", "--cores", "1", "--configfile", "tiny.yaml", *args]


def test_rerunning_after_a_killed_run_removes_its_stale_lock(project):
    run = subprocess.Popen(
        _command(), cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    locks = project / ".snakemake/locks"
    deadline = time.monotonic() + 300
    while not list(locks.glob("*.lock")) and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(run.pid, signal.SIGKILL)  # the run and its jobs, as a crash or power loss
    run.wait()
    assert list(locks.glob("*.output.lock")), "the run ended before it was killed"

    result = subprocess.run(
        _command("--", "resources/demo/cohort.csv"), cwd=project, capture_output=True, text=True
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "removed the lock of a run that stopped" in output
    assert output.count("querent: removed") == 1


def test_a_lock_of_another_host_is_kept_and_the_message_says_what_to_type(project):
    locks = project / ".snakemake/locks"
    locks.mkdir(parents=True)
    (locks / "0.output.lock").write_text("resources/demo/cohort.csv\n")  # as Snakemake 9 writes
    owner = project / ".snakemake/querent/lock_owner.json"
    owner.write_text(json.dumps({"host": f"not-{socket.gethostname()}", "pid": 1}))
    result = subprocess.run(
        _command("--", "resources/demo/cohort.csv"), cwd=project, capture_output=True, text=True
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "`snakemake --unlock`, then your command again" in output
    assert (locks / "0.output.lock").exists()


# --- 7 and 9: GPU jobs ----------------------------------------------------------------------

GPU_PROBE = """

rule gpu_probe:
    output:
        "probe/{i}.txt",
    log:
        "logs/probe/{i}.log",
    resources:
        gpu=1,
    shell:
        "date +%s.%N > {output}; sleep 2; date +%s.%N >> {output}"
"""


def _gpu_run(project, visible, *args):
    with open(project / "Snakefile", "a") as snakefile:
        snakefile.write(GPU_PROBE)
    targets = [f"probe/{i}.txt" for i in range(4)]
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--configfile", "tiny.yaml", *args, "--", *targets],
        cwd=project,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": visible},
        capture_output=True,
        text=True,
        timeout=600,
    )
    return result.returncode, result.stdout + result.stderr


def _most_at_once(project):
    spans = [tuple(map(float, (project / f"probe/{i}.txt").read_text().split())) for i in range(4)]
    return max(sum(start <= t < end for start, end in spans) for t, _ in spans)


def test_gpu_jobs_run_one_per_cuda_device_at_once(project):
    code, output = _gpu_run(project, "0,1", "--cores", "4")
    assert code == 0, output
    assert _most_at_once(project) == 2


def test_asking_for_gpus_on_a_host_without_any_warns_and_runs_on_the_cpu(project):
    code, output = _gpu_run(project, "", "--cores", "4", "--resources", "gpu=2")
    assert code == 0, output
    assert "resources gpu=2" in output and "no CUDA device" in output

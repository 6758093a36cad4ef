"""Slides read from an S3 bucket and results written to one (docs/storage.md).

The bucket is a local S3 endpoint that the tests start themselves (moto's server, on a free
port); Snakemake talks to it through snakemake-storage-plugin-s3, as it would to AWS or MinIO.
"""

import io
import logging
import urllib.request

import boto3
import h5py
import pytest
from moto.server import ThreadedMotoServer

from extractors.errors import SlideDiscoveryError
from querent.pipeline.storage import bucket_slides, object_keys, storage_problems
from tests.helpers import default_config, job_counts, snakemake, workflow_copy

SLIDES = "s3://cohort/slides"
RESULTS = "s3://cohort/runs/first"


@pytest.fixture
def endpoint(monkeypatch):
    """URL of a fresh local S3 endpoint; the tests' processes get its (dummy) credentials."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")  # no user's profile applies
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    yield url
    # the buckets live in this process, not in the server: empty them for the next test
    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST"))
    server.stop()


@pytest.fixture
def client(endpoint):
    """A boto3 client of the endpoint, with the bucket ``cohort`` made."""
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="cohort")
    return s3


def _keys(client, prefix):
    return sorted(object_keys(client, prefix))


@pytest.mark.integration
@pytest.mark.slow
def test_slides_from_a_bucket_give_results_in_the_bucket_and_a_rerun_does_nothing(
    tmp_path, endpoint, client, cmu_slide
):
    client.upload_file(str(cmu_slide), "cohort", "slides/site_a/cmu-1-small-region.svs")
    client.put_object(Bucket="cohort", Key="slides/README.txt", Body=b"not a slide")
    project = workflow_copy(tmp_path / "project")
    storage = (
        *("--default-storage-provider", "s3", "--default-storage-prefix", RESULTS),
        *("--storage-s3-endpoint-url", endpoint),
    )
    target = "results/coords/cmu-1-small-region.h5"
    mine = {"demo": {"enabled": "auto"}, "slides": {"dir": SLIDES}}

    code, output = snakemake(project, target, *storage, config=mine)
    assert code == 0, output
    assert job_counts(output) == {"segment_tissue": 1, "tile_slide": 1}
    assert "Retrieving from storage: s3://cohort/slides/site_a/cmu-1-small-region.svs" in output
    made = {key.removeprefix("runs/first/") for key in _keys(client, RESULTS)}
    assert {
        "results/tissue/cmu-1-small-region.geojson",
        "results/thumbnails/cmu-1-small-region.jpg",
        "results/coords/cmu-1-small-region.h5",
        "logs/coords/cmu-1-small-region.log",
    } <= made
    # nothing beside the workflow (the end-of-run QC table reads local files: not made here)
    assert not list(project.glob("results/**/*.*"))
    coords = io.BytesIO()
    client.download_fileobj("cohort", "runs/first/results/coords/cmu-1-small-region.h5", coords)
    with h5py.File(coords) as h5:
        assert h5["coords"].shape[0] > 10 and h5["coords"].shape[1] == 2

    code, output = snakemake(project, target, *storage, config=mine)
    assert code == 0, output
    assert "Nothing to be done" in output and job_counts(output) == {}
    # the default target plans the remaining stages into the bucket (the QC table left out)
    code, output = snakemake(project, "-n", *storage, config=mine)
    assert code == 0, output
    planned = job_counts(output)
    assert planned.get("extract_features", 0) + planned.get("extract_feature_batch", 0) == 1
    assert "qc_summary" not in planned
    # and the demo cohort's, trained, plotted and drawn (heatmaps, top patches) in the bucket
    code, output = snakemake(project, "-n", *storage)
    assert code == 0, output
    planned = job_counts(output)
    assert {"train_model", "plot_run", "draw_heatmaps", "top_patches"} <= set(planned)
    assert "qc_summary" not in planned


def test_bucket_folder_problems_are_listed_at_once_with_the_fix(client):
    for key in ("a/one.svs", "b/one.svs", "scan.mrxs", "bad id.svs", ".hidden.svs", "notes.txt"):
        client.put_object(Bucket="cohort", Key=f"slides/{key}", Body=b"")
    with pytest.raises(SlideDiscoveryError) as err:
        bucket_slides(SLIDES, lambda url: object_keys(client, url))
    message = str(err.value)
    assert message.startswith(f"slides.dir {SLIDES}: 3 problems")
    assert "s3://cohort/slides/scan.mrxs: a .mrxs slide is several files" in message
    assert "'bad id'" in message
    assert "duplicate slide ids (one: s3://cohort/slides/a/one.svs, s3://cohort" in message

    client.delete_object(Bucket="cohort", Key="slides/scan.mrxs")
    client.delete_object(Bucket="cohort", Key="slides/bad id.svs")
    client.delete_object(Bucket="cohort", Key="slides/b/one.svs")
    entries = bucket_slides(SLIDES + "/", lambda url: object_keys(client, url))
    assert [(e.slide_id, e.path) for e in entries] == [("one", "s3://cohort/slides/a/one.svs")]


def test_a_bucket_that_cannot_be_listed_or_no_plugin_names_the_key_and_the_fix(client):
    with pytest.raises(SlideDiscoveryError, match=r"slides.dir s3://missing/x: cannot list .*"):
        object_keys(client, "s3://missing/x")
    with pytest.raises(SlideDiscoveryError, match=r"--storage-s3-endpoint-url"):
        object_keys(client, "s3://missing/x")
    with pytest.raises(SlideDiscoveryError, match=r"pip install 'querent\[s3\]'"):
        bucket_slides(SLIDES, None)
    with pytest.raises(SlideDiscoveryError, match=r"holds no slide"):
        bucket_slides("s3://cohort/empty", lambda url: object_keys(client, url))


def test_annotations_with_results_in_a_bucket_are_refused_naming_the_key():
    config = default_config(slides={"annotations": "regions"})
    assert storage_problems(config, results_in_bucket=False) == []
    (problem,) = storage_problems(config, results_in_bucket=True)
    assert problem.startswith("slides.annotations is a local folder") and "Fix:" in problem

"""Slides in an S3 bucket and results written to one, through Snakemake's S3 storage plugin.

``slides.dir: s3://bucket/folder`` is listed while the DAG is built (every object whose name has
a slide extension is a slide); each slide job gets the object as a storage input, which the
plugin downloads to a local file before the job starts (OpenSlide reads only local files).
Results go to a bucket with Snakemake's own ``--default-storage-provider s3``
(``docs/storage.md``). Nothing here imports boto3 or Snakemake: the listing client comes from
the plugin, through Snakemake's storage registry.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable, Mapping
from pathlib import PurePosixPath
from typing import Any

from extractors.errors import SlideDiscoveryError
from extractors.wsi.discovery import SlideEntry, check_slide_id
from extractors.wsi.formats import SLIDE_EXTENSIONS, slide_id_from_path

#: The URL scheme of the objects that the S3 storage plugin reads and writes.
BUCKET_SCHEME = "s3://"
#: Formats whose slide is several files (an index file beside a folder, a folder of .dcm
#: files): a job fetches one object, so these are read from a file system only.
MULTI_FILE_EXTENSIONS = (".mrxs", ".vms", ".vmu", ".dcm")
#: Single-file slide formats, which a job can fetch from a bucket alone.
BUCKET_EXTENSIONS = tuple(ext for ext in SLIDE_EXTENSIONS if ext not in MULTI_FILE_EXTENSIONS)
#: Where a bucket's endpoint and credentials are set, for the messages' fixes.
ACCESS_FIX = (
    "check the bucket name, the endpoint (--storage-s3-endpoint-url, needed for MinIO, Ceph and "
    "other S3-compatible stores) and the credentials (AWS_ACCESS_KEY_ID and "
    "AWS_SECRET_ACCESS_KEY, or --storage-s3-access-key and --storage-s3-secret-key)"
)
#: Installs the plugin.
INSTALL_FIX = "pip install 'querent[s3]' (snakemake-storage-plugin-s3)"

#: Lists the object keys under an ``s3://`` URL.
KeyLister = Callable[[str], list[str]]


def is_bucket_url(path: Any) -> bool:
    """Whether ``path`` names an object or folder in an S3 bucket (``s3://...``)."""
    return isinstance(path, str) and path.startswith(BUCKET_SCHEME)


def split_url(url: str) -> tuple[str, str]:
    """``(bucket, key prefix)`` of an ``s3://bucket/folder`` URL; the prefix ends with ``/``."""
    bucket, _, prefix = url[len(BUCKET_SCHEME) :].partition("/")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def object_keys(client: Any, url: str) -> list[str]:
    """Keys of every object under ``url``, with a boto3 S3 client (all pages).

    Raises:
        SlideDiscoveryError: The bucket cannot be listed (missing, no access, no endpoint).
    """
    import botocore.exceptions  # installed with the S3 storage plugin

    bucket, prefix = split_url(url)
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", ())]
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as err:
        raise SlideDiscoveryError(
            f"slides.dir {url}: cannot list the bucket ({err}). Fix: {ACCESS_FIX}."
        ) from err


def bucket_slides(url: str, list_keys: KeyLister | None) -> list[SlideEntry]:
    """The slides under a bucket URL, by slide id; each entry's path is its object's URL.

    Objects are found at any depth under the URL, named like files in a folder
    (:func:`~extractors.wsi.formats.slide_id_from_path`).

    Args:
        url: ``slides.dir``, ``s3://bucket/folder``.
        list_keys: Lists the keys under a URL (:func:`bucket_lister`); None: the S3 storage
            plugin is not installed.

    Raises:
        SlideDiscoveryError: No plugin, an unreadable bucket, no slide, multi-file formats,
            unsafe or duplicate slide ids (every problem, one line each).
    """
    bucket, prefix = split_url(url)
    if not bucket:
        raise SlideDiscoveryError(
            f"slides.dir {url!r} names no bucket. Fix: slides.dir: s3://BUCKET/FOLDER."
        )
    if list_keys is None:
        raise SlideDiscoveryError(
            f"slides.dir {url} is in an S3 bucket, but the S3 storage plugin is not installed. "
            f"Fix: {INSTALL_FIX}."
        )
    names = [key for key in list_keys(url) if not PurePosixPath(key).name.startswith(".")]
    entries, problems = [], []
    for key in names:
        extension = next((e for e in MULTI_FILE_EXTENSIONS if key.lower().endswith(e)), None)
        if extension:
            problems.append(
                f"s3://{bucket}/{key}: a {extension} slide is several files, and a job fetches "
                "one object. Fix: copy such slides to a local folder and name them in a slide "
                "sheet (slides.sheet), or convert them to one file (e.g. pyramidal .tif)."
            )
        elif key.lower().endswith(BUCKET_EXTENSIONS):
            entries.append(
                SlideEntry(slide_id_from_path(PurePosixPath(key).name), f"s3://{bucket}/{key}")
            )
    if not entries and not problems:
        raise SlideDiscoveryError(
            f"slides.dir {url} holds no slide (looked for {', '.join(BUCKET_EXTENSIONS)} under "
            f"{prefix or 'the bucket root'}). Fix: point slides.dir at the folder of your slides."
        )
    for entry in entries:
        try:
            check_slide_id(entry.slide_id, str(entry.path))
        except SlideDiscoveryError as err:
            problems.append(str(err))
    problems += _duplicates(entries)
    if len(problems) == 1:
        raise SlideDiscoveryError(f"slides.dir {url}: {problems[0]}")
    if problems:
        lines = "\n".join(f"  {problem}" for problem in problems)
        raise SlideDiscoveryError(
            f"slides.dir {url}: {len(problems)} problems, fix them all:\n{lines}"
        )
    return sorted(entries, key=lambda entry: entry.slide_id)


def _duplicates(entries: Iterable[SlideEntry]) -> list[str]:
    """One line per slide id that two objects share."""
    by_id: dict[str, list[str]] = {}
    for entry in entries:
        by_id.setdefault(entry.slide_id, []).append(str(entry.path))
    return [
        f"duplicate slide ids ({slide}: {', '.join(urls)}). Fix: rename the objects so that "
        "their names differ."
        for slide, urls in sorted(by_id.items())
        if len(urls) > 1
    ]


def bucket_lister(storage: Any) -> KeyLister | None:
    """A :data:`KeyLister` that lists with the S3 storage plugin's own client (None: no plugin).

    Args:
        storage: Snakemake's storage registry (``storage`` in a Snakefile): the client it gives
            has the endpoint and credentials of the command line and the environment, the same
            that the jobs' downloads use.
    """
    if importlib.util.find_spec("snakemake_storage_plugin_s3") is None:
        return None

    def list_keys(url: str) -> list[str]:
        provider = storage.s3(url).flags["storage_object"].provider
        return object_keys(provider.s3c.meta.client, url)

    return list_keys


def storage_problems(config: Mapping, results_in_bucket: bool) -> list[str]:
    """Settings that cannot work with results in a bucket (``--default-storage-provider``).

    Under a default storage provider every input that no rule makes is looked up in the
    bucket; the user's own files are kept local where the workflow knows them (slides, cohort
    sheet, split file, stain reference, feature files), but the annotations are read by path.
    """
    if results_in_bucket and config["slides"]["annotations"]:
        return [
            "slides.annotations is a local folder, but --default-storage-provider would look for "
            "its files in the bucket. Fix: run without --default-storage-provider (the slides "
            "can stay in the bucket: slides.dir: s3://...), or empty slides.annotations."
        ]
    return []

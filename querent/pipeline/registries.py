"""What planning needs of the encoder and model registries, without importing torch.

Planning must not import torch (seconds, and a job on a cluster node parses the Snakefile
too). ``python -m querent.pipeline.registries MODELS`` imports the registries and prints, as
JSON, each encoder's resolution, the model runs' arguments, what the models' own checks refuse
in the config's runs (``MODELS``, its ``models`` section as JSON) and the tasks' minimum batch
sizes. The planner starts it at once (:func:`start`), goes on with the slides, and reads its
answer when it needs it (:func:`finish`); the answer is kept in a cache file until the
registries' source files or the ``models`` section change.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Mapping
from importlib.util import find_spec
from pathlib import Path

from extractors.errors import QuerentError
from extractors.io import atomic_path

#: Source folders whose modules define the registries: (package, sub-folders).
SOURCES = (("extractors", ("encoders",)), ("querent", ("models", "engine")))


class RegistryError(QuerentError):
    """The registries could not be read (a broken torch or timm install)."""


def run_problems(models: Mapping) -> dict[str, list[str]]:
    """Run name -> what its model's own checks refuse in the config's ``models`` section.

    Runs whose ``arch`` or argument names are unknown are left to
    :func:`querent.engine.runs.model_run`, which names them.
    """
    from querent.engine.runs import RUN_KEYS, model_arguments
    from querent.models.registry import argument_problems

    known = model_arguments()
    problems = {}
    for name, spec in models.items():
        given = {key: value for key, value in spec.items() if key not in RUN_KEYS}
        arch = spec.get("arch")
        if arch in known and set(given) <= set(known[arch]):
            problems[name] = argument_problems(arch, given)
    return problems


def read_registries(models: Mapping) -> dict:
    """The registries as plain data, with :func:`run_problems` (imports torch and timm)."""
    from extractors.encoders import get_encoder_spec, list_encoders
    from extractors.extract import MPP_MISMATCH_TOLERANCE
    from querent.engine.runs import model_arguments
    from querent.engine.tasks import TASKS

    encoders = {}
    for name in list_encoders():
        spec = get_encoder_spec(name)
        encoders[name] = {
            "native_mpp": spec.native_mpp,
            "input_px": spec.resize_size or spec.input_size,
        }
    return {
        "encoders": encoders,
        "mpp_tolerance": MPP_MISMATCH_TOLERANCE,
        "models": model_arguments(),
        "run_problems": run_problems(models),
        "min_batch": {name: task.min_batch for name, task in TASKS.items()},
    }


def source_key(models: str) -> str:
    """Changes whenever the answer may: sources, this module, this Python, ``models`` (JSON)."""
    digest = hashlib.sha1(f"{sys.executable}\n{models}\n".encode())
    for path in [Path(__file__)] + [
        source
        for package, folders in SOURCES
        for folder in folders
        for source in sorted((Path(find_spec(package).origin).parent / folder).glob("*.py"))
    ]:
        info = path.stat()
        digest.update(f"{path}:{info.st_size}:{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def start(cache: Path, models: Mapping) -> tuple[str, dict | subprocess.Popen]:
    """The registries from ``cache``, or a subprocess started now that reads them.

    Args:
        cache: The cache file.
        models: The config's ``models`` section (its runs are checked).

    Returns:
        The source key and either the cached registries or the running subprocess, to pass to
        :func:`finish`.
    """
    runs = json.dumps(models, sort_keys=True)
    key = source_key(runs)
    try:
        cached = json.loads(cache.read_text())
        if cached["key"] == key:
            return key, cached["registries"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    reader = subprocess.Popen(
        [sys.executable, "-m", __name__, runs],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return key, reader


def finish(started: tuple[str, dict | subprocess.Popen], cache: Path) -> dict:
    """The registries: from :func:`start`'s cache hit, or its subprocess (then kept in ``cache``).

    Raises:
        RegistryError: The subprocess failed; its error output ends the message.
    """
    key, reader = started
    if isinstance(reader, dict):
        return reader
    out, err = reader.communicate()
    if reader.returncode != 0:
        raise RegistryError(
            "could not read the encoder and model registries (the environment's torch or timm "
            f"failed to import?):\n{err.strip()[-2000:]}"
        )
    registries = json.loads(out)
    with atomic_path(cache) as tmp:
        tmp.write_text(json.dumps({"key": key, "registries": registries}))
    return registries


if __name__ == "__main__":
    json.dump(read_registries(json.loads(sys.argv[1])), sys.stdout)

"""Checkpoints: the deployable ``model.pt`` and the ``resume.pt`` that continues a killed run.

Both load with ``torch.load(path, weights_only=True)``: state dicts, tensors and plain data
(str, int, float, bool, None, lists, tuples, dicts), no pickled code.

``model.pt``: ``state_dict`` (the selected epoch's weights), ``run`` (arch and model settings,
training settings), ``task`` (fitted task state: class order or time-bin edges), ``encoder``,
``in_dim``, ``fold``, ``epoch``, ``metric``, ``querent_version``, ``git_revision``,
``provenance`` (:func:`querent.engine.provenance.provenance`).

``resume.pt`` (beside it, deleted when training ends): the last completed epoch's model,
optimizer, scheduler and RNG states, the best epoch so far, the history and the patience count.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from extractors.errors import FileFormatError
from extractors.io import atomic_path


def save(payload: dict, path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load(path: str | Path) -> dict:
    """Load a checkpoint with ``weights_only=True``.

    Raises:
        FileFormatError: Missing or not a checkpoint; the message names the file.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as err:
        raise FileFormatError(
            f"{path}: not a readable checkpoint ({err}); train the model again."
        ) from err


def rng_state() -> dict:
    """The global RNG states that training touches (torch, numpy, random)."""
    numpy_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)),
                  *numpy_state[2:]],
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }  # fmt: skip


def set_rng_state(state: dict) -> None:
    """Restore :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    random.setstate(_tuples(state["python"]))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(value: object) -> object:
    """Lists back to tuples (``random.setstate`` wants its nested tuples)."""
    if isinstance(value, list | tuple):
        return tuple(_tuples(v) for v in value)
    return value

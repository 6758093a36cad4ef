"""Find and load encoder weights: local file -> package -> Hugging Face cache -> hub download.

1. An explicit checkpoint (argument, config ``features.checkpoint`` or the environment variable
   ``QUERENT_WEIGHTS_<NAME>``) always wins.
2. Weights shipped inside an installed package (the embedded default encoder).
3. The Hugging Face cache, without network (works with ``HF_HUB_OFFLINE=1``).
4. A hub download with the user's token (``HF_TOKEN`` or ``hf auth login``).

A gated model without access, or no network, ends in :class:`WeightsError` with a message that
says how to provide a local checkpoint.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
)
from torch import nn

from extractors.encoders.registry import EncoderSpec
from extractors.errors import WeightsError

__all__ = ["load_weights", "locate_weights", "read_state_dict", "weights_env_var"]

logger = logging.getLogger(__name__)


def weights_env_var(name: str) -> str:
    """Environment variable that points at a local checkpoint for encoder ``name``."""
    return f"QUERENT_WEIGHTS_{name.upper()}"


def _how_to_fix(spec: EncoderSpec) -> str:
    env = weights_env_var(spec.name)
    steps = []
    if spec.hf_repo:
        access = " (gated: request access on its page, then `hf auth login`)" if spec.gated else ""
        steps.append(
            f"download {spec.hf_filename} from https://huggingface.co/{spec.hf_repo}{access} on a "
            "machine with internet"
        )
    steps.append(f"pass it with --checkpoint PATH, config features.checkpoint, or {env}=PATH")
    return "Fix: " + "; then ".join(steps) + "."


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch pickle (``.bin``, ``.pth``, ``.pt``).

    Wrappers such as ``{"state_dict": ...}`` or ``{"model": ...}`` and a ``module.`` prefix
    (DataParallel) are removed.
    """
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "teacher"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return {k.removeprefix("module."): v for k, v in state.items()}


def locate_weights(spec: EncoderSpec, checkpoint: str | Path | None = None) -> tuple[Path, str]:
    """Find the weight file of an encoder.

    Returns:
        ``(path, source)``; source is ``local:PATH``, ``package:NAME``, ``hf-cache:REPO`` or
        ``hf-hub:REPO``.

    Raises:
        WeightsError: Nowhere to be found; the message says how to provide a local file.
    """
    checkpoint = checkpoint or os.environ.get(weights_env_var(spec.name))
    if checkpoint:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise WeightsError(f"encoder {spec.name}: checkpoint {path} does not exist.")
        return path, f"local:{path.resolve()}"
    if spec.package_weights is not None:
        return spec.package_weights(), f"package:{spec.name}"
    if spec.hf_repo is None:
        raise WeightsError(f"encoder {spec.name} has no published weights. {_how_to_fix(spec)}")
    try:
        cached = hf_hub_download(spec.hf_repo, spec.hf_filename, local_files_only=True)
        return Path(cached), f"hf-cache:{spec.hf_repo}"
    except LocalEntryNotFoundError:
        if hf_constants.HF_HUB_OFFLINE:
            raise WeightsError(
                f"encoder {spec.name}: {spec.hf_filename} of {spec.hf_repo} is not in the Hugging "
                f"Face cache and HF_HUB_OFFLINE is set. {_how_to_fix(spec)}"
            ) from None
    logger.info("downloading %s from %s", spec.hf_filename, spec.hf_repo)
    try:
        return Path(hf_hub_download(spec.hf_repo, spec.hf_filename)), f"hf-hub:{spec.hf_repo}"
    except GatedRepoError:
        reason = "you have no access to this gated model"
    except LocalEntryNotFoundError:  # a subclass of EntryNotFoundError: check it first
        reason = "the hub cannot be reached (no network?) and the file is not in the cache"
    except (RepositoryNotFoundError, EntryNotFoundError):
        reason = "the repository or file was not found (or needs a login)"
    except (HfHubHTTPError, OSError, ValueError) as err:
        reason = f"the download failed ({type(err).__name__}: {err})"
    raise WeightsError(f"encoder {spec.name}: {reason}. {_how_to_fix(spec)}")


def load_weights(spec: EncoderSpec, model: nn.Module, checkpoint: str | Path | None = None) -> str:
    """Load an encoder's weights into ``model``; every key must fit.

    The checkpoint's tensors replace the model's (cast to the model's dtypes), so ``model`` may
    be built on the meta device: no time goes into initialising weights that are replaced.

    Returns:
        Where the weights came from (see :func:`locate_weights`).

    Raises:
        WeightsError: Missing weights, or a checkpoint whose keys or shapes do not fit.
    """
    path, source = locate_weights(spec, checkpoint)
    expected = f"is it the checkpoint of {spec.hf_repo or spec.name}?"
    try:
        state = read_state_dict(path)
    except (RuntimeError, OSError, ValueError, EOFError) as err:
        raise WeightsError(f"encoder {spec.name}: cannot read {path}: {err}") from err
    try:
        if spec.remap_state_dict is not None:
            state = spec.remap_state_dict(state)
        dtypes = {name: t.dtype for name, t in model.state_dict().items()}
        state = {k: v.to(dtypes[k]) if k in dtypes else v for k, v in state.items()}
        result = model.load_state_dict(state, strict=False, assign=True)
    except (KeyError, RuntimeError) as err:  # names the remap does not know, or other shapes
        raise WeightsError(
            f"encoder {spec.name}: {path} does not fit the architecture ({err}); {expected}"
        ) from err
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    unexpected = [k for k in result.unexpected_keys if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise WeightsError(
            f"encoder {spec.name}: {path} does not fit the architecture (missing keys "
            f"{missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected keys "
            f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''}); {expected}"
        )
    on_meta = [name for name, t in model.state_dict().items() if t.is_meta]
    if on_meta:  # a model built on the meta device keeps no tensor the checkpoint lacks
        raise WeightsError(f"encoder {spec.name}: {path} leaves {on_meta[:5]} unset; {expected}")
    logger.info("encoder %s: weights from %s", spec.name, source)
    return source

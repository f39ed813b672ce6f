"""Checkpoint files: the format, weights-only loading, atomic saving.

A checkpoint is a plain dict saved with ``torch.save`` and loadable with
``torch.load(weights_only=True)`` (no pickled code): ``format`` (:data:`FORMAT`),
``iteration``, ``model_config`` (a :class:`~affinity_dist.nn.config.UNetConfig` as a
dict), ``model_state`` (the weights) and optional extras (``normalization``, optimizer
state in a training run's ``checkpoint.pt``).

Inference workers load models from here without importing the training code; torch is
imported only when a checkpoint is read or written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError, InputNotFoundError
from .config import UNetConfig

__all__ = ["FORMAT", "file_sha256", "load_checkpoint", "save_model"]

FORMAT = "affinity_dist.checkpoint/1"


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file (a checkpoint's identity in run keys and model cards)."""
    import hashlib

    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


def load_checkpoint(path: str | os.PathLike[str], option: str = "--model"
                    ) -> tuple[Any, UNetConfig, dict[str, Any]]:
    """A model and its configuration from a checkpoint, loaded weights-only.

    Raises InputNotFoundError / ConfigError with one clear line for a missing file, a
    file that is not an affinity_dist checkpoint, or weights that do not fit the config.
    """
    import torch

    from .config import build_model

    if not Path(path).is_file():
        raise InputNotFoundError(f"{option}: got {str(path)!r}, expected a checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable file is a bad input
        raise ConfigError(f"{option}: got {str(path)!r}, expected a weights-only torch "
                          f"checkpoint ({type(err).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ConfigError(f"{option}: got {str(path)!r}, expected an affinity_dist checkpoint")
    config = UNetConfig.from_dict(state["model_config"])
    model = build_model(config)
    try:
        model.load_state_dict(state["model_state"])
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if "\n" in str(err) else str(err)
        raise ConfigError(f"{option}: weights in {str(path)!r} do not fit its model "
                          f"configuration ({first})") from None
    return model, config, state


ARCHITECTURE = ("downsample_factors", "num_fmaps", "fmap_inc_factor", "kernel_size", "padding",
                "norm", "in_channels")


def initialise_from(model: Any, config: UNetConfig, path: str | os.PathLike[str]) -> int:
    """Start ``model`` from the weights of checkpoint ``path`` (``--init``): the same
    architecture is required; the head's rows are copied for every output the two share
    (the affinity offsets they both have, the LSDs), the others keep their fresh
    initialisation. Returns the number of head channels copied."""
    import torch

    source, src_config, _ = load_checkpoint(path, option="--init")
    for name in ARCHITECTURE:
        a, b = getattr(src_config, name), getattr(config, name)
        if a != b:
            raise ConfigError(f"--init: got {str(path)!r} with {name} {_plain(a)}, expected "
                              f"the training config's {_plain(b)}")
    weights = source.state_dict()
    own = model.state_dict()
    pairs = [(config.offsets.index(o), src_config.offsets.index(o))
             for o in config.offsets if o in src_config.offsets]
    if config.lsds and src_config.lsds:
        pairs += [(len(config.offsets) + k, len(src_config.offsets) + k) for k in range(10)]
    with torch.no_grad():
        for key, value in weights.items():
            if key.startswith("head."):
                for mine, theirs in pairs:
                    own[key][mine] = value[theirs]
            else:
                own[key].copy_(value)
    model.load_state_dict(own)
    return len(pairs)


def _plain(value: Any) -> str:
    return str(list(value)) if isinstance(value, tuple) else repr(value)


def save_model(path: str | os.PathLike[str], model: Any, config: UNetConfig, *,
               iteration: int = 0, **extra: Any) -> Path:
    """Write a weights-only model file (what ``predict`` loads) for ``model``."""
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "iteration": iteration, "model_config": config.to_dict(),
               "model_state": weights, "normalization": "uint8/255", **extra}
    _save(Path(path), payload)
    return Path(path)


def _save(path: Path, payload: dict[str, Any]) -> None:
    """``torch.save`` through a temporary file: a crash never leaves half a checkpoint."""
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)  # atomic: a crash never leaves half a checkpoint

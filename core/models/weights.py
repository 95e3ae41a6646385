"""Weights made elsewhere, read safely and fitted to a model with errors a user can act on.

A weights file is a plain state dict (``torch.save(model.state_dict(), f)``), a training
checkpoint that holds one (timm: ``state_dict`` / ``state_dict_ema``; torchvision's reference
scripts: ``model``), or a ``.safetensors`` file. Torch files load with ``weights_only=True``
(only ``argparse.Namespace``, the ``args`` both libraries' checkpoints carry, is allowed beside
tensors and primitives: a plain attribute bag, never code); safetensors with its own loader.
Prefixes that wrappers add (``module.`` of DDP and EMA wrappers, ``_orig_mod.`` of
``torch.compile``) are stripped, and an ``AveragedModel``'s update counter dropped.
"""

from __future__ import annotations

import argparse
import io
from typing import Any

import torch
from torch import nn

from core.errors import UserError
from core.store import storage

# Where a training checkpoint keeps its weights, in timm's order (EMA weights first: timm's own
# `load_checkpoint(use_ema=True)` default, and the ones its training scripts evaluate).
NESTED_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
AVERAGED_COUNTER = "n_averaged"  # torch's AveragedModel (torchvision's `model_ema`) counts its updates
SAFETENSORS_SUFFIX = ".safetensors"


def _looks_like_safetensors(data: bytes) -> bool:
    """8-byte little-endian header length, then the JSON header."""
    return len(data) > 9 and data[8:9] == b"{" and int.from_bytes(data[:8], "little") < len(data)


def _load_safetensors(data: bytes, location: str) -> dict[str, Any]:
    try:
        from safetensors.torch import load
    except ImportError as err:
        raise UserError(f"weights {location}: a .safetensors file needs safetensors; "
                        "pip install transferset[timm]") from err
    try:
        return dict(load(data))
    except Exception as err:  # safetensors raises its own error types for a damaged header
        raise UserError(f"weights {location}: not a readable .safetensors file ({str(err).splitlines()[0]})") from err


def _load_torch(data: bytes, location: str) -> Any:
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a damaged or unsafe file
        raise UserError(f"weights {location}: cannot be loaded safely ({str(err).splitlines()[0]}); give a state "
                        "dict of tensors (torch.save(model.state_dict(), f)) or a .safetensors file") from err


def _unwrap(payload: Any, location: str) -> dict[str, torch.Tensor]:
    if isinstance(payload, dict) and not all(isinstance(v, torch.Tensor) for v in payload.values()):
        nested = next((key for key in NESTED_KEYS if isinstance(payload.get(key), dict) and payload[key]), None)
        if nested is None:
            raise UserError(f"weights {location}: neither a state dict of tensors nor a checkpoint with one of "
                            f"{list(NESTED_KEYS)} (found keys {sorted(map(str, payload))[:6]})")
        payload = payload[nested]
    if not isinstance(payload, dict) or not payload:
        raise UserError(f"weights {location}: not a state dict (found {type(payload).__name__})")
    stray = next((k for k, v in payload.items() if not isinstance(v, torch.Tensor)), None)
    if stray is not None:
        raise UserError(f"weights {location}: entry {stray!r} is a {type(payload[stray]).__name__}, not a tensor")
    state = {}
    for key, tensor in payload.items():
        name = str(key)
        if name == AVERAGED_COUNTER:
            continue
        while name.startswith(WRAPPER_PREFIXES):
            name = next(name[len(p):] for p in WRAPPER_PREFIXES if name.startswith(p))
        state[name] = tensor
    return state


def read_state_dict(location: str) -> dict[str, torch.Tensor]:
    """The state dict in the file at ``location`` (a path or fsspec URL), read safely."""
    if not storage.is_file(location):
        raise UserError(f"weights {location}: file not found")
    data = storage.read_bytes(location)
    if str(location).endswith(SAFETENSORS_SUFFIX) or _looks_like_safetensors(data):
        return _unwrap(_load_safetensors(data, location), location)
    payload = _load_torch(data, location)
    if isinstance(payload, dict) and isinstance(payload.get("format"), str) and "state_dict" in payload:
        payload = payload["state_dict"]  # a transferset checkpoint: its weights
    return _unwrap(payload, location)


def _shape(value: Any) -> tuple[int, ...] | str:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


def fit_state_dict(model: nn.Module, state: dict[str, Any], where: str, arch: str,
                   arch_kwargs: dict[str, Any] | None = None, classes: int | None = None) -> None:
    """Load ``state`` into ``model`` strictly. Refused, in one line: missing or unexpected keys
    (the weights of another arch), a head of another width than ``classes`` (the data's
    classes), a tensor of another shape."""
    own = model.state_dict()
    described = f"arch {arch!r}" + (f" with {arch_kwargs}" if arch_kwargs else "")
    # torch fills a BatchNorm's step counter absent from old state dicts itself
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise UserError(f"{where}: weights do not fit {described} ({len(missing)} missing, e.g. {missing[:3]}; "
                        f"{len(unexpected)} unexpected, e.g. {unexpected[:3]})")
    wrong = [(k, v) for k, v in state.items() if _shape(v) != tuple(own[k].shape)]
    for name, tensor in wrong:
        mine, theirs = tuple(own[name].shape), _shape(tensor)
        if classes is not None and isinstance(theirs, tuple) and len(theirs) == len(mine) \
                and mine[0] == classes and theirs[1:] == mine[1:]:
            raise UserError(f"{where}: the weights' head {name!r} has {theirs[0]} classes, the data has {classes}; "
                            "import a model trained on these classes (or fine-tune it first)")
    if wrong:
        name, tensor = wrong[0]
        raise UserError(f"{where}: weight {name!r} has shape {_shape(tensor)}, {described} needs "
                        f"{tuple(own[name].shape)}")
    model.load_state_dict(state, strict=False)

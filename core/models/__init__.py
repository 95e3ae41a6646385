"""Model registry and the self-describing checkpoint format.

A checkpoint is a plain dict of tensors and primitives, loaded with ``weights_only=True``::

    {format, arch, arch_kwargs, task, num_classes,
     input: {size, channels, mean, std, interpolation?, crop_pct?},
     state_dict, train: {...}, pruned?: {method, widths, ...}}

A regression checkpoint (``task: regress``) has ``out_dim`` and ``logvar_dim`` instead of
``num_classes``: its model outputs μ (``out_dim`` values) then s = log σ² (``logvar_dim`` values,
1 for the isotropic Gaussian of XCL's gaze models); :func:`core.tasks.regression.split_gaussian`
cuts the output. What a task's checkpoint says it predicts is the task's (:mod:`core.tasks`).

``input`` may also say ``interpolation`` and ``crop_pct`` (:mod:`core.models.contracts`; older
checkpoints mean bilinear, no crop). ``arch`` is a registry name, ``timm:<name>``,
``torchvision:<name>`` (:mod:`core.models.zoo`), or ``module:factory``. A checkpoint may
only name a ``module:factory`` that the user's config also names: a checkpoint is data, and data
must not choose which code runs.
"""

from __future__ import annotations

import hashlib
import importlib
import io
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.errors import UserError
from core.models.contracts import check_contract
from core.models.nets import LeNet, PreActResNet
from core.models.pruned import check_record, rebuild
from core.models.weights import fit_state_dict
from core.models.zoo import library_builder, library_of
from core.options.train import ARCH_NAMES
from core.store import storage
from core.tasks import task_named

CHECKPOINT_FORMAT = "transferset-checkpoint/1"


class TinyCNN(nn.Module):
    """Two conv blocks and a linear head: a fast model for small images (digits, tests)."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 16, hidden: int = 0) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )
        features = 2 * width * 4
        self.head = (
            nn.Sequential(nn.Linear(features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))
            if hidden
            else nn.Linear(features, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class BasicBlock(nn.Module):
    """A residual block; with ``survival`` < 1 it is a stochastic-depth block (Huang et al. 2016).

    Training drops the residual branch with probability ``1 − survival`` (one draw per batch from
    the global torch RNG; Self-Guidance eq 3); evaluation — and any pass under
    :func:`full_network` — keeps every block and scales its branch by ``survival`` (eq 4).
    """

    def __init__(self, cin: int, cout: int, stride: int, survival: float = 1.0) -> None:
        super().__init__()
        if not 0.0 < survival <= 1.0:
            raise ValueError(f"survival probability must be in (0, 1], got {survival}")
        self.survival = survival
        self.full = False
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.survival < 1.0 and self.training and not self.full:
            if float(torch.rand(())) >= self.survival:
                return torch.relu(self.shortcut(x))  # the dropped block is its skip connection
            scale = 1.0
        else:
            scale = self.survival
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(scale * self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """The CIFAR ResNet of He et al. (depth 6n+2: 8, 14, 20, 32, 56), three stages.

    ``survival`` < 1 makes it a stochastic-depth ResNet: block ``l`` of ``L`` survives with
    probability ``1 − (l / L)·(1 − survival)``, decaying linearly to ``survival`` at the last block.
    """

    def __init__(self, in_channels: int, num_classes: int, depth: int = 20, width: int = 16,
                 survival: float = 1.0) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        blocks = (depth - 2) // 6
        total = 3 * blocks
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        layers: list[nn.Module] = []
        cin = width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for block in range(blocks):
                index = stage * blocks + block + 1
                keep = 1.0 - index / total * (1.0 - survival)
                layers.append(BasicBlock(cin, cout, stride=2 if stage and not block else 1, survival=keep))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1))


def stochastic_blocks(model: nn.Module) -> list[BasicBlock]:
    """The blocks of ``model`` that drop out during training (empty: no stochastic depth)."""
    return [m for m in model.modules() if isinstance(m, BasicBlock) and m.survival < 1.0]


class full_network:
    """Context manager: every stochastic-depth block runs, scaled by its survival probability
    (Self-Guidance's teacher pass, eq 4), also in training mode."""

    def __init__(self, model: nn.Module) -> None:
        self.blocks = stochastic_blocks(model)

    def __enter__(self) -> None:
        for block in self.blocks:
            block.full = True

    def __exit__(self, *exc: object) -> None:
        for block in self.blocks:
            block.full = False


REGISTRY: dict[str, Callable[..., nn.Module]] = dict(zip(ARCH_NAMES, (TinyCNN, CifarResNet, LeNet, PreActResNet),
                                                          strict=True))


def resolve_factory(arch: str, allowed_factories: Iterable[str] = ()) -> Callable[..., nn.Module]:
    """Find the constructor for ``arch``; ``module:factory`` only when the config named it."""
    if arch in REGISTRY:
        return REGISTRY[arch]
    if library_of(arch) is not None:
        return library_builder(arch)
    if ":" in arch:
        if arch not in set(allowed_factories):
            raise UserError(f"model arch {arch!r}: code named by a checkpoint must also be named in the config")
        module_name, _, attr = arch.partition(":")
        try:
            return getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise UserError(f"model arch {arch!r}: cannot import ({err})") from err
    raise UserError(f"model arch {arch!r}: not in the registry {sorted(REGISTRY)}, "
                    "nor timm:NAME, torchvision:NAME or module:factory")


def build_model(
    arch: str, in_channels: int, num_classes: int, arch_kwargs: dict[str, Any] | None = None,
    allowed_factories: Iterable[str] = (),
) -> nn.Module:
    factory = resolve_factory(arch, allowed_factories)
    try:
        return factory(in_channels=in_channels, num_classes=num_classes, **(arch_kwargs or {}))
    except TypeError as err:
        raise UserError(f"model arch {arch!r}: bad arch_kwargs {arch_kwargs} ({err})") from err


def probe_forward(model: nn.Module, channels: int, size: tuple[int, int] | list[int], outputs: int,
                  where: str) -> None:
    """One forward of a zero image at ``size``: a model that cannot take the input (a fixed-size
    ViT, a wrong channel count) or whose output is not ``outputs`` wide is refused here, in one
    line, rather than deep in a training step or a Ray actor. Leaves the model's mode as it was."""
    height, width = int(size[0]), int(size[1])
    training = model.training
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(1, channels, height, width))
    except Exception as err:  # models raise many types for an input they cannot take
        raise UserError(f"{where}: the model fails on a {height}×{width} input with {channels} channel(s) "
                        f"({str(err).splitlines()[0]}); fix the input size or channels (timm ViTs take arch_kwargs "
                        "img_size or dynamic_img_size: true)") from err
    finally:
        model.train(training)
    if out.ndim != 2 or out.shape[1] != outputs:
        raise UserError(f"{where}: the model's head gives {tuple(out.shape[1:])} outputs, the data needs {outputs}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- checkpoints


def input_spec(height: int, width: int, channels: int, mean: list[float], std: list[float],
               interpolation: str | None = None, crop_pct: float | None = None) -> dict[str, Any]:
    """The input contract a model was trained with: the stage resizes and normalizes to it
    (:mod:`core.models.contracts`; ``interpolation`` and ``crop_pct`` only when given)."""
    spec: dict[str, Any] = {"size": [height, width], "channels": channels, "mean": list(mean), "std": list(std)}
    if interpolation is not None:
        spec["interpolation"] = interpolation
    if crop_pct is not None:
        spec["crop_pct"] = crop_pct
    return spec


def save_checkpoint(
    path: str | Path, model: nn.Module, *, arch: str, arch_kwargs: dict[str, Any], num_classes: int,
    input: dict[str, Any], train: dict[str, Any] | None = None, task: str = "classify",
    head: dict[str, int] | None = None, pruned: dict[str, Any] | None = None,
) -> str:
    """Write a self-describing checkpoint atomically; returns its sha256. A regression model
    (``task="regress"``) gives ``head={"out_dim": D, "logvar_dim": 1 | D}`` instead of classes;
    a pruned model its ``pruned`` record (:mod:`core.models.pruned`; the key is absent otherwise)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    outputs = task_named(task).checkpoint_outputs(num_classes, head)
    payload = {
        "format": CHECKPOINT_FORMAT, "arch": arch, "arch_kwargs": dict(arch_kwargs), "task": task,
        **outputs, "input": input, "state_dict": state, "train": dict(train or {}),
    }
    if pruned is not None:
        payload["pruned"] = dict(pruned)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    storage.atomic_write(path, data)
    return hashlib.sha256(data).hexdigest()


HEADER: dict[str, type] = {"arch": str, "arch_kwargs": dict, "task": str, "input": dict, "state_dict": dict}


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint dict safely (``weights_only=True``) and check its header. ``path`` may be
    an fsspec URL (``s3://…``): a cluster's workers read the teachers from shared storage."""
    if not storage.is_file(path):
        raise UserError(f"checkpoint {path}: file not found")
    try:
        payload = torch.load(io.BytesIO(storage.read_bytes(path)), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a damaged or unsafe file
        raise UserError(f"checkpoint {path}: cannot be loaded safely ({str(err).splitlines()[0]})") from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"checkpoint {path}: not a transferset checkpoint (format {CHECKPOINT_FORMAT}); import "
                        "a state dict or a timm/torchvision checkpoint with teachers.models: [{arch, weights}] "
                        "or `transferset import-teacher`")
    for key, kind in HEADER.items():
        if not isinstance(payload.get(key), kind):
            raise UserError(f"checkpoint {path}: header field {key!r} is missing or not a {kind.__name__}; "
                            "the file is damaged or was not written by transferset")
    spec = payload["input"]
    if not isinstance(spec.get("channels"), int) or not isinstance(spec.get("size"), list | tuple):
        raise UserError(f"checkpoint {path}: header field 'input' lacks channels/size")
    check_contract(spec, f"checkpoint {path}")
    if "pruned" in payload:
        check_record(payload["pruned"], f"checkpoint {path}")
    return payload


def load_model(
    path: str | Path, *, task: str = "classify", outputs: int | None = None, allowed_factories: Iterable[str] = (),
) -> tuple[nn.Module, dict[str, Any]]:
    """Build the model a checkpoint describes, after checking it fits the job: the task, and
    ``outputs`` (the classes or the regression target's dimension; None: any)."""
    payload = read_checkpoint(path)
    if payload["task"] != task:
        raise UserError(f"checkpoint {path}: task is {payload['task']!r}, this job needs {task!r}")
    kind = task_named(task)
    kind.check_checkpoint(path, payload, outputs)
    model = build_model(payload["arch"], payload["input"]["channels"], kind.model_width(payload),
                        payload["arch_kwargs"], allowed_factories)
    if "pruned" in payload:  # channels removed: the arch narrowed to the stored shapes
        rebuild(model, payload["state_dict"], payload["pruned"], f"checkpoint {path}")
    fit_state_dict(model, payload["state_dict"], f"checkpoint {path}", payload["arch"], payload["arch_kwargs"])
    model.eval()
    return model, payload

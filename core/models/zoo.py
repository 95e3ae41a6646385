"""Models of the ecosystem: ``timm:<name>`` (an optional extra) and ``torchvision:<name>``.

Built without weights (``pretrained=False`` / ``weights=None``: building never downloads), with
the published input contract of each (timm's ``pretrained_cfg``; torchvision's weights meta) and,
on request, the library's pretrained weights — the one path here that needs internet.

Channels: timm models take any ``in_chans`` (so a timm student trains on grey digits);
torchvision classifiers take RGB only (a grey source needs a timm or built-in student; teachers
of 3 channels still label grey images, which the stages expand to RGB).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from torch import nn

from core.errors import UserError

TIMM, TORCHVISION = "timm:", "torchvision:"
Builder = Callable[..., nn.Module]


def library_of(arch: str) -> str | None:
    """``timm``, ``torchvision`` or None (a built-in or ``module:factory`` arch)."""
    return next((prefix[:-1] for prefix in (TIMM, TORCHVISION) if arch.startswith(prefix)), None)


def _closest(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=3)
    return f"; did you mean {', '.join(close)}?" if close else ""


def _timm(arch: str) -> Any:
    try:
        import timm
    except ImportError as err:
        raise UserError(f"model arch {arch!r}: timm is not installed; pip install transferset[timm]") from err
    return timm


def _timm_name(arch: str) -> tuple[Any, str, str]:
    """timm, the model name (with any ``.tag``) and its base architecture, checked to exist."""
    timm = _timm(arch)
    name = arch[len(TIMM):]
    base, _ = timm.models.split_model_name_tag(name)
    if not timm.is_model(base):
        raise UserError(f"model arch {arch!r}: timm has no model {base!r}{_closest(base, timm.list_models())}")
    return timm, name, base


def _torchvision_builder(arch: str) -> tuple[str, Builder]:
    import torchvision.models as tvm

    name = arch[len(TORCHVISION):]
    names = tvm.list_models(module=tvm)  # the classifiers (not detection, segmentation, video)
    if name not in names:
        raise UserError(f"model arch {arch!r}: torchvision has no classifier {name!r}{_closest(name, names)}")
    return name, tvm.get_model_builder(name)


def library_builder(arch: str) -> Builder:
    """``(in_channels, num_classes, **arch_kwargs) → model`` for a ``timm:`` or ``torchvision:`` arch."""
    if library_of(arch) == "timm":
        timm, name, base = _timm_name(arch)
        if name != base:
            _timm_cfg(arch, None)  # the tag must exist

        def build_timm(in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
            try:
                return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels,
                                         **kwargs)
            except RuntimeError as err:  # e.g. an unknown pretrained tag
                raise UserError(f"model arch {arch!r}: {str(err).splitlines()[0]}") from err

        return build_timm
    _, builder = _torchvision_builder(arch)

    def build_torchvision(in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
        if in_channels != 3:
            raise UserError(f"model arch {arch!r} expects 3-channel images, the data has {in_channels}; "
                            "use a timm: arch (any in_chans) or a built-in one for grey images")
        return builder(weights=None, num_classes=num_classes, **kwargs)

    return build_torchvision


def _torchvision_weights(arch: str, tag: str | None) -> Any:
    """The weights enum entry ``tag`` (None or '': DEFAULT) of a torchvision classifier, or None."""
    import torchvision.models as tvm

    name, _ = _torchvision_builder(arch)
    try:
        weights = tvm.get_model_weights(name)
    except (ValueError, KeyError):
        if tag:
            raise UserError(f"model arch {arch!r}: torchvision publishes no weights for it") from None
        return None
    if (tag or "DEFAULT") not in weights.__members__:
        raise UserError(f"model arch {arch!r}: no pretrained weights {tag!r}; torchvision has "
                        f"{[k for k in weights.__members__ if k != 'DEFAULT']}")
    return weights[tag or "DEFAULT"]


def _timm_cfg(arch: str, tag: str | None) -> dict[str, Any]:
    """timm's ``pretrained_cfg`` of ``arch`` (or of its pretrained ``tag``), as a dict."""
    timm, name, base = _timm_name(arch)
    try:
        found = timm.models.get_pretrained_cfg(f"{base}.{tag}" if tag else name)
    except RuntimeError:  # an unknown tag
        tags = [n.partition(".")[2] for n in timm.list_pretrained(base + ".*")]
        raise UserError(f"model arch {arch!r}: timm has no pretrained tag {(tag or name.partition('.')[2])!r} "
                        f"for {base!r}; it has {tags[:8]}") from None
    return found.to_dict() if found is not None else {}


def published_contract(arch: str, model: nn.Module | None = None, tag: str | None = None) -> dict[str, Any] | None:
    """The input contract the library publishes for ``arch`` (a timm model's ``pretrained_cfg``, a
    torchvision weights entry's eval transform), or None for other archs."""
    library = library_of(arch)
    if library == "timm":
        cfg = dict(getattr(model, "pretrained_cfg", None) or {})
        if tag or not cfg:
            cfg = _timm_cfg(arch, tag)
        if "input_size" not in cfg:
            return None
        channels, height, width = cfg["input_size"]
        return {"size": [height, width], "channels": channels, "mean": list(cfg["mean"]), "std": list(cfg["std"]),
                "interpolation": cfg.get("interpolation") or "bilinear", "crop_pct": cfg.get("crop_pct") or 1.0}
    if library == "torchvision":
        weights = _torchvision_weights(arch, tag)
        if weights is None:
            return None
        transform = weights.transforms()
        crop, resize = transform.crop_size[0], transform.resize_size[0]
        return {"size": [crop, crop], "channels": 3, "mean": list(transform.mean), "std": list(transform.std),
                "interpolation": transform.interpolation.value, "crop_pct": round(crop / resize, 6)}
    return None


def _offline(what: str, err: Exception) -> UserError:
    return UserError(f"{what}: cannot fetch the pretrained weights ({type(err).__name__}: "
                     f"{str(err).splitlines()[0] if str(err) else 'no detail'}); this needs internet on this machine "
                     "(or the library's cache filled); else download the file elsewhere and give it as weights")


def pretrained_model(arch: str, tag: str, in_channels: int, arch_kwargs: dict[str, Any]) -> tuple[nn.Module, int]:
    """The library's pretrained model with its own head, and that head's classes (downloads: needs
    internet or the library's cache)."""
    what = f"model arch {arch!r}, weights {'pretrained:' + tag if tag else 'pretrained'}"
    if library_of(arch) == "timm":
        timm, name, base = _timm_name(arch)
        _timm_cfg(arch, tag)  # an unknown tag is bad input, not a network failure
        try:
            model = timm.create_model(f"{base}.{tag}" if tag else name, pretrained=True, in_chans=in_channels,
                                      **arch_kwargs)
            return model, int(model.num_classes)
        except TypeError as err:
            raise UserError(f"{what}: bad arch_kwargs {arch_kwargs} ({err})") from err
        except Exception as err:  # hub, HTTP and cache errors come in many types
            raise _offline(what, err) from err
    weights = _torchvision_weights(arch, tag)
    if weights is None:
        raise UserError(f"{what}: torchvision publishes no weights for it")
    try:
        state = weights.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except Exception as err:
        raise _offline(what, err) from err
    classes = len(weights.meta["categories"])
    model = library_builder(arch)(in_channels, classes, **arch_kwargs)
    model.load_state_dict(state)
    return model, classes


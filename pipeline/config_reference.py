"""docs/CONFIG.md, generated from the config models: every key, its type, default and description.

The reference is rendered from the pydantic models themselves (``core.config.Config`` and every
model under it), so it cannot drift from what the loader accepts: ``make docs`` rewrites the part
of docs/CONFIG.md below :data:`MARKER` (the prose above it is written by hand), and a test fails
when the committed file differs from :func:`updated`. Each model is one section, named
by the first path it appears at; a model used at several paths (``train``) is written once and
named by the others.
"""

from __future__ import annotations

import inspect
import json
import types
import typing
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from core.config import Config

MARKER = "<!-- Everything below is generated from the config models by `make docs`: do not edit by hand. -->"
INTRO = """# Every key

Generated from the config models (`pipeline/config_reference.py`); a test keeps it equal to them.
Unknown keys are errors; any value can be overridden with `--set path.to.key=value` (a YAML
value). `NAME` stands for a set's or a student's name.
"""


def _models(annotation: Any) -> Iterator[type[BaseModel]]:
    """The config models an annotation holds (inside Optional, lists, dicts, unions)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    for argument in typing.get_args(annotation):
        yield from _models(argument)


def type_name(annotation: Any) -> str:
    """A short, readable name of a field's type."""
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return " \\| ".join(f"`{value}`" for value in arguments)
    if origin in (typing.Union, types.UnionType):
        named = [type_name(a) for a in arguments if a is not type(None)]
        return " or ".join(named) + (" or null" if type(None) in arguments else "")
    if origin is typing.Annotated:
        return type_name(arguments[0])
    if origin in (list, tuple):
        return f"list of {type_name(arguments[0])}" if arguments else "list"
    if origin is dict:
        return f"map {type_name(arguments[0])} → {type_name(arguments[1])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"[{_section_name(annotation)}](#{_anchor(annotation)})"
    return getattr(annotation, "__name__", str(annotation))


def _section_name(model: type[BaseModel]) -> str:
    kind = model.model_fields.get("kind")
    tag = typing.get_args(kind.annotation) if kind is not None else ()
    return f"{model.__name__} (kind: {tag[0]})" if len(tag) == 1 else model.__name__


def _anchor(model: type[BaseModel]) -> str:
    return model.__name__.lower()


def default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]
    if value is PydanticUndefined:
        return "required"
    if isinstance(value, BaseModel):
        return "its defaults"
    return f"`{json.dumps(value, ensure_ascii=False)}`".replace("|", "\\|")


def _walk(model: type[BaseModel], path: str, seen: dict[type[BaseModel], list[str]]) -> None:
    """Each model's paths, in the order first met (depth first, fields in declaration order)."""
    if model in seen:
        seen[model].append(path)
        return
    seen[model] = [path]
    for name, field in model.model_fields.items():
        mapped = typing.get_origin(field.annotation) is dict or any(
            typing.get_origin(a) is dict for a in typing.get_args(field.annotation))
        for inner in _models(field.annotation):
            _walk(inner, f"{path}.{name}.NAME" if mapped else f"{path}.{name}", seen)


def _summary(model: type[BaseModel]) -> str:
    doc = inspect.getdoc(model) or ""
    own = doc if model.__doc__ else ""  # not a base class's docstring
    return " ".join(own.split("\n\n")[0].split())


def section(model: type[BaseModel], paths: list[str]) -> str:
    where = ", ".join(f"`{p.lstrip('.')}`" for p in paths if p) or "the top level"
    lines = [f"## {_section_name(model)}", "", f"At {where}." + (f" {_summary(model)}" if _summary(model) else ""),
             "", "| key | type | default | what it is |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        description = (field.description or "").replace("|", "\\|").replace("\n", " ")
        lines.append(f"| `{name}` | {type_name(field.annotation)} | {default_text(field)} | {description} |")
    return "\n".join(lines)


def render() -> str:
    """The whole reference, as docs/CONFIG.md holds it."""
    seen: dict[type[BaseModel], list[str]] = {}
    _walk(Config, "", seen)
    return "\n\n".join([INTRO.rstrip(), *(section(model, paths) for model, paths in seen.items())]) + "\n"


def updated(text: str) -> str:
    """docs/CONFIG.md's ``text`` with everything below :data:`MARKER` rendered anew."""
    prose = text.split(MARKER)[0].rstrip()
    return f"{prose}\n\n{MARKER}\n\n{render()}"


def undescribed() -> list[str]:
    """``Model.field`` of every field without a description (the test wants none)."""
    seen: dict[type[BaseModel], list[str]] = {}
    _walk(Config, "", seen)
    return [f"{model.__name__}.{name}" for model in seen for name, field in model.model_fields.items()
            if not field.description]


if __name__ == "__main__":  # make docs
    import sys
    from pathlib import Path

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/CONFIG.md")
    target.write_text(updated(target.read_text(encoding="utf-8") if target.exists() else ""), encoding="utf-8")

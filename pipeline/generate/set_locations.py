"""Where a job writes its sets: one directory per set, and one it can write, checked before the
job writes anything.

**Distinct.** A set directory holds one set: its marker, shards and ``index.json``. Two sets of
one job that resolve to one directory — the same ``out:``, one set's ``out:`` equal to or inside
another's default ``OUT/sets/NAME``, an ``out:`` that holds the cache root of an ``out: auto``
set — would write into each other: the second takes over the first's shards, and its index
lies about them. Even two names for literally the same set (identical config, so one
fingerprint and the same bytes) are refused: their one ``index.json`` can carry only one name,
so the other set's students and reports would read a set that calls itself something else; a
set is named once and any number of students list it. A directory inside another set's is
refused too (a set's directory is its own: ``verify`` and growth list it). Two ``out: auto``
sets never collide: the cache names each ``<name>-<fingerprint prefix>``.

:func:`check_config_locations` runs before anything (teachers included) is made, on what the
config alone decides (explicit and default locations, the cache root); :func:`check_planned`
runs on the planned sets, whose ``auto`` locations need the fingerprint.

**Writable.** A set that has shards to make needs a directory it can create or write (local
paths: ``os.access``, which honours modes, ACLs, read-only mounts and immutable directories; an
object store is left to its first write). Without the check a read-only cache or a ``cache_root``
that is a file failed with a traceback after Ray had started. A complete set is only read, so
a read-only cache serves it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from core.config import Config
from core.errors import UserError
from core.sets.spec import SetSpec
from core.store import storage
from pipeline.generate.plan import AUTO

SETS_DIR = "sets"


@dataclass(frozen=True)
class Location:
    """Where set ``name`` is written and which setting put it there."""

    name: str
    where: str  # a normalised local path or URL
    how: str  # words for the error line: "out: auto (under cache_root …)", "its default OUT/sets/NAME", …
    field: str  # the config field that chose it


def normalised(location: str | Path) -> str:
    """A location as compared: an absolute local path with symlinks of its existing part resolved,
    or a URL without a trailing slash."""
    if storage.is_local(location):
        return os.path.realpath(os.path.abspath(storage.local_path(location)))
    return str(location).rstrip("/")


def _within(inner: str, outer: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")


def _location(cfg: Config, name: str, out: str | Path, where: str | Path) -> Location:
    chosen = cfg.sets[name].out
    if chosen == AUTO:
        root = storage.cache_root(cfg.cache_root)
        return Location(name, normalised(where), f"out: auto, under the cache root {root}", "cache_root")
    if chosen is None:
        return Location(name, normalised(where), f"its default OUT/sets/{name}", "--out")
    return Location(name, normalised(where), f"its out: {chosen}", f"sets.{name}.out")


def _refuse_clash(first: Location, second: Location) -> None:
    """One line naming both sets when one's directory is, holds or lies inside the other's; the
    set whose own ``out:`` chose its place is the one named first."""
    if not (_within(second.where, first.where) or _within(first.where, second.where)):
        return
    own = first.field.startswith("sets.") and not second.field.startswith("sets.")
    blamed, other = (first, second) if own else (second, first)
    if blamed.where == other.where:
        relation = "is also the directory"
    elif _within(blamed.where, other.where):
        relation = f"lies inside {other.where}, the directory"
    else:
        relation = f"holds {other.where}, the directory"
    field = blamed.field if blamed.field.startswith("sets.") else f"sets.{blamed.name} ({blamed.how})"
    raise UserError(f"{field}: {blamed.where} {relation} of set {other.name!r} ({other.how}); two sets of one job "
                    f"never share a directory: give one of them another out (students may list one set as often "
                    f"as they like)")


def _check_pairs(locations: list[Location]) -> None:
    for later, second in enumerate(locations):
        for first in locations[:later]:
            _refuse_clash(first, second)


def _existing_directory(path: Path, field: str, name: str) -> Path:
    """The nearest existing directory at or above local ``path``, which the set is made under;
    refused when the nearest existing entry is a file (a ``cache_root`` that is a file)."""
    existing = path
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "a broken symlink" if existing.is_symlink() and not existing.exists() else "a file"
        under = "" if existing == path else f" ({path})"
        raise UserError(f"{field}: {existing} is {what}, not a directory, so set {name!r} cannot be written "
                        f"there{under}; point it at a directory")
    return existing


def check_config_locations(cfg: Config, out: str | Path, names: list[str] | None = None) -> None:
    """What the config alone decides: explicit and default locations do not share or nest, none
    holds the cache root of an ``out: auto`` set, and none (nor the cache root) lies under a file.
    ``names``: all sets by default."""
    fixed = [_location(cfg, name, out, cfg.sets[name].out or storage.join(out, SETS_DIR, name))
             for name in names or list(cfg.sets) if cfg.sets[name].out != AUTO]
    _check_pairs(fixed)
    for place in fixed:
        if storage.is_local(place.where):
            _existing_directory(Path(place.where), place.field, place.name)
    autos = [name for name in names or list(cfg.sets) if cfg.sets[name].out == AUTO]
    if autos:
        root = normalised(storage.cache_root(cfg.cache_root))
        if storage.is_local(root):
            _existing_directory(Path(root), "cache_root", autos[0])
        for place in fixed:
            if _within(root, place.where):
                field = place.field if place.field.startswith("sets.") else f"sets.{place.name}"
                raise UserError(f"{field}: {place.where} holds the cache root {root} where set "
                                f"{autos[0]!r} (out: auto) is written; give the set another out or set cache_root "
                                f"elsewhere")


def check_planned(cfg: Config, out: str | Path, specs: list[SetSpec]) -> None:
    """The planned sets' directories (``auto`` ones resolved by fingerprint) do not share or nest."""
    _check_pairs([_location(cfg, spec.name, out, spec.out_dir) for spec in specs])


def check_writable(cfg: Config, spec: SetSpec) -> None:
    """Refuse a set with shards to make whose directory cannot be made or written (local paths;
    see the module docstring); names the field that chose the directory."""
    if not storage.is_local(spec.out_dir):
        return
    place = _location(cfg, spec.name, "", spec.out_dir)
    field = place.field if place.field != "--out" else f"--out (set {spec.name!r})"
    path = storage.local_path(spec.out_dir)
    existing = _existing_directory(path, field, spec.name)
    needed = [existing] if existing != path else [path, *[d for d in (path / "shards",) if d.is_dir()]]
    for directory in needed:
        if not os.access(directory, os.W_OK | os.X_OK):
            raise UserError(f"{field}: cannot write in {directory} (read-only or not permitted), and set "
                            f"{spec.name!r} has shards to make at {spec.out_dir}; make it writable or give the "
                            f"set another out")


"""Reading a config's YAML within bounds: its size, and what its anchors and aliases expand to.

``yaml.safe_load`` is safe from code but not from size. A "billion laughs" file — nine anchors,
each a list of nine aliases of the one before — is a few hundred bytes and loads at once,
because an alias is a shared reference; but everything after loading walks the expanded
structure (the loader's JSON round trip that unshares aliases, pydantic's validation), 9⁹ values
that eat memory until the process is killed. So the node graph is composed first (linear in the
file), its expanded size counted with each anchor measured once, and a document that expands past
:data:`MAX_VALUES` values is refused before a single Python object is built. A file larger than
:data:`MAX_CONFIG_BYTES` is refused before it is read: a real config is kilobytes (a 21 000-class
``class_names`` list is about 300 KB), and parsing megabytes of YAML takes seconds.

libyaml's parser (``CSafeLoader``) is used where PyYAML has it: the same safe constructor, about
eight times faster than the pure-Python parser on large files.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from core.errors import UserError, clip

MAX_CONFIG_BYTES = 2 << 20  # 2 MiB
MAX_VALUES = 1_000_000  # scalars, lists and mappings after every alias is expanded
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def expanded_values(node: yaml.Node, limit: int = MAX_VALUES) -> int:
    """How many values (scalars, sequences, mappings) the document holds once every alias is
    expanded, counting past ``limit`` only as far as ``limit + 1``. An anchored node is measured
    once (its size is remembered), so the count costs time linear in the file, not in the
    expansion. Raises ``ValueError`` for a node that contains itself (``&a [*a]``)."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    # An explicit stack instead of recursion: a deeply nested document must not exhaust Python's.
    stack: list[tuple[yaml.Node, bool]] = [(node, False)]
    while stack:
        current, children_done = stack.pop()
        key = id(current)
        if key in sizes:
            continue
        children = _children(current)
        if not children_done:
            if key in on_path:
                raise ValueError("an anchor's value contains an alias of itself")
            on_path.add(key)
            stack.append((current, True))
            for child in children:
                if id(child) not in sizes:
                    if id(child) in on_path:
                        raise ValueError("an anchor's value contains an alias of itself")
                    stack.append((child, False))
            continue
        on_path.discard(key)
        sizes[key] = min(1 + sum(sizes[id(child)] for child in children), limit + 1)
    return sizes[id(node)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def load_yaml(text: str, where: str) -> Any:
    """The document of ``text`` as plain Python values, refused (one :class:`UserError` naming
    ``where``) when its aliases expand past :data:`MAX_VALUES` or an anchor contains itself.
    ``yaml.YAMLError`` (invalid YAML) is left to the caller, which words it for its own input."""
    loader = LOADER(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        try:
            values = expanded_values(node)
        except ValueError as err:
            raise UserError(f"{where}: {err}; a config cannot hold itself") from None
        if values > MAX_VALUES:
            raise UserError(f"{where}: its anchors and aliases expand to more than {MAX_VALUES:,} values (an "
                            "alias bomb?); write the repeated parts out, or alias fewer of them")
        return loader.construct_document(node)
    except RecursionError:
        raise UserError(f"{where}: nested too deeply to read") from None
    finally:
        loader.dispose()


def unshared(raw: Any, where: str) -> Any:
    """``raw`` with every YAML alias copied: an anchor aliases one dict in several places, and an
    override must touch one. The size is bounded already (:func:`load_yaml`)."""
    try:
        return json.loads(json.dumps(raw, default=str))
    except RecursionError:
        raise UserError(f"{where}: nested too deeply to read") from None


def check_config_size(size: int, where: str) -> None:
    """Refuse a config file of more than :data:`MAX_CONFIG_BYTES` before reading it."""
    if size > MAX_CONFIG_BYTES:
        raise UserError(f"{where}: {size / (1 << 20):.1f} MiB, more than a config may hold "
                        f"({MAX_CONFIG_BYTES >> 20} MiB); is this the config file? Keep large data "
                        f"(images, class lists) in the files the config names")


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one ``dotted.key=value`` override; the value is parsed as YAML (``3``, ``true``)."""
    path, sep, text = assignment.partition("=")
    if not sep or not path:
        raise UserError(f"--set {clip(repr(assignment))}: expected key=value, e.g. --set teachers.members=2")
    keys = path.split(".")
    node: Any = raw
    for depth, key in enumerate(keys[:-1]):
        if not isinstance(node, dict):
            raise UserError(f"--set {clip(path)}: {clip('.'.join(keys[:depth]))} is not a section")
        node = node.setdefault(key, {})
    if not isinstance(node, dict):
        raise UserError(f"--set {clip(path)}: {clip('.'.join(keys[:-1]))} is not a section")
    try:
        node[keys[-1]] = unshared(load_yaml(text, f"--set {clip(path)}"), f"--set {clip(path)}")
    except yaml.YAMLError as err:
        raise UserError(f"--set {clip(path)}: value {clip(repr(text))} is not valid YAML ({err.problem})") from err

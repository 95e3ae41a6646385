"""WebDataset tar shards as a source: list the member headers once, read each image by byte range.

A split is a list of tar URLs (local paths or fsspec URLs; a brace pattern such as
``train-{000000..000009}.tar`` expands in order). Members group into samples as webdataset groups
them: consecutive members sharing the name up to the first dot of the basename form one sample,
the rest of the name is the extension. Each sample needs one image member (the first of
``image_ext`` it has) and one label member (``label_ext``, an ASCII integer class index).

Listing a tar reads its 512-byte member headers and the tiny label members only: ``tarfile``
seeks over the image data because storage's file objects are seekable. Locally that is about one
8 KiB buffer per member; on an object store fsspec's read-ahead blocks make it close to one pass
over the tar. The listing is cached per process (keyed by the tar's size and modification token),
and an image is then read as ``(url, offset, size)`` — one seek and read, or one ranged GET.
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from dataclasses import dataclass
from functools import lru_cache
from itertools import islice
from typing import Any

from braceexpand import UnbalancedBracesError, braceexpand

from core.config import SourceConfig
from core.errors import UserError, clip
from core.store import storage

# webdataset skips members named like __key__ / __meta__ (its ``skip_meta``).
META_NAME = re.compile(r"__[^/]*__($|/)")
SAMPLE_NAME = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext
GZIP_MAGIC = b"\x1f\x8b"
LISTING_CACHE = 4096  # tars whose listings a process keeps
MAX_TARS = 1_000_000  # tars a split may list


@dataclass(frozen=True, slots=True)
class TarMember:
    """Where one image lives: ``size`` bytes at ``offset`` of the tar at ``url`` (small and
    picklable, so a worker holds one per image instead of the image)."""

    url: str
    offset: int
    size: int
    name: str

    def read(self) -> bytes:
        data = storage.read_range(self.url, self.offset, self.size)
        if len(data) != self.size:
            raise OSError(f"the tar ends {self.size - len(data)} bytes short of the member (changed since it "
                          f"was listed?)")
        return data

    def __str__(self) -> str:
        return f"{self.url} member {self.name}"


@dataclass(frozen=True)
class TarListing:
    """One tar's samples in tar order: image members, labels, and what identifies the tar."""

    url: str
    bytes: int
    digest: str  # sha256 of the member (name, size) list
    keys: tuple[str, ...]
    images: tuple[TarMember, ...]
    labels: tuple[int, ...]


@dataclass(frozen=True)
class WebDatasetSplit:
    """What the reader turns into a :class:`core.sources.readers.Source`."""

    members: list[TarMember]
    labels: list[int]
    classes: list[str]
    identity: dict[str, Any]


def expand_urls(value: str | list[str] | None, field: str = "urls") -> list[str]:
    """The URLs of a split, brace patterns expanded in order (``a-{0..2}.tar`` → a-0, a-1, a-2).
    A pattern braceexpand cannot parse (unbalanced braces), or one that names more than
    :data:`MAX_TARS` tars (``{0..999999999}``: a typo, and a list that would fill the memory), is
    a user error naming ``source.<field>``."""
    patterns = [value] if isinstance(value, str) else list(value or [])
    urls: list[str] = []
    for pattern in patterns:
        try:
            urls += islice(braceexpand(pattern), MAX_TARS + 1 - len(urls))
        except UnbalancedBracesError:
            raise UserError(f"source.{field}: {clip(repr(pattern))} has unbalanced braces; a pattern is like "
                            "data/train-{000000..000009}.tar (escape a literal brace as \\{)") from None
        if len(urls) > MAX_TARS:
            raise UserError(f"source.{field}: {clip(repr(pattern))} names more than {MAX_TARS:,} tars; check the "
                            "brace pattern's range")
    return urls


def extensions(text: str) -> list[str]:
    """``"jpg;jpeg;png"`` → ``["jpg", "jpeg", "png"]`` (lower case, as webdataset compares them)."""
    return [part.strip().lower().lstrip(".") for part in text.split(";") if part.strip()]


def _refuse(field: str, url: str, problem: str) -> UserError:
    return UserError(f"source.{field}: {url} {problem}")


def _check_end(handle: Any, offset: int, total: int, field: str, url: str) -> None:
    """A listing that stops before the two zero blocks that end a tar stopped at damage, not at the end
    (``tarfile`` ends quietly at a truncated or garbled header past the first)."""
    handle.seek(offset)
    block = handle.read(tarfile.BLOCKSIZE) if offset < total else b""
    if len(block) != tarfile.BLOCKSIZE or block.count(0) != tarfile.BLOCKSIZE:
        raise _refuse(field, url, f"is truncated or damaged at byte {offset} of {total} (no end-of-archive "
                                  f"block there); write the shard again")


def _label(raw: bytes, field: str, url: str, name: str) -> int:
    text = raw.decode("ascii", errors="replace").strip()
    if not text.isdigit():
        raise _refuse(field, url, f"member {name}: label {text[:40]!r} is not a non-negative integer class "
                                  f"index (webdataset's .cls format)")
    return int(text)


def _samples(tar: tarfile.TarFile, field: str, url: str) -> list[tuple[str, dict[str, tarfile.TarInfo]]]:
    """``(key, {extension: header})`` per sample, grouped as webdataset groups consecutive members."""
    samples: list[tuple[str, dict[str, tarfile.TarInfo]]] = []
    for info in tar:
        match = SAMPLE_NAME.match(info.name)
        if not info.isreg() or META_NAME.match(info.name) or match is None:
            continue
        key, ext = match.group(1), match.group(2).lower()
        if not samples or samples[-1][0] != key:
            samples.append((key, {}))
        if ext in samples[-1][1]:
            raise _refuse(field, url, f"sample {key} has two .{ext} members; give each sample one")
        samples[-1][1][ext] = info
    tar.members = []  # the headers are kept below as TarMembers only
    return samples


def _list_tar(url: str, total: int, image_exts: tuple[str, ...], label_ext: str, field: str) -> TarListing:
    """Read the headers of one tar (and its label members) into a :class:`TarListing`."""
    try:
        with storage.open_read(url) as handle:
            if handle.read(2) == GZIP_MAGIC:
                raise _refuse(field, url, "is gzip-compressed; store shards as plain .tar (webdataset's default) "
                                          "so each image can be read by byte range")
            handle.seek(0)
            try:
                tar = tarfile.open(fileobj=handle, mode="r:")
            except tarfile.TarError as err:
                raise _refuse(field, url, f"is not a readable uncompressed tar ({err})") from err
            samples = _samples(tar, field, url)
            _check_end(handle, tar.offset, total, field, url)
            images, labels, listing = _images_and_labels(tar, samples, image_exts, label_ext, field, url)
    except tarfile.TarError as err:  # past the first header: the tar was cut or garbled
        raise _refuse(field, url, f"is truncated or damaged ({err}); write the shard again") from err
    except OSError as err:
        raise _refuse(field, url, f"cannot be read ({err})") from err
    if not images:
        found = ", ".join(sorted({ext for _, members in samples for ext in members})) or "no members"
        raise _refuse(field, url, f"has no member with an image extension {';'.join(image_exts)} (its members' "
                                  f"extensions: {found}); set source.image_ext")
    if len(images) != len(samples):
        key, members = next((k, m) for k, m in samples if not set(m) & set(image_exts))
        raise _refuse(field, url, f"sample {key} has no image member {';'.join(image_exts)} (it has "
                                  f"{', '.join(sorted(members))})")
    digest = hashlib.sha256(json.dumps(listing).encode()).hexdigest()
    return TarListing(url, total, digest, tuple(key for key, _ in samples), tuple(images), tuple(labels))


def _images_and_labels(tar: tarfile.TarFile, samples: list[tuple[str, dict[str, tarfile.TarInfo]]],
                       image_exts: tuple[str, ...], label_ext: str, field: str,
                       url: str) -> tuple[list[TarMember], list[int], list[tuple[str, int]]]:
    """Each sample's image member (the first of ``image_exts`` it has) and label (its label member
    read: a few bytes); samples without an image are left out (the caller names them)."""
    images, labels, listing = [], [], []
    for key, members in samples:
        image_ext = next((ext for ext in image_exts if ext in members), None)
        if image_ext is None:
            continue
        if label_ext not in members:
            raise _refuse(field, url, f"sample {key} has an image but no .{label_ext} label member (it has "
                                      f"{', '.join(sorted(members))}); set source.label_ext")
        handle = tar.extractfile(members[label_ext])
        labels.append(_label(handle.read() if handle is not None else b"", field, url, members[label_ext].name))
        info = members[image_ext]
        images.append(TarMember(url, info.offset_data, info.size, info.name))
        listing += [(m.name, m.size) for m in members.values()]
    return images, labels, listing


@lru_cache(maxsize=LISTING_CACHE)
def _cached_listing(url: str, total: int, version: str, image_exts: tuple[str, ...], label_ext: str,
                    field: str) -> TarListing:
    del version  # part of the cache key only: a rewritten tar is listed again
    return _list_tar(url, total, image_exts, label_ext, field)


def list_tar(url: str, cfg: SourceConfig, field: str = "urls") -> TarListing:
    """The listing of one tar, cached per process until the tar's size or modification changes."""
    if not storage.is_file(url):
        raise _refuse(field, url, "not found (expected a tar shard: a path or an fsspec URL)")
    total, version = storage.stat(url)
    return _cached_listing(url, total, version, tuple(extensions(cfg.image_ext)), cfg.label_ext.strip().lower(),
                           field)


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()[:16]


def read_split(cfg: SourceConfig, split: str) -> WebDatasetSplit:
    """The samples of one split, in shard order then tar order; the classes from both splits."""
    field = "urls" if split == "train" else "test_urls"
    lists = {"urls": expand_urls(cfg.urls, "urls"), "test_urls": expand_urls(cfg.test_urls, "test_urls")}
    for name, urls in lists.items():
        if not urls:
            raise UserError(f"source.{name}: no tar shards listed; give a list of paths/URLs or a brace pattern")
    listings = {name: [list_tar(url, cfg, name) for url in urls] for name, urls in lists.items()}
    largest = max(max(listing.labels) for tars in listings.values() for listing in tars)
    classes = list(cfg.class_names) if cfg.class_names is not None else [str(c) for c in range(largest + 1)]
    if largest >= len(classes):
        tar = next(t for tars in listings.values() for t in tars if max(t.labels) == largest)
        raise UserError(f"source.class_names: {tar.url} has label {largest}, but class_names lists "
                        f"{len(classes)} classes; list them all")
    own = listings[field]
    identity = {"kind": "webdataset", "split": split, "urls": lists[field],
                "tars": [[tar.bytes, tar.digest[:16]] for tar in own],
                "image_ext": extensions(cfg.image_ext), "label_ext": cfg.label_ext.strip().lower(),
                "classes": _digest(classes)}
    return WebDatasetSplit(members=[m for tar in own for m in tar.images],
                           labels=[label for tar in own for label in tar.labels], classes=classes, identity=identity)

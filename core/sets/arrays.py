"""What a decoded shard is (:class:`ShardArrays`), the error that names a damaged shard, and the
per-record decode every shard format offers: the format's records (a tar's, or a replay shard's
rebuilt one by one) stacked into arrays. A replay set's column-wise decode
(:mod:`core.sets.replay_read`) is tested bit for bit against it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.errors import FormatError
from core.samplers import NO_IMAGE, source_indices

# A shard's samples as a format reads them: each key, and how to decode it (so a failure names its sample)
Records = Iterable[tuple[str, Callable[[], dict[str, Any]]]]


@dataclass(frozen=True)
class ShardArrays:
    """A decoded shard: ``images`` uint8 (N, H, W, C), ``target`` float32 (N, width) — log p̄
    over the classes, or rows ``[μ, log σ²]`` of a regression set — and ``labels`` int64 (N,)
    with −1 where a sample has no real class label; ``weights`` float32 (N, C) the importance
    weights of a sampled-class set (None for any other)."""

    url: str
    images: np.ndarray
    target: np.ndarray
    labels: np.ndarray
    weights: np.ndarray | None = None
    sources: np.ndarray | None = None  # int32 (N, 2): the real images each sample is made from, −1 none

    @property
    def nbytes(self) -> int:
        extra = sum(0 if a is None else a.nbytes for a in (self.weights, self.sources))
        return self.images.nbytes + self.target.nbytes + self.labels.nbytes + extra

    def __len__(self) -> int:
        return len(self.labels)


class ShardDamage(Exception):
    """A shard that could not be read or decoded; carries the shard's url."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(url, reason)
        self.url, self.reason = url, reason


def one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def decode_records(url: str, expected_samples: int, width: int, records: Records) -> ShardArrays:
    """One shard's ``records`` decoded one by one into arrays; raises :class:`ShardDamage` naming
    the shard (and the sample, when one record is bad)."""
    images, targets, labels, weights, sources = [], [], [], [], []
    key = "?"
    try:
        for key, decode in records:  # noqa: B007  # key names the bad sample below
            decoded = decode()
            if decoded["target"].shape != (width,):
                raise FormatError(f"target shape {decoded['target'].shape}, expected ({width},)")
            if labels and ("weights" in decoded) != bool(weights):
                raise FormatError("the shard mixes sampled-class and other targets")
            images.append(decoded["image"])
            targets.append(decoded["target"])
            labels.append(decoded["label"])
            meta = decoded.get("meta") or {}
            sources.append(source_indices(meta["sampler"], meta["params"]) if "sampler" in meta else (NO_IMAGE,) * 2)
            if "weights" in decoded:
                weights.append(decoded["weights"])
    except FileNotFoundError as err:
        raise ShardDamage(url, "file missing") from err
    except Exception as err:  # PIL, numpy, json and tarfile each raise their own types
        where = "" if key == "?" else f"sample {key}: "
        raise ShardDamage(url, f"{where}{one_line(err)}") from err
    if expected_samples >= 0 and len(labels) != expected_samples:
        raise ShardDamage(url, f"{len(labels)} complete samples read, the index lists {expected_samples}")
    if not labels:
        raise ShardDamage(url, "no samples")
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        raise ShardDamage(url, f"images of different shapes {sorted(shapes)}")
    return ShardArrays(url, np.stack(images), np.stack(targets).astype(np.float32),
                       np.asarray(labels, dtype=np.int64), np.stack(weights) if weights else None,
                       np.asarray(sources, dtype=np.int32).reshape(-1, 2))

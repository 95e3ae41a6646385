"""Which parameters every candidate of a shard gets: a pure function of (set config, source,
seed, shard), so generation draws them once and a reader of a set that does not store them
(``store: {kind: packed, params: derived}``) draws the very same ones again.

A views-only set enumerates the source (every image × K views) view by view, each view in its
own seeded image order (:func:`enumerated_slot`, format 2), so a shard holds about as many
distinct images as samples (at most the source's); every other set draws ``samples`` at random,
each shard holding its samplers in proportion to their shares. All randomness of candidate
``index`` of shard ``shard`` comes from ``sample_rng(seed, shard, index)``; which sampler makes
which candidate of a shard comes from ``(seed, shard)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from core.samplers import SAMPLERS, Params, sample_rng
from core.samplers.base import SET_STREAM, SHARD_STREAM, draw_view, identity_view

if TYPE_CHECKING:
    from core.config import SamplerOptions, SetConfig
    from core.sources import Source

__all__ = ["draw_shard", "enumerated_slot", "sample_label", "set_size", "view_order"]


def views_count(cfg: SamplerOptions, source: Source) -> int:
    """Samples in a views set: every real image times K views."""
    return len(source) * cfg.views_per_image()


def set_size(set_cfg: SetConfig, source: Source) -> int:
    """Samples the set holds (a views-only set: all views, or fewer if ``samples`` says so)."""
    if set_cfg.enumerates_source():
        total = views_count(set_cfg.sampler_list()[0], source)
        return total if set_cfg.samples is None else min(set_cfg.samples, total)
    if set_cfg.samples is None:
        raise ValueError("a set of random samplers needs a sample count")
    return set_cfg.samples


def view_order(seed: int, source: Source, view: int) -> np.ndarray:
    """The order in which view ``view`` of a views set visits the real images: a seeded
    permutation of its own, so each shard holds many classes even when the source is sorted by
    class, and no two views put the same images side by side."""
    return np.random.default_rng([seed, SET_STREAM, view]).permutation(len(source))


def enumerated_slot(position: int, images: int) -> tuple[int, int]:
    """``(view, slot)`` of set position ``position`` of a views set of ``images`` images
    (format 2, view-major): position p is view ``p // images`` of image ``view_order(v)[p % images]``,
    so the first ``images`` positions hold every image once (view 0, unaugmented) before any
    image gets a second view, and a capped set covers the images before it repeats them."""
    return divmod(position, images)


def assign_samplers(shares: list[float], count: int, seed: int, shard: int) -> np.ndarray:
    """Which sampler makes each candidate of a shard: exact quotas by share (largest remainder,
    ties rotating with the shard so no sampler always gets the extra one), in a seeded order."""
    weights = np.asarray(shares, dtype=np.float64) / sum(shares)
    quotas = np.floor(weights * count).astype(np.int64)
    remainder = np.round(weights * count - quotas, 9)
    rotation = (np.arange(len(shares)) - shard) % len(shares)
    for slot in np.lexsort((rotation, -remainder))[: count - int(quotas.sum())]:
        quotas[slot] += 1
    kinds = np.repeat(np.arange(len(shares)), quotas)
    return np.random.default_rng([seed, shard, SHARD_STREAM]).permutation(kinds)


def _enumerated_views(source: Source, seed: int, shard: int, first: int, count: int) -> list[Params]:
    """Samples ``first … first + count − 1`` of a views-only set, made as shard ``shard``: each
    view's image order is drawn once per shard, not per sample; view 0 is the unaugmented view
    of its image, the other views draw from ``sample_rng(seed, shard, index)``."""
    orders: dict[int, np.ndarray] = {}
    drawn = []
    for index in range(count):
        view, slot = enumerated_slot(first + index, len(source))
        if view not in orders:
            orders[view] = view_order(seed, source, view)
        image = int(orders[view][slot])
        aug = identity_view(source, image) if view == 0 else draw_view(sample_rng(seed, shard, index), source, image)
        drawn.append({"image": image, "view": int(view), "aug": aug})
    return drawn


def draw_shard(set_cfg: SetConfig, source: Source, seed: int, shard: int, total: int) -> list[tuple[str, Params]]:
    """``(sampler kind, parameters)`` of every candidate of one shard: a pure function of
    (config, source, seed, shard)."""
    spp = set_cfg.samples_per_shard
    count = min(spp, total - shard * spp)
    if count <= 0:
        return []
    samplers = set_cfg.sampler_list()
    if set_cfg.enumerates_source():
        return [("views", params) for params in _enumerated_views(source, seed, shard, shard * spp, count)]
    candidates = set_cfg.candidates(count)
    which = assign_samplers([s.share for s in samplers], candidates, seed, shard)
    drawn = []
    for index in range(candidates):
        cfg = samplers[int(which[index])]
        drawn.append((cfg.kind, SAMPLERS[cfg.kind].draw(cfg, source, sample_rng(seed, shard, index))))
    return drawn


def sample_label(kind: str, params: dict[str, Any], source: Source) -> int:
    """The real label a sample carries (label-preserving transforms of a real image), or -1."""
    return int(source.labels[params["image"]]) if SAMPLERS[kind].keeps_label else -1

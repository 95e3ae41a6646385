"""What ``transferset inspect`` does for every kind of set: read the set, sample its records,
bin a per-sample value by the mixing weight λ, summarise values, measure stored bytes, save plots."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import FormatError, UserError, clip
from core.sets import index as sx
from core.sets.formats import format_of
from core.sets.index import SetIndex
from core.sets.shard_format import ShardFormat
from core.store import storage
from core.tasks import Record

LAMBDA_BINS = 10
GRID_SAMPLES = 32


def open_set(set_dir: str) -> tuple[SetIndex, dict[str, list[Any]]]:
    """The set's index and its manifest's columns; a missing or unreadable set is a user error."""
    try:
        index = sx.read_index(set_dir)
        if index is None:
            raise UserError(f"inspect: {set_dir} has no {sx.INDEX_NAME}; it is not a finished transfer set")
        urls = sx.shard_urls(set_dir, index)
    except (FormatError, OSError) as err:
        raise UserError(f"inspect: {set_dir}: {err}") from err
    for url, entry in zip(urls, index.shards or [], strict=True):  # cheap: sizes, not hashes (that is verify)
        size = storage.size(url) if storage.is_file(url) else None
        if entry.bytes is not None and size != entry.bytes:
            found = "missing" if size is None else f"{size} bytes, the index says {entry.bytes}"
            raise UserError(f"inspect: shard {url} is {found}; run `transferset verify {set_dir}`")
    try:  # manifest.parquet, or a packed set's records decoded
        table = sx.read_manifest(set_dir).to_pydict() if format_of(index).writes_manifest \
            else shard_format(index).manifest(set_dir, index)
    except (FormatError, OSError) as err:
        raise UserError(f"inspect: {set_dir}: {err}") from err
    return index, table


def shard_format(index: SetIndex) -> ShardFormat:
    """The format ``inspect`` reads the set in (a replay set's over its own source)."""
    found = format_of(index).checked(index)
    if isinstance(found, str):
        raise UserError(f"inspect: {found}; run `transferset verify`")
    return found


def _decoded(url: str, index: SetIndex, shard_format: ShardFormat) -> Iterator[Record]:
    """A shard's records decoded as its task reads them; a damaged shard or record is a user
    error naming it."""
    try:
        for key, decode in shard_format.records(url, index.kind):
            where = f"inspect: shard {url}: sample {key}"
            try:
                yield decode()
            except FormatError as err:  # verify's range checks, on the records inspect rebuilds
                raise UserError(f"{where}: {err}; run `transferset verify`") from err
            except (ValueError, IndexError, KeyError) as err:  # a record that does not decode
                raise UserError(f"{where}: cannot decode ({type(err).__name__}: {clip(err)}); "
                                f"run `transferset verify`") from err
    except FormatError as err:
        raise UserError(f"inspect: shard {url}: {err}; run `transferset verify`") from err


def records(set_dir: str, index: SetIndex, limit: int) -> list[Record]:
    """The first ``limit`` records of the set, spread over its shards (first records of each)."""
    urls = sx.shard_urls(set_dir, index)
    per_shard = max(1, math.ceil(limit / max(len(urls), 1)))
    found: list[Record] = []
    reader = shard_format(index)
    for url in urls:
        for taken, record in enumerate(_decoded(url, index, reader)):
            if taken == per_shard or len(found) == limit:
                break
            found.append(record)
        if len(found) == limit:
            break
    return found


def stored_bytes(set_dir: str, index: SetIndex, members: tuple[str, ...]) -> dict[str, float]:
    """Bytes per sample of the target (its tar members with .npy headers, first shard; a replay
    record's target column) and of whole shards."""
    urls = sx.shard_urls(set_dir, index)
    return {"target_npy_bytes_per_sample": format_of(index).target_bytes(urls, index, members),
            "shard_bytes_per_sample": sum(int(s.bytes or 0) for s in index.shards or [])
            / max(int(index.totals.samples or 0), 1)}


def quantile_stats(values: np.ndarray) -> dict[str, float]:
    """mean, std and the 10/50/90 % quantiles (zeros for no values)."""
    if not len(values):
        return {"mean": 0.0, "std": 0.0, "p10": 0.0, "median": 0.0, "p90": 0.0}
    p10, median, p90 = np.quantile(values, [0.1, 0.5, 0.9])
    return {"mean": float(values.mean()), "std": float(values.std()), "p10": float(p10), "median": float(median),
            "p90": float(p90)}


def by_lambda(lam: np.ndarray, values: np.ndarray, key: str = "entropy_mean") -> list[dict[str, Any]]:
    """Mean of a per-sample value (Ĥ, or a predicted σ) in LAMBDA_BINS equal bins of λ."""
    rows = []
    edges = np.linspace(0.0, 1.0, LAMBDA_BINS + 1)
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        inside = (lam >= low) & ((lam < high) if high < 1 else (lam <= high))
        rows.append({"lam_low": round(float(low), 3), "lam_high": round(float(high), 3), "count": int(inside.sum()),
                     key: float(values[inside].mean()) if inside.any() else None})
    return rows


def per_sampler(table: dict[str, list[Any]]) -> dict[str, int]:
    samplers, counts = np.unique(np.asarray(table["sampler"]), return_counts=True)
    return {str(k): int(v) for k, v in zip(samplers, counts, strict=True)}


def header(set_dir: str, index: SetIndex, table: dict[str, list[Any]]) -> dict[str, Any]:
    """The statistics every kind of set starts with: where, what, how much, which samplers."""
    return {"set": set_dir, "name": index.name, "fingerprint": index.fingerprint,
            "samples": int(index.totals.samples or 0), "shards": len(index.shards or [])}


def header_lines(stats: dict[str, Any], task: str) -> list[str]:
    """The first two lines of ``inspect``'s text, for either task: where, how much, which samplers."""
    return [f"set {stats['name']} at {stats['set']}: {stats['samples']} samples in {stats['shards']} shards, "
            f"{task}, fingerprint {str(stats['fingerprint'])[:12]}",
            "samplers: " + ", ".join(f"{k} {v}" for k, v in stats["per_sampler"].items())]


def image_grid(count: int, width: float, height: float) -> tuple[Any, Any]:
    """A figure of 8 columns, one axis per image (``width`` × ``height`` inches each)."""
    import matplotlib.pyplot as plt

    cols = 8
    rows_n = max(1, math.ceil(count / cols))
    return plt.subplots(rows_n, cols, figsize=(cols * width, rows_n * height), squeeze=False)


def save(fig: Any, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)

"""What ``transferset inspect`` does for every kind of set: read the set, sample its records,
bin a per-sample value by the mixing weight λ, summarise values, measure stored bytes, save plots."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import FormatError, UserError, clip
from core.records.format import iter_tar, read_records, sample_key
from core.records.replay import decode_record
from core.records.replay_checks import record_problems
from core.samplers import apply_params
from core.sets import index as sx
from core.sets.index import SetIndex
from core.store import storage
from core.tasks import CLASSIFY, Record, decode_fields
from pipeline.inspect.verify_replay import replay_context

LAMBDA_BINS = 10
GRID_SAMPLES = 32


def open_set(set_dir: str) -> tuple[SetIndex, dict[str, list[Any]]]:
    """The set's index and its manifest's columns; a missing or unreadable set is a user error."""
    try:
        index = sx.read_index(set_dir)
        if index is None:
            raise UserError(f"inspect: {set_dir} has no {sx.INDEX_NAME}; it is not a finished transfer set")
        table = sx.read_manifest(set_dir).to_pydict()
        urls = sx.shard_urls(set_dir, index)
    except (FormatError, OSError) as err:
        raise UserError(f"inspect: {set_dir}: {err}") from err
    for url, entry in zip(urls, index.shards or [], strict=True):  # cheap: sizes, not hashes (that is verify)
        size = storage.size(url) if storage.is_file(url) else None
        if entry.bytes is not None and size != entry.bytes:
            found = "missing" if size is None else f"{size} bytes, the index says {entry.bytes}"
            raise UserError(f"inspect: shard {url} is {found}; run `transferset verify {set_dir}`")
    return index, table


def shard_records(url: str) -> Iterator[dict[str, bytes]]:
    """The members of each record of one shard; a damaged shard is a user error naming it."""
    try:
        for _, fields in iter_tar(url):
            yield fields
    except FormatError as err:
        raise UserError(f"inspect: shard {url}: {err}; run `transferset verify`") from err


def _replay_records(url: str, index: SetIndex) -> Iterator[Record]:
    """A replay shard's records decoded as a tar's would be: the image rebuilt from the source."""
    ctx = replay_context(index)
    if isinstance(ctx, str):
        raise UserError(f"inspect: {ctx}; run `transferset verify`")
    try:
        rows = read_records(url, ctx.layout.dtype)
    except FormatError as err:
        raise UserError(f"inspect: shard {url}: {err}; run `transferset verify`") from err
    shard = int(sx.parse_shard_name(storage.name_of(url)) or 0)
    layout = ctx.layout
    for position, row in enumerate(rows):
        where = f"inspect: shard {url}: sample {sample_key(shard, int(row['index']))}"
        found = record_problems(layout.params, rows[position:position + 1], layout.num_classes, ctx.source.raw_size)
        if found:  # verify's range checks, on the records inspect rebuilds
            raise UserError(f"{where}: {found[0][1]}; run `transferset verify`")
        try:
            meta, members = decode_record(layout, shard, row)
            record = {**CLASSIFY.decode_targets(members), "meta": meta,
                      "image": apply_params(meta["sampler"], meta["params"], ctx.source)}
        except (FormatError, ValueError, IndexError, KeyError) as err:  # a record that does not decode
            raise UserError(f"{where}: cannot decode ({type(err).__name__}: {clip(err)}); run `transferset verify`") \
                from err
        yield record


def records(set_dir: str, index: SetIndex, limit: int) -> list[Record]:
    """The first ``limit`` records of the set, spread over its shards (first records of each)."""
    urls = sx.shard_urls(set_dir, index)
    per_shard = max(1, math.ceil(limit / max(len(urls), 1)))
    found: list[Record] = []
    for url in urls:
        decoded = _replay_records(url, index) if index.replay is not None else \
            (decode_fields(fields, index.kind) for fields in shard_records(url))
        for taken, record in enumerate(decoded):
            if taken == per_shard or len(found) == limit:
                break
            found.append(record)
        if len(found) == limit:
            break
    return found


def stored_bytes(set_dir: str, index: SetIndex, members: tuple[str, ...]) -> dict[str, float]:
    """Bytes per sample of the target's tar members (with .npy headers; first shard; a replay
    record's target column) and of whole shards."""
    if index.replay is not None:
        return {"target_npy_bytes_per_sample": float(index.target.payload_bytes or 0),
                "shard_bytes_per_sample": sum(int(s.bytes or 0) for s in index.shards or [])
                / max(int(index.totals.samples or 0), 1)}
    sizes = [sum(len(fields[m]) for m in members) for fields in shard_records(sx.shard_urls(set_dir, index)[0])]
    return {"target_npy_bytes_per_sample": float(np.mean(sizes)) if sizes else 0.0,
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

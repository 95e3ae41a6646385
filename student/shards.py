"""Transfer sets as the student reads them: checked indexes, and whole shards decoded into arrays.

Why whole shards: decoding, collating and shipping samples one by one (webdataset's model) costs
tens of microseconds of Python per sample, which is more than a small student's training step
spends on it. A shard decoded at once becomes three arrays (images, log-probabilities, labels);
batches are then cut from them with vectorised indexing, and small sets stay decoded in a
per-process cache (:class:`DecodedCache`), so later epochs touch no PNG, JSON or tar at all.
The shards stay the source of truth: the cache is only ever filled from them.

Why every shard's sample count is checked: a tar cut at a member boundary reads like a shorter
archive, so a damaged shard would silently look short. Records are decoded by their task
(:func:`core.tasks.decode_fields`, no pickle) into one dense ``target`` row per sample: C
log-probabilities (whatever the stored form: dense, top-k, or the dense estimate of a sampled
target), or ``[μ, log σ²]`` (2·D values) for a regression set, so the stream carries every task
unchanged; a sampled-class set adds a ``weights`` row per sample (its importance weights over the
classes), which is what its KD loss uses.

How a shard is decoded is its set's format's (:mod:`core.sets.formats`), chosen from the index
when the set is opened: a tar's records one by one, or a replay set's ``.npy`` of records
without pixels, whose images are rebuilt here, in the reader (a DataLoader worker), from the
source the set was made from (checked when the set is opened), column-wise and several shards
together (:mod:`core.sets.replay_read`). The per-record path of any format stays as the
reference that decode is tested against.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from core.errors import FormatError, UserError
from core.sets.arrays import ShardArrays, ShardDamage, decode_records, one_line
from core.sets.formats import PIXELS, format_of
from core.sets.index import read_index, shard_urls
from core.sets.shard_format import ShardFormat
from core.sources import Source
from core.store import storage
from core.tasks import Task, task_named

__all__ = ["DecodedCache", "SetShards", "ShardArrays", "ShardDamage", "check_sampled_temperature",
           "damage_message", "decode_per_record", "decode_shard", "decode_shards", "one_line",
           "open_transfer_sets"]


@dataclass(frozen=True)
class SetShards:
    """One transfer set as its index lists it (checked against the files on disk)."""

    directory: str
    weight: float
    urls: tuple[str, ...]
    samples: tuple[int, ...]
    task: str
    outputs: int  # what its teachers predict: classes, or the regression target's dimension D
    originals: bool = False  # views of the real images only (pick's x), not mixes or generated x′
    sampled_temperature: float | None = None  # a sampled-class set: the temperature its classes were drawn at
    shard_format: ShardFormat = PIXELS  # how its shards are decoded (a replay set's: over the job's source)

    @property
    def sampled(self) -> bool:
        """Its targets are importance-weighted sampled classes (rows carry ``weights``)."""
        return self.sampled_temperature is not None

    @property
    def kind(self) -> Task:
        return task_named(self.task)

    @property
    def width(self) -> int:
        """Values per sample in the target slot: classes, or μ and log σ² (2·D) for regression."""
        return self.kind.width(self.outputs)


def damage_message(url: str, set_dir: str, reason: str) -> str:
    return (f"transfer shard {url} is damaged ({reason}); run `transferset verify {set_dir}`, then "
            f"delete the bad shard and run `transferset generate` again to remake it, "
            f"or set train.on_bad_shard: skip")


# ---------------------------------------------------------------- opening sets


def _open_set(set_dir: str, weight: float, check_sizes: bool, source: Source | None = None) -> SetShards:
    try:
        index = read_index(set_dir)
        if index is None:
            raise UserError(f"transfer set {set_dir}: no index.json, the set is incomplete; "
                            f"run `transferset generate CONFIG` to finish it")
        urls = shard_urls(set_dir, index)
    except FormatError as err:
        raise UserError(f"transfer set {set_dir}: {err}") from err
    entries = index.shards or []
    samples = tuple(int(entry.samples if entry.samples is not None else -1) for entry in entries)
    if not urls or (min(samples) >= 0 and sum(samples) == 0):
        raise UserError(f"transfer set {set_dir}: its index lists no samples; regenerate the set")
    for url, entry in zip(urls, entries, strict=True):  # local paths or fsspec URLs
        if not storage.is_file(url):
            raise UserError(damage_message(url, set_dir, "file missing"))
        size = storage.size(url) if check_sizes and entry.bytes is not None else None
        if size is not None and size != int(entry.bytes):
            raise UserError(damage_message(url, set_dir, f"{size} bytes, the index says {entry.bytes}"))
    if index.outputs < 1:
        raise UserError(f"transfer set {set_dir}: {index.kind.missing_outputs()}")
    set_cfg = index.set_config()
    tempered = index.target.temperature_free is False  # drawn at a temperature: a kd student must use it
    if tempered and not index.target.temperature:
        raise UserError(f"transfer set {set_dir}: its index gives sampled targets without a temperature; "
                        f"regenerate the set")
    return SetShards(str(set_dir), float(weight), tuple(urls), samples, index.kind.name, index.outputs,
                     originals=set_cfg is not None and set_cfg.enumerates_source(),
                     sampled_temperature=float(index.target.temperature) if tempered else None,
                     shard_format=format_of(index).opened(str(set_dir), index, source))


def open_transfer_sets(sets: list[tuple[str, float]], *, task: str | Task = "classify",
                       on_bad_shard: str = "error", source: Source | None = None) -> list[SetShards]:
    """Check every set before training: index, shard files (and sizes, unless damaged shards
    are to be skipped), one class count, the task the student is trained for, and that a replay
    set was made from ``source`` (the job's training split, which its images are rebuilt from)."""
    if not sets:
        raise UserError("kd training needs at least one transfer set")
    if any(weight < 0 for _, weight in sets):
        raise UserError(f"transfer set weights must be >= 0, got {[w for _, w in sets]}")
    opened = [_open_set(str(d), w, check_sizes=on_bad_shard == "error", source=source) for d, w in sets if w > 0]
    if not opened:
        raise UserError("transfer set weights are all 0; give at least one set a positive weight")
    task = task_named(task).name
    for shards in opened:
        if shards.task != task:
            raise UserError(f"transfer set {shards.directory}: task {shards.task!r}, the student is "
                            f"trained for {task!r}; use a set made by teachers of the same task")
    counts = {s.directory: s.width for s in opened}
    if len(set(counts.values())) > 1:
        raise UserError(f"transfer sets disagree on the number of classes (or target values): {counts}")
    return opened


def check_sampled_temperature(opened: list[SetShards], temperature: float) -> None:
    """A sampled-class set is an unbiased KD target only at the temperature it was drawn at:
    refuse a student at any other (reweighting would need the teacher's full distribution)."""
    for shards in opened:
        if shards.sampled and shards.sampled_temperature != temperature:
            raise UserError(f"transfer set {shards.directory}: its sampled targets were drawn at temperature "
                            f"{shards.sampled_temperature:g}, the student's kd.temperature is {temperature:g}; "
                            f"train at {shards.sampled_temperature:g} or regenerate the set with "
                            f"targets.temperature: {temperature:g}")


# ---------------------------------------------------------------- decoding


def decode_shards(shards: list[tuple[str, int]], width: int, shard_format: ShardFormat = PIXELS
                  ) -> list[ShardArrays]:
    """Shards ``(url, expected samples)`` decoded by their format, one :class:`ShardArrays` each,
    in order (a replay set's together, each source image decoded once for all of them). ``width``
    is the width of the target row (classes; 2·D for a regression set). Raises
    :class:`ShardDamage` naming the first bad shard."""
    return shard_format.decode_shards(shards, width)


def decode_shard(url: str, expected_samples: int, width: int, shard_format: ShardFormat = PIXELS) -> ShardArrays:
    """Every record of one shard decoded (:func:`decode_shards` of that shard alone)."""
    return decode_shards([(url, expected_samples)], width, shard_format)[0]


def decode_per_record(url: str, expected_samples: int, width: int, shard_format: ShardFormat = PIXELS
                      ) -> ShardArrays:
    """One shard decoded record by record through the task's decoder: a tar's path, and for a
    replay shard the reference its column-wise decode is tested (and benchmarked) against."""
    return decode_records(url, expected_samples, width, shard_format.records(url))


class DecodedCache:
    """Decoded shards kept in memory up to ``max_bytes`` (least recently used out first)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.items: OrderedDict[str, ShardArrays] = OrderedDict()
        self.bytes = 0
        self.decoded = 0  # shards decoded from disk (cache misses)

    def get(self, url: str, expected_samples: int, width: int, shard_format: ShardFormat = PIXELS) -> ShardArrays:
        return self.get_many([(url, expected_samples)], width, shard_format)[0]

    def get_many(self, shards: list[tuple[str, int]], width: int, shard_format: ShardFormat = PIXELS
                 ) -> list[ShardArrays]:
        """Shards ``(url, expected samples)`` in order: the cached ones as they are, the others
        decoded together in one :func:`decode_shards` call (a replay set's source images are then
        decoded once for all of them) and cached."""
        found = {url: self.items[url] for url, _ in shards if url in self.items}
        for url in found:
            self.items.move_to_end(url)
        missing = list({url: (url, count) for url, count in shards if url not in found}.values())
        if missing:
            for arrays in decode_shards(missing, width, shard_format):
                found[arrays.url] = arrays
                self._keep(arrays)
            self.decoded += len(missing)
        return [found[url] for url, _ in shards]

    def _keep(self, arrays: ShardArrays) -> None:
        if arrays.nbytes > self.max_bytes:
            return
        self.items[arrays.url] = arrays
        self.bytes += arrays.nbytes
        while self.bytes > self.max_bytes:
            _, dropped = self.items.popitem(last=False)
            self.bytes -= dropped.nbytes

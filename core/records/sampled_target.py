"""The sampled-class target: K classes drawn from the teacher, stored with importance weights, so
that a student's KD gradient from it is an unbiased estimate of the dense one ("Sparse Logit
Sampling", Anshumann et al., ACL 2025).

Why: top-k drops the tail, which is what a flat (mixed, uncertain) teacher distribution is made
of; its error is a bias no amount of training averages out. A sampled target is exact on
average instead: its error is noise, and SGD averages noise over samples and steps.

The draw, for a sample with temperature-free log p̄ and the set's temperature τ and ``uniform`` ε:
``p = softmax(log p̄ / τ)`` (the teacher as a student at τ sees it), the proposal
``q = (1 − ε)·p + ε/C``, K classes drawn i.i.d. from q (one multinomial draw), and a class drawn
c times gets the weight ``w = (c / K)·p / q``. Since E[c] = K·q, E[w] = p for every class, so for
anything linear in the target — the cross-entropy ``−Σ w log s`` and its gradient ``τ·(Σw·s − w)``
w.r.t. the student's logits — the expectation over draws is the dense value. Weights are NOT
renormalised (with ε > 0 their sum varies around 1; renormalising would bias the estimate).

The draw's randomness is the sample's own stream: ``default_rng([seed, shard, candidate,
TARGET_STREAM])``, so the same config gives byte-identical shards.
"""

from __future__ import annotations

import numpy as np

from core.errors import FormatError, RecordError
from core.records.target_codec import LOGP_FLOOR, complete_logp, complete_logp_rows, log_mass

# The word that separates a sample's target draw from its sampler's stream (seed, shard, index).
TARGET_STREAM = 0x5A4D
# float16 holds c / k within 2^-11 relative, so c is recoverable from the weight for k up to this.
COUNTS_CHECKED_UP_TO = 1024
FIELDS = ("index", "weight", "logp", "log_tail", "count", "classes")


def sampled_dtype(k: int, num_classes: int) -> np.dtype:
    """One record of ``min(k, C)`` slots: the distinct drawn classes (ascending; the smallest
    unsigned type that holds them), their importance weights (float16, at the set's temperature),
    their temperature-free log p̄ (float16, for the dense estimate), the log of p̄'s mass outside
    them, how many slots are used, and the class count. Unused slots are all zero."""
    slots = min(k, num_classes)
    index = np.uint8 if num_classes <= 256 else np.uint16 if num_classes <= 65536 else np.uint32
    count = np.uint8 if slots <= 255 else np.uint16
    return np.dtype([("index", np.dtype(index).newbyteorder("<"), (slots,)), ("weight", "<f2", (slots,)),
                     ("logp", "<f2", (slots,)), ("log_tail", "<f2"),
                     ("count", np.dtype(count).newbyteorder("<")), ("classes", "<u4")])


def target_rng(seed: int, shard: int, candidate: int) -> np.random.Generator:
    """The stream of one sample's class draw (independent of its sampler's stream)."""
    return np.random.default_rng([seed, shard, candidate, TARGET_STREAM])


def tempered(logp: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p̄ / τ)`` in float64 (log p̄ floored as the student's loss floors it)."""
    z = np.maximum(np.asarray(logp, dtype=np.float64).reshape(-1), LOGP_FLOOR) / temperature
    z -= z.max()
    p = np.exp(z)
    return p / p.sum()


def proposal(p: np.ndarray, uniform: float) -> np.ndarray:
    """``q = (1 − ε)·p + ε/C``: with ε > 0 every class can be drawn."""
    return (1.0 - uniform) * p + uniform / len(p)


def draw_counts(logp: np.ndarray, k: int, temperature: float, uniform: float,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(counts, weights)`` over all C classes (float64 weights, not yet rounded): K draws from q."""
    p = tempered(logp, temperature)
    q = proposal(p, uniform)
    counts = rng.multinomial(k, q / q.sum())
    weights = np.where(counts > 0, counts / k * p / np.where(counts > 0, q, 1.0), 0.0)
    return counts, weights


def sample_target(logp: np.ndarray, k: int, temperature: float, uniform: float,
                  rng: np.random.Generator) -> np.ndarray:
    """The sampled-class record of a dense log p̄ (see the module docstring)."""
    full = np.asarray(logp, dtype=np.float64).reshape(-1)
    classes = len(full)
    counts, weights = draw_counts(full, k, temperature, uniform, rng)
    drawn = np.flatnonzero(counts)  # ascending
    record = np.zeros((), dtype=sampled_dtype(k, classes))
    n = len(drawn)
    record["index"][:n] = drawn
    record["weight"][:n] = weights[drawn]
    record["logp"][:n] = np.maximum(full[drawn], LOGP_FLOOR)
    record["log_tail"] = log_mass(np.delete(full, drawn))
    record["count"] = n
    record["classes"] = classes
    return record


def _one(record: np.ndarray) -> np.ndarray:
    if np.size(record) != 1 or record.dtype.names is None or set(record.dtype.names) != set(FIELDS):
        raise FormatError(f"sampled-class record has dtype {record.dtype} and {np.size(record)} entries, "
                          f"expected one record of fields {list(FIELDS)}")
    record = np.asarray(record).reshape(())
    if int(record["count"]) > record["index"].shape[0]:
        raise FormatError(f"sampled-class record uses {int(record['count'])} of {record['index'].shape[0]} slots")
    return record


def used(record: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(classes, weights, log p̄)`` of the used slots."""
    record = _one(record)
    n = int(record["count"])
    return record["index"][:n].astype(np.int64), record["weight"][:n].astype(np.float32), record["logp"][:n]


def dense_weights(record: np.ndarray) -> np.ndarray:
    """The weights as a float32 row over all C classes, zero where nothing was drawn: the target
    a student's KD cross-entropy ``−Σ_c w_c·log s_c`` takes as it is."""
    record = _one(record)
    index, weight, _ = used(record)
    row = np.zeros(int(record["classes"]), dtype=np.float32)
    if len(index) and index.max() >= len(row):
        raise FormatError(f"sampled-class record has class indices beyond its {len(row)} classes")
    row[index] = weight
    return row


def reconstruct_sampled(record: np.ndarray) -> np.ndarray:
    """A dense float32 log p̄ ESTIMATE for readers that need one (inspect, pick, reports): exact
    (float16) on the drawn classes, p̄'s remaining mass spread evenly over the others. It is not
    what a KD student learns from (that is :func:`dense_weights`)."""
    record = _one(record)
    index, _, logp = used(record)
    return complete_logp(int(record["classes"]), index, logp, float(record["log_tail"]), "sampled-class")


def used_slots(column: np.ndarray) -> np.ndarray:
    """bool (N, S): the used slots of a column of sampled-class records (fields as
    :func:`sampled_dtype` without ``classes``); a count beyond the slots raises :class:`RecordError`."""
    count = np.asarray(column["count"], dtype=np.int64)
    slots = column["index"].shape[1]
    over = count > slots
    if over.any():
        row = int(np.argmax(over))
        raise RecordError(row, f"sampled-class record uses {int(count[row])} of {slots} slots")
    return np.arange(slots) < count[:, None]


def reconstruct_sampled_rows(column: np.ndarray, classes: int) -> np.ndarray:
    """:func:`reconstruct_sampled` of a whole column: float32 (N, C), the per-record rows bit for bit."""
    return complete_logp_rows(classes, column["index"], column["logp"], column["log_tail"], used_slots(column),
                              "sampled-class")


def dense_weights_rows(column: np.ndarray, classes: int) -> np.ndarray:
    """:func:`dense_weights` of a whole column: float32 (N, C), zero where nothing was drawn."""
    used = used_slots(column)
    index = np.asarray(column["index"], dtype=np.int64)
    beyond = ((index >= classes) & used).any(axis=1)
    if beyond.any():
        raise RecordError(int(np.argmax(beyond)),
                          f"sampled-class record has class indices beyond its {classes} classes")
    rows = np.zeros((len(index), classes), dtype=np.float32)
    r, s = np.nonzero(used)
    rows[r, index[r, s]] = column["weight"][r, s].astype(np.float32)
    return rows


def record_problems(record: np.ndarray, k: int, uniform: float) -> list[str]:
    """What is wrong with a decoded record of a set with ``k`` draws and proposal share ``uniform``
    (empty when nothing): distinct ascending classes, finite non-negative weights, zero unused
    slots, and — when the draw was from p alone (ε = 0) — weights that are counts / k summing to 1."""
    try:
        record = _one(record)
        index, weight, logp = used(record)
    except FormatError as err:
        return [str(err)]
    n, problems = len(index), []
    if n < 1:
        problems.append("no class was drawn")
    if n > 1 and not (np.diff(index) > 0).all():
        problems.append("drawn classes are not distinct and ascending")
    if not (np.isfinite(weight).all() and (weight >= 0).all()):
        problems.append("weights are not finite and non-negative")
    if not (np.isfinite(logp.astype(np.float32)).all() and (logp <= 0).all()):
        problems.append("log p̄ of the drawn classes is not finite and <= 0")
    unused = [record[f][n:] for f in ("index", "weight", "logp")]
    if any(np.any(u != 0) for u in unused):
        problems.append("unused slots are not zero")
    if uniform == 0 and n and k <= COUNTS_CHECKED_UP_TO:  # float16 c/k tells c apart up to here
        counts = weight.astype(np.float64) * k
        whole = np.round(counts)
        if not ((np.abs(counts - whole) <= whole * 2.0**-10) & (whole >= 1)).all() or int(whole.sum()) != k:
            problems.append(f"weights are not counts of {k} draws (the set draws from p alone)")
    return problems


"""Classification targets as stored: float16 temperature-free log-probabilities, dense or as a
compact top-k record. Part of the shard contract (:mod:`core.records.format` re-exports every name);
kept apart because it is numerics, not file layout.
"""

from __future__ import annotations

import math

import numpy as np

from core.errors import FormatError, RecordError

LOGP_DTYPE = np.float16
# float16 cannot hold -inf; log-probabilities below this carry no information anyway.
LOGP_FLOOR = -1e4


def quantize_logp(logp: np.ndarray) -> np.ndarray:
    return np.maximum(np.asarray(logp, dtype=np.float32), LOGP_FLOOR).astype(LOGP_DTYPE)


def topk_dtype(k: int, num_classes: int) -> np.dtype:
    """One record: the k largest log-probabilities (float16, descending), their class indices
    (the smallest unsigned type that holds them), log of the remaining mass, the class count."""
    index = np.uint8 if num_classes <= 256 else np.uint16 if num_classes <= 65536 else np.uint32
    return np.dtype([("logp", "<f2", (k,)), ("index", np.dtype(index).newbyteorder("<"), (k,)),
                     ("log_tail", "<f2"), ("classes", "<u4")])


def compress_topk(logp: np.ndarray, k: int) -> np.ndarray:
    """The top-k record of a dense log p̄ (computed in float64; the tail mass is summed from the
    tail itself, not 1 − top, so it keeps its precision when it is tiny)."""
    full = np.asarray(logp, dtype=np.float64).reshape(-1)
    classes = len(full)
    k = min(k, classes)
    order = np.argsort(-full, kind="stable")
    top = order[:k]
    record = np.zeros((), dtype=topk_dtype(k, classes))
    record["logp"] = np.maximum(full[top], LOGP_FLOOR)
    record["index"] = top
    record["log_tail"] = log_mass(full[order[k:]])
    record["classes"] = classes
    return record


def reconstruct_logp(record: np.ndarray) -> np.ndarray:
    """Dense float32 log p̄ from a top-k record: the k stored entries, and the tail mass spread
    evenly over the other classes (the maximum-entropy completion), renormalised."""
    if np.size(record) != 1:
        raise FormatError(f"top-k record holds {np.size(record)} entries, expected 1")
    record = np.asarray(record).reshape(())
    return complete_logp(int(record["classes"]), record["index"], record["logp"], float(record["log_tail"]), "top-k")


def complete_logp(classes: int, index: np.ndarray, known: np.ndarray, log_tail: float, what: str) -> np.ndarray:
    """Dense float32 log p̄ from the log-probabilities ``known`` of the classes ``index`` and the
    log of the mass outside them, spread evenly over the other classes, renormalised (shared by
    the top-k and the sampled-class records)."""
    top = np.asarray(known, dtype=np.float64).reshape(-1)
    index = np.asarray(index, dtype=np.int64).reshape(-1)
    if len(np.unique(index)) != len(index) or (len(index) and (index.max() >= classes)):
        raise FormatError(f"{what} record has invalid class indices for {classes} classes")
    rest = classes - len(index)
    full = np.full(classes, -np.inf if rest == 0 else log_tail - math.log(max(rest, 1)))
    full[index] = top
    peak = full.max()
    full -= peak + math.log(np.exp(full - peak).sum())
    return np.maximum(full, LOGP_FLOOR).astype(np.float32)


def reconstruct_logp_rows(column: np.ndarray, classes: int) -> np.ndarray:
    """:func:`reconstruct_logp` of a whole column of top-k records (fields ``logp``, ``index``,
    ``log_tail``; the class count given): float32 (N, C), the very rows the per-record path gives."""
    index = np.asarray(column["index"])
    return complete_logp_rows(classes, index, column["logp"], column["log_tail"],
                              np.ones(index.shape, dtype=bool), "top-k")


def complete_logp_rows(classes: int, index: np.ndarray, known: np.ndarray, log_tail: np.ndarray,
                       used: np.ndarray, what: str) -> np.ndarray:
    """:func:`complete_logp` of N records at once, row r from its slots where ``used[r]``: the
    same float32 rows bit for bit — why each step mirrors it: logs by ``math.log`` (numpy's
    vectorised log may differ in the last bit), sums along contiguous rows (numpy sums each row
    as it sums one vector). A bad row raises :class:`RecordError` naming it."""
    index = np.asarray(index, dtype=np.int64).reshape(len(log_tail), -1)
    rows, slots = index.shape
    filled = np.where(used, index, classes + np.arange(slots))  # unused slots: distinct, out of range
    bad = ((filled >= classes) & used).any(axis=1)
    if slots > 1:
        bad |= (np.diff(np.sort(filled, axis=1), axis=1) == 0).any(axis=1)
    if bad.any():
        raise RecordError(int(np.argmax(bad)), f"{what} record has invalid class indices for {classes} classes")
    rest = classes - used.sum(axis=1)
    logs = {int(r): -math.inf if r == 0 else math.log(max(int(r), 1)) for r in np.unique(rest)}
    tail = np.asarray(log_tail, dtype=np.float64)
    fill = np.where(rest == 0, -np.inf, tail - np.array([logs[int(r)] for r in rest], dtype=np.float64))
    full = np.repeat(fill[:, None], classes, axis=1)
    r, s = np.nonzero(used)
    full[r, index[r, s]] = np.asarray(known, dtype=np.float64)[r, s]
    peak = full.max(axis=1)
    sums = np.exp(full - peak[:, None]).sum(axis=1)
    full -= (peak + np.array([math.log(v) for v in sums.tolist()], dtype=np.float64))[:, None]
    return np.maximum(full, LOGP_FLOOR).astype(np.float32)


def log_mass(rest: np.ndarray) -> float:
    """log of the probability mass of the classes whose log-probabilities are ``rest``, summed
    from them (precise when it is tiny, unlike 1 − kept); LOGP_FLOOR when there are none."""
    rest = np.asarray(rest, dtype=np.float64).reshape(-1)
    if not len(rest):
        return LOGP_FLOOR
    peak = rest.max()
    return max(peak + math.log(np.exp(rest - peak).sum()), LOGP_FLOOR)


def kl_divergence(logp: np.ndarray, logq: np.ndarray) -> np.ndarray:
    """KL(p ‖ q) in nats along the last axis, from log-probabilities (float64)."""
    logp, logq = np.asarray(logp, np.float64), np.asarray(logq, np.float64)
    return np.sum(np.exp(logp) * (logp - logq), axis=-1)


def stored_logp(logp: np.ndarray, topk: int) -> np.ndarray:
    """What a reader gets back for ``logp`` stored densely (``topk`` 0) or as top-k."""
    return reconstruct_logp(compress_topk(logp, topk)) if topk else quantize_logp(logp)


def target_payload_bytes(num_classes: int, topk: int) -> int:
    """Bytes of target data per sample, without the .npy header and tar framing."""
    return topk_dtype(min(topk, num_classes), num_classes).itemsize if topk else 2 * num_classes

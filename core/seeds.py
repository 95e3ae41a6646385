"""Seeds derived from a job's seed: one function per use, because their widths differ and a
stored result depends on each.

* :func:`part_seed` — a named part of a job (teacher member m, run s of a student), 31 bits,
  from ``(seed, *parts)`` with string parts hashed. Teacher members' weights, hence the sets'
  fingerprints, and every student run depend on it.
* :func:`stream_seed` — one random stream of a training run (model init, data order, CutMix,
  the transfer stream, …), 63 bits (valid for ``torch.Generator.manual_seed``), from
  ``(seed, *stream)`` with integer stream ids.

Both are ``numpy.random.SeedSequence`` states, but of different words and widths: unifying them
would change every trained model, so they stay two, with names that say what they are for.
"""

from __future__ import annotations

import hashlib

import numpy as np


def part_seed(seed: int, *parts: int | str) -> int:
    """A stable 31-bit seed for a named part of the job (teacher member m, student s, ...)."""
    words = [seed] + [int(hashlib.sha256(p.encode()).hexdigest()[:8], 16) if isinstance(p, str) else p for p in parts]
    return int(np.random.SeedSequence(words).generate_state(1)[0] & 0x7FFFFFFF)


def stream_seed(seed: int, *stream: int) -> int:
    """A seed for one of a run's random streams (model init, data order, CutMix, ...), e.g.
    ``stream_seed(seed, CUTMIX_STREAM, epoch)``.

    Seeding two generators with the same number gives the same sequence twice; deriving each
    from ``(seed, *stream)`` keeps the streams independent.
    """
    words = [seed % 2**64, *(s % 2**64 for s in stream)]
    state = np.random.SeedSequence(words).generate_state(1, np.uint64)[0]
    return int(state >> np.uint64(1))  # 63 bits: valid for torch.Generator.manual_seed

"""What a run read, by origin (each transfer set, then the real split): the distinct samples and
distinct source images it read, and how many distinct source images its batches held.

The last figure is how close the stream comes to a global shuffle: a views set read a shard at a
time gives batches of a few images' views, which trains a student like a much smaller batch. The
trainer counts the rows as delivered (``pick``'s candidates included); the counts are part of the
resumable state (bitmaps packed 8 to a byte) and merged over DDP ranks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["Coverage"]


def _unique_count(values: np.ndarray) -> int:
    return int(len(np.unique(values)))


class Coverage:
    """Bitmaps of the samples and source images read per origin (``samples[o]`` samples each,
    ``images`` real images), and the running sum of distinct source images per batch."""

    def __init__(self, samples: list[int], images: int) -> None:
        self.sizes, self.image_count = [int(n) for n in samples], int(images)
        self.samples = [np.zeros(n, dtype=bool) for n in self.sizes]
        self.images = [np.zeros(self.image_count, dtype=bool) for _ in self.sizes]
        self.batch_images = [0] * len(self.sizes)  # Σ over batches of the origin's distinct source images
        self.batches = [0] * len(self.sizes)  # batches that held rows of the origin
        self.all_images, self.all_batches = 0, 0  # the same over whole batches

    def add(self, origin: np.ndarray, sample: np.ndarray, sources: np.ndarray) -> None:
        """One delivered batch: each row's origin, sample number and source images (−1: none)."""
        for where in np.unique(origin).tolist():
            rows = origin == where
            ids = sample[rows]
            self.samples[where][ids[(ids >= 0) & (ids < self.sizes[where])]] = True
            found = sources[rows].ravel()
            found = found[(found >= 0) & (found < self.image_count)]
            self.images[where][found] = True
            self.batch_images[where] += _unique_count(found)
            self.batches[where] += 1
        found = sources.ravel()
        self.all_images += _unique_count(found[found >= 0])
        self.all_batches += 1

    def rows(self) -> list[dict[str, Any]]:
        """Per origin: ``distinct_samples``, ``distinct_images`` and ``images_per_batch``."""
        return [{"distinct_samples": int(seen.sum()), "distinct_images": int(images.sum()),
                 "images_per_batch": total / batches if batches else 0.0}
                for seen, images, total, batches in zip(self.samples, self.images, self.batch_images,
                                                        self.batches, strict=True)]

    def images_per_batch(self) -> float:
        return self.all_images / self.all_batches if self.all_batches else 0.0

    # ------------------------------------------------------------ state and ranks

    def state(self) -> dict[str, Any]:
        return {"samples": [torch.from_numpy(np.packbits(s)) for s in self.samples],
                "images": [torch.from_numpy(np.packbits(s)) for s in self.images],
                "counts": [list(self.batch_images), list(self.batches), [self.all_images, self.all_batches]]}

    def restore(self, state: dict[str, Any]) -> None:
        """A saved state of the same origins (anything else is ignored: counting starts over)."""
        if len(state.get("samples", [])) != len(self.sizes):
            return
        self.samples = [np.unpackbits(t.numpy(), count=n).astype(bool) for t, n in zip(state["samples"], self.sizes,
                                                                                       strict=True)]
        self.images = [np.unpackbits(t.numpy(), count=self.image_count).astype(bool) for t in state["images"]]
        batch_images, batches, (self.all_images, self.all_batches) = state["counts"]
        self.batch_images, self.batches = list(batch_images), list(batches)

    def merged(self, reduce_max: Any, reduce_sum: Any) -> Coverage:
        """The coverage of all ranks: bitmaps OR-ed (``reduce_max`` of uint8 arrays), counts summed."""
        out = Coverage(self.sizes, self.image_count)
        out.samples = [reduce_max(s.astype(np.uint8)).astype(bool) for s in self.samples]
        out.images = [reduce_max(s.astype(np.uint8)).astype(bool) for s in self.images]
        counts = reduce_sum([*self.batch_images, *self.batches, self.all_images, self.all_batches])
        n = len(self.sizes)
        out.batch_images, out.batches = counts[:n], counts[n:2 * n]
        out.all_images, out.all_batches = counts[2 * n], counts[2 * n + 1]
        return out

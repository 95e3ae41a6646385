"""core.store.storage on a real S3 HTTP endpoint (moto's server, through s3fs).

A set's ``index.json`` and ``manifest.parquet`` are replaced whole while other jobs read them.
s3fs's file object reads with a HEAD and then a GET pinned to the HEAD's ETag, so a read that
meets a replacement failed (``FileExpired``, 177 of 400 reads in a tight loop before the fix):
a student or ``verify`` reading an index while a writer committed crashed. ``read_bytes`` is
one GET, which the store answers with one version whole."""

from __future__ import annotations

import threading

from core.store import storage


def test_a_file_replaced_while_read_is_read_whole_as_one_version(s3) -> None:
    url = "s3://cache/race/index.json"
    versions = [bytes([65 + n % 26]) * (2000 + 37 * (n % 50)) for n in range(10_000)]
    storage.atomic_write(url, versions[0])
    done = threading.Event()

    def rewrite() -> None:
        for data in versions[1:]:
            if done.is_set():
                return
            storage.atomic_write(url, data)

    writer = threading.Thread(target=rewrite)
    writer.start()
    try:
        reads = [storage.read_bytes(url) for _ in range(300)]
    finally:
        done.set()
        writer.join()
    known = set(versions)
    assert all(data in known for data in reads)
    assert len(set(reads)) > 1, "the writer never replaced the file while it was read"

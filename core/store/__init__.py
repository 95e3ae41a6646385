"""Bytes on a local disk or an object store, and who may write them (liveness, the set lease)."""

"""A cached set on a store: its index, spec and fingerprint, and the formats its shards are in."""

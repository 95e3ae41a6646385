"""A cached set on a store: its index, spec and fingerprint."""

"""The fast path: BPTT laid out for speed, tested against the reference."""

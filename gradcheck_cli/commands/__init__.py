"""The commands beyond analyze: verify, simulate, sweep, compare."""

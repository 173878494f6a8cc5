"""Sizes in bytes: as a user writes them (2G, 512M), as the reports print them (1.5 GiB),
and what the machine has available.
"""

from __future__ import annotations

import math
import os


def available() -> int | None:
    """Memory available to a new process now (MemAvailable on Linux), or None."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def parse_size(text: str) -> int:
    """``"2G"``, ``"512M"``, ``"1.5GiB"``, ``"1000000"`` → bytes."""
    units = {"": 1, "k": 2 ** 10, "m": 2 ** 20, "g": 2 ** 30, "t": 2 ** 40}
    body = text.strip().lower().removesuffix("ib").removesuffix("b")
    unit = body[-1] if body and body[-1] in "kmgt" else ""
    try:
        value = float(body[: len(body) - len(unit)])
    except ValueError:
        raise ValueError(f"{text!r} is not a size like 2G, 512M or 1000000") from None
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"{text!r}: a size must be a positive finite number")
    return int(value * units[unit])


def human(n: float) -> str:
    for unit, size in (("TiB", 2 ** 40), ("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"

"""Traffic floors: the bytes each op must move between memory and the cores, at the least.

A floor counts x-sized arrays (in the case's dtype; ``dy`` is float32 like x in every backward of
the grid) that any implementation must read or write; the parameter-sized arrays (weight, bias,
statistics, dweight, dbias) are left out. The roofline copy of a case moves the same number of
bytes (half read, half written), so::

    floor time        = time of that copy (the faster of the copies timed, see _roofline)
    fraction of floor = floor time / op time        (1.0 = as fast as moving the floor's bytes)

A fraction above :data:`FLOOR_SUSPECT` cannot be (nothing beats copying the bytes it must
move): it means the floor, or the roofline copy, is wrong for that case, and the report says so
instead of printing the number.

The rules (:func:`floor`):

- LN / RMSNorm / BN eval / GroupNorm forward, float32 or half: x read + y written;
- BN train: x read twice + y written when x does not fit in the last-level cache (the
  statistics must be known before the first y is written, so x is read again, from memory);
  x read once when it fits (the second pass reads it from the cache);
- backward: x and dy read + dx written; BN train backward reads them twice when x + dy do not
  fit in the last-level cache (its per-channel sums come before the first dx);
- add + LN: x and the residual read + y and x + residual written.

GroupNorm's groups and LayerNorm's rows are far smaller than the cache, so their two passes read
the group or row from cache: one read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

from ._cases import Case, OpSpec

#: Fallback last-level cache size when sysfs does not say (the 32 MB L3 of the project machines).
DEFAULT_LLC_BYTES = 32 << 20

#: A fraction of the floor above this is not a measurement but a wrong floor or roofline: copying
#: the floor's bytes is the fastest way to move them. 5% is room for the noise of two medians.
FLOOR_SUSPECT = 1.05


@lru_cache(maxsize=1)
def llc_bytes() -> int:
    """Size of the largest CPU cache (Linux sysfs), else :data:`DEFAULT_LLC_BYTES`."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    best = 0
    try:
        for entry in os.listdir(base):
            if not entry.startswith("index"):
                continue
            with open(os.path.join(base, entry, "size")) as f:
                text = f.read().strip().upper()
            mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
            best = max(best, int(text.rstrip("KMG")) * mult)
    except (OSError, ValueError):
        pass
    return best or DEFAULT_LLC_BYTES


@dataclass(frozen=True)
class Floor:
    """``reads`` and ``writes`` x-sized arrays; ``moves`` says which, in words."""

    reads: int
    writes: int
    moves: str

    @property
    def arrays(self) -> int:
        return self.reads + self.writes

    def nbytes(self, x_bytes: int) -> int:
        return self.arrays * x_bytes

    def as_json(self, x_bytes: int) -> dict:
        return {"reads": self.reads, "writes": self.writes, "arrays": self.arrays,
                "bytes": self.nbytes(x_bytes), "copies_of_x": self.arrays / 2, "moves": self.moves}


def floor(spec: OpSpec, x_bytes: int, llc_bytes: int) -> Floor:
    """The floor of ``spec`` on an x of ``x_bytes`` with a last-level cache of ``llc_bytes``."""
    if spec.kind == "add_layer_norm":
        return Floor(2, 2, "x and residual read, y and x + residual written")
    if spec.backward:
        twice = spec.kind == "batch_norm" and 2 * x_bytes > llc_bytes
        if twice:
            return Floor(4, 1, "x and dy read twice (x + dy exceed the LLC), dx written")
        return Floor(2, 1, "x and dy read, dx written")
    if spec.kind == "batch_norm" and spec.training:
        if x_bytes > llc_bytes:
            return Floor(2, 1, "x read twice (x exceeds the LLC), y written")
        return Floor(1, 1, "x read once (it fits in the LLC for the second pass), y written")
    return Floor(1, 1, "x read, y written")


def case_floor(case: Case, llc_bytes: int) -> Floor:
    return floor(case.spec, case.x_nbytes, llc_bytes)


def fraction(floor_time_s: float | None, op_time_s: float | None) -> float | None:
    """floor time / op time, or None when either is unknown."""
    if not floor_time_s or not op_time_s:
        return None
    return floor_time_s / op_time_s


def legend_lines() -> list[str]:
    """The rules, one line each, for the report's legend."""
    return [
        "LN / RMSNorm / BN eval / GroupNorm forward: x read + y written (2 arrays)",
        "BN train: x read twice + y written when x exceeds the LLC (3), else x read once (2)",
        "LN backward: x, dy read + dx written (3); BN train backward: x, dy read twice + dx written "
        "when x + dy exceed the LLC (5), else once (3)",
        "add + LN: x, residual read + y, x + residual written (4)",
    ]

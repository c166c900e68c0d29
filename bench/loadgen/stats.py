"""Exact percentiles from every sample (no histogram buckets, no sampling)."""

from __future__ import annotations

import math
from collections.abc import Iterable

PERCENTILES = (("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p99.9", 0.999))


def summarise(samples: Iterable[int]) -> dict[str, float | int | None]:
    """Nearest-rank percentiles, min, max and mean of integer samples (nanoseconds in, microseconds
    out): the p-th percentile is the smallest sample with at least p of all samples at or below it."""
    xs = sorted(samples)
    n = len(xs)
    out: dict[str, float | int | None] = {"n": n}
    if not n:
        for name, _ in PERCENTILES:
            out[name] = None
        out.update(min=None, max=None, mean=None)
        return out
    for name, p in PERCENTILES:
        out[name] = xs[max(0, math.ceil(p * n) - 1)] / 1000.0
    out["min"] = xs[0] / 1000.0
    out["max"] = xs[-1] / 1000.0
    out["mean"] = sum(xs) / n / 1000.0
    return out

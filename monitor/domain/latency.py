"""Latency summaries: exact percentiles from raw values, approximate from histograms.

Hourly rollups keep a log-spaced histogram so percentiles over 7 or 30 days can be merged
from a few hundred rows. Bucket k holds latencies in (GROWTH^(k-1), GROWTH^k] ms, so a
percentile read from it is at most 10% high.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

GROWTH = 1.1
_MAX_BUCKET = 200  # 1.1^200 ms is ~ 2.2e8 s: nothing a probe with a timeout can reach


def bucket_of(latency_ms: float) -> int:
    if latency_ms <= 1.0:
        return 0
    return min(_MAX_BUCKET, math.ceil(math.log(latency_ms) / math.log(GROWTH) - 1e-9))


def bucket_value(bucket: int) -> float:
    """The bucket's upper bound: the value a percentile read from it reports."""
    return float(GROWTH**bucket)


def histogram(values: Iterable[float]) -> dict[int, int]:
    out: dict[int, int] = {}
    for value in values:
        k = bucket_of(value)
        out[k] = out.get(k, 0) + 1
    return out


def merge(into: dict[int, int], other: Mapping[int, int]) -> dict[int, int]:
    for k, n in other.items():
        into[k] = into.get(k, 0) + n
    return into


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending sequence (q in 0..100)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def hist_percentile(hist: Mapping[int, int], q: float) -> float | None:
    total = sum(hist.values())
    if total == 0:
        return None
    rank = max(1, math.ceil(q / 100.0 * total))
    seen = 0
    for k in sorted(hist):
        seen += hist[k]
        if seen >= rank:
            return bucket_value(k)
    return bucket_value(max(hist))  # pragma: no cover - unreachable: seen reaches total


@dataclass(frozen=True, slots=True)
class Bucket:
    """Probes of one endpoint in one stretch of time: an hourly rollup, or raw results
    folded the same way."""

    start: float
    seconds: float
    probes: int
    successes: int
    histogram: dict[int, int]  # latency buckets of successful probes; {} when not wanted

    @property
    def uptime(self) -> float | None:
        return self.successes / self.probes if self.probes else None


def fold(results: Iterable[tuple[float, bool, float | None]], step: float) -> list[Bucket]:
    """(at, ok, latency_ms) results into buckets of `step` seconds aligned on multiples of
    `step`, oldest first; only buckets that have results."""
    acc: dict[float, tuple[int, int, list[float]]] = {}
    for at, ok, latency in results:
        start = (at // step) * step
        probes, successes, values = acc.get(start, (0, 0, []))
        if ok and latency is not None:
            values.append(latency)
        acc[start] = (probes + 1, successes + (1 if ok else 0), values)
    return [
        Bucket(start, step, probes, successes, histogram(values))
        for start, (probes, successes, values) in sorted(acc.items())
    ]

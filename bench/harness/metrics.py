"""The service's `/metrics` (Prometheus text format 0.0.4): samples, counters summed over series, histograms.

Per-job figures come from the difference of two scrapes: with one job at a time between them, the change of a
histogram's `_sum` is that job's exact value (not a bucket bound)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

Labels = frozenset[tuple[str, str]]


@dataclass(frozen=True)
class Histogram:
    buckets: tuple[tuple[float, float], ...]  # (upper bound, cumulative count), ascending, ending with +Inf
    total: float  # _sum
    count: float  # _count

    def minus(self, earlier: Histogram) -> Histogram:
        before = dict(earlier.buckets)
        return Histogram(
            tuple((bound, count - before.get(bound, 0.0)) for bound, count in self.buckets),
            self.total - earlier.total,
            self.count - earlier.count,
        )

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def quantile(self, q: float) -> tuple[float, float, float] | None:
        """(estimate, bucket lower bound, bucket upper bound) of quantile q, interpolated linearly inside its bucket
        as Prometheus' histogram_quantile does; None without observations. The bounds are what is known for sure."""
        if self.count <= 0 or not self.buckets:
            return None
        rank = q * self.count
        lower_bound, lower_count = 0.0, 0.0
        for bound, count in self.buckets:
            if count >= rank:
                if math.isinf(bound):
                    return lower_bound, lower_bound, bound
                inside = count - lower_count
                fraction = (rank - lower_count) / inside if inside > 0 else 1.0
                return lower_bound + (bound - lower_bound) * fraction, lower_bound, bound
            lower_bound, lower_count = bound, count
        return None


@dataclass(frozen=True)
class Metrics:
    samples: dict[tuple[str, Labels], float]

    @staticmethod
    def parse(text: str) -> Metrics:
        samples: dict[tuple[str, Labels], float] = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            found = SAMPLE.match(line.strip())
            if found is None:
                continue
            name, labels, value = found.groups()
            try:
                number = float(value)
            except ValueError:
                continue
            samples[(name, frozenset(LABEL.findall(labels or "")))] = number
        return Metrics(samples)

    def names(self) -> set[str]:
        return {name for name, _ in self.samples}

    def has(self, name: str) -> bool:
        return any(sample_name == name for sample_name, _ in self.samples)

    def total(self, name: str, **labels: str) -> float:
        """The sum of every series of `name` whose labels include `labels` (0 when there is none)."""
        wanted = set(labels.items())
        return sum(v for (n, series), v in self.samples.items() if n == name and wanted <= series)

    def histogram(self, name: str, **labels: str) -> Histogram | None:
        """`name`'s histogram, summed over the series whose labels include `labels`; None when not published."""
        wanted = set(labels.items())
        buckets: dict[float, float] = {}
        for (sample_name, series), value in self.samples.items():
            if sample_name == f"{name}_bucket" and wanted <= series:
                bound = float(dict(series)["le"])
                buckets[bound] = buckets.get(bound, 0.0) + value
        if not buckets:
            return None
        return Histogram(
            tuple(sorted(buckets.items())), self.total(f"{name}_sum", **labels), self.total(f"{name}_count", **labels)
        )


def histogram_delta(before: Metrics, after: Metrics, name: str) -> Histogram | None:
    later = after.histogram(name)
    if later is None:
        return None
    earlier = before.histogram(name)
    return later if earlier is None else later.minus(earlier)

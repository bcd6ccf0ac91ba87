"""Labelled Prometheus series looked up once, for the paths that run once per job."""

from __future__ import annotations

from typing import Generic, TypeVar

from prometheus_client.metrics import MetricWrapperBase

M = TypeVar("M", bound=MetricWrapperBase)


class Series(Generic[M]):
    """The children of one labelled metric by their label values (positional, in the
    metric's order). `labels()` checks its arguments and takes a lock on every call:
    2 to 3 us, which a worker paid twice for every job it ran. A child once made stays
    in the metric for good, so keeping it here holds nothing the metric does not."""

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: M) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], M] = {}

    def __call__(self, *values: str) -> M:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child

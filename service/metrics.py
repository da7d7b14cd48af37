"""Prometheus metrics of the API: jobs by state, queue depth and job durations (all read from Redis at
scrape time, so every API process reports the same figures, including jobs no API process looked at)
and HTTP requests.

Each app gets its own registry, so tests can build many apps in one process.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from jobs.queues import QUEUES
from jobs.records import DURATION_BUCKETS
from jobs.redis_errors import StoreUnavailable
from jobs.store import JobStore

logger = logging.getLogger(__name__)


class _StoreCollector(Collector):
    """Reads job counts and queue depths from Redis on every scrape; a scrape never fails on an outage."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("clr_store_up", "1 when the job store (Redis) answered this scrape")
        try:
            counts = self.store.records.counts_by_state()
            depths = {q: self.store.sends.queue_depth(q) for q in QUEUES}
            durations = self.store.records.duration_histograms()
        except StoreUnavailable as exc:
            logger.warning("metrics scrape without the store: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        jobs = GaugeMetricFamily("clr_jobs", "stored jobs in each state (deleted ones leave)", labels=["state"])
        for state, count in counts.items():
            jobs.add_metric([state], count)
        yield jobs
        depth = GaugeMetricFamily("clr_queue_depth", "jobs waiting for a worker of each queue (Celery messages "
                                  "plus jobs waiting their key's turn)",
                                  labels=["queue"])
        for queue, count in depths.items():
            depth.add_metric([queue], count)
        yield depth
        # Cumulative since the durations hash began (every final transition adds to it in Redis), so
        # it behaves as a Prometheus histogram should: counts only grow, rate() works.
        histogram = HistogramMetricFamily(
            "clr_job_duration_seconds", "run time of finished jobs (started, else created, to finished)",
            labels=["kind", "state"])
        for (kind, state), entry in sorted(durations.items()):
            buckets = [(f"{bound:g}", n) for bound, n in zip(DURATION_BUCKETS, entry["buckets"], strict=True)]
            histogram.add_metric([kind, state], [*buckets, ("+Inf", entry["count"])], entry["sum"])
        yield histogram


class ServiceMetrics:
    """The app's registry and the metrics the request path updates."""

    def __init__(self, store: JobStore) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_StoreCollector(store))
        self.requests = Counter("clr_http_requests", "HTTP requests answered",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("clr_http_request_duration_seconds", "time to answer a request",
                                 ["method", "route"], registry=self.registry)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)

"""Prometheus metrics of the API: jobs by state and queue depth (read from Redis at scrape time),
job durations (observed when this process first sees a job in a final state) and HTTP requests.

Each app gets its own registry, so tests can build many apps in one process.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from service.queue import QUEUES
from service.store import FINAL_STATES, JobStore, StoreUnavailable

logger = logging.getLogger(__name__)

DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 12 * 3600, float("inf"))
_FINAL = {s.value for s in FINAL_STATES}
_SEEN_MAX = 50_000


class _StoreCollector(Collector):
    """Reads job counts and queue depths from Redis on every scrape; a scrape never fails on an outage."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("clr_store_up", "1 when the job store (Redis) answered this scrape")
        try:
            counts = self.store.counts_by_state()
            depths = {q: self.store.queue_depth(q) for q in QUEUES}
        except StoreUnavailable as exc:
            logger.warning("metrics scrape without the store: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        jobs = GaugeMetricFamily("clr_jobs", "jobs in each state", labels=["state"])
        for state, count in counts.items():
            jobs.add_metric([state], count)
        yield jobs
        depth = GaugeMetricFamily("clr_queue_depth", "messages waiting in each Celery queue",
                                  labels=["queue"])
        for queue, count in depths.items():
            depth.add_metric([queue], count)
        yield depth


class ServiceMetrics:
    """The app's registry and the metrics the request path updates."""

    def __init__(self, store: JobStore) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_StoreCollector(store))
        self.job_duration = Histogram(
            "clr_job_duration_seconds", "run time of finished jobs (started to finished), by kind and state",
            ["kind", "state"], buckets=DURATION_BUCKETS, registry=self.registry,
        )
        self.requests = Counter("clr_http_requests", "HTTP requests answered",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("clr_http_request_duration_seconds", "time to answer a request",
                                 ["method", "route"], registry=self.registry)
        self._seen: OrderedDict[str, None] = OrderedDict()

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def observe_job(self, record: dict) -> None:
        """Count a job's duration once, the first time this process sees it finished."""
        if record["state"] not in _FINAL or record["id"] in self._seen:
            return
        self._seen[record["id"]] = None
        if len(self._seen) > _SEEN_MAX:
            self._seen.popitem(last=False)
        start, end = record.get("started_at") or record.get("created_at"), record.get("finished_at")
        if start is not None and end is not None:
            self.job_duration.labels(record["kind"], record["state"]).observe(max(0.0, end - start))

    def render(self) -> bytes:
        return generate_latest(self.registry)

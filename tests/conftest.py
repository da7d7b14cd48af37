"""Shared fixtures: real Redis under a key prefix of this session's own, and real Celery worker processes.

Nothing is mocked: the store talks to the Redis at `CLR_TEST_REDIS_URL` (default the local one), and
workers are `celery -A worker.celery_app worker` subprocesses. Every Redis key of the session, the
Celery queues included, lives under one unique prefix, so parallel sessions on one Redis never meet.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable, Iterator

import pytest
import redis

from jobs.settings import Settings
from jobs.store import JobStore
from jobs.workers import WorkerRegistry
from tests.helpers import WorkerProcess
from tests.objectstore import ObjectStoreServer, SharedStore, StoreEndpoint

log = logging.getLogger(__name__)

# `make test` runs several sessions side by side (pytest-xdist): each session's in-process torch gets
# its share of the cores, not all of them (oversubscribed OpenMP threads spin and slow every session).
# Read by torch at import, which comes later; the workers the tests start already run one thread each.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_share))



def _redis_url() -> str:
    return os.environ.get("CLR_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings of this test session: own key prefix, temp folders, short leases so recovery is quick."""
    url = _redis_url()
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.ConnectionError as exc:
        pytest.exit(f"no Redis at {url} (start one with scripts/redis.sh): {exc}", returncode=2)
    base = tmp_path_factory.mktemp("clr")
    return Settings(
        redis_url=url,
        key_prefix=f"test-{secrets.token_hex(4)}",
        artifact_dir=base / "artifacts",
        data_dir=base / "data",
        download=False,
        open_mode=True,
        lease_seconds=2.0,
        heartbeat_seconds=0.3,
        sweep_interval=0.5,
        progress_interval=0.2,
        visibility_timeout=3600,
        job_time_limit=3000,  # the visibility timeout must cover a whole job
        max_deliveries=3,
        requeue_after_seconds=3600,  # the session's workers must not pick up jobs tests leave queued
    )


@pytest.fixture(scope="session")
def store(settings: Settings) -> Iterator[JobStore]:
    """The session's store; every key under its prefix is removed at the end."""
    job_store = JobStore.from_settings(settings)
    yield job_store
    job_store.delete_all()
    job_store.redis.close()


@pytest.fixture(scope="session")
def workers(store: JobStore) -> WorkerRegistry:
    """The session's worker registry, on the store's connection (its keys go with the store's)."""
    return WorkerRegistry(store.redis, store.prefix)


@pytest.fixture(scope="session")
def start_worker(
    settings: Settings, store: JobStore, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., WorkerProcess]]:
    """Factory: start a ready worker (`start_worker(CLR_QUEUE="gpu")`); all are stopped at session end."""
    workers: list[WorkerProcess] = []
    logs = tmp_path_factory.mktemp("worker-logs")

    def start(wait: bool = True, **env: str) -> WorkerProcess:
        worker = WorkerProcess(settings, logs / f"worker-{len(workers)}.log", **env)
        workers.append(worker)
        if wait:
            worker.wait_ready(store)
        return worker

    yield start
    for worker in workers:
        worker.stop()


@pytest.fixture(scope="session")
def worker(start_worker: Callable[..., WorkerProcess]) -> WorkerProcess:
    """One worker on the "cpu" queue, shared by the session (tests that kill workers start their own)."""
    return start_worker()


@pytest.fixture(scope="session")
def celery_sender(settings: Settings):
    """A Celery app that sends tasks by name with the session's broker options (as the API does)."""
    from worker.celery_app import create_app

    app = create_app(settings)
    yield app
    app.close()


@pytest.fixture(scope="session")
def object_store_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreEndpoint]:
    """A real SeaweedFS S3 bucket for the session: on the store `make test` started (`CLR_TEST_S3_ENDPOINT`),
    a bucket of the session's own; otherwise a `weed mini` of its own on free ports. Tests that stop
    the store take `private_object_store_server` instead."""
    shared = SharedStore.from_env()
    if shared is None:
        server = ObjectStoreServer(tmp_path_factory.mktemp("weed"))
        server.start()
        yield server
        server.stop()
        return
    try:
        shared.open()
    except Exception as exc:
        pytest.exit(f"no object store at CLR_TEST_S3_ENDPOINT={shared.endpoint} with the CLR_TEST_S3_* "
                    f"credentials (start one with scripts/objectstore.sh, or unset it): {exc}", returncode=2)
    yield shared
    try:
        shared.close()
    except Exception as exc:  # the bucket outlives the session; never fail a finished run for it
        log.warning("session bucket %s not removed: %s", shared.bucket, exc)


@pytest.fixture(scope="module")
def private_object_store_server(object_store_server: StoreEndpoint,
                                tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObjectStoreServer]:
    """A store no other session uses, for tests that stop and restart it: the session's own `weed mini`
    when it has one (plain `pytest`), else (the shared store of `make test`) one for the module."""
    if isinstance(object_store_server, ObjectStoreServer):
        yield object_store_server
        return
    server = ObjectStoreServer(tmp_path_factory.mktemp("weed-private"))
    server.start()
    yield server
    server.stop()

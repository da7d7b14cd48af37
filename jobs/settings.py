"""All configuration, read once from environment variables (prefix `CLR_`).

The API and the worker read the same object, so a deployment sets each value in one place.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from clrcore.specs import NotifySpec


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLR_", env_file=None, extra="ignore")

    redis_url: str = Field("redis://127.0.0.1:6379/0", description="job records, events and the Celery broker")
    key_prefix: str = Field("clr", description="prefix of every Redis key; lets tests share one Redis")
    artifact_dir: Path = Field(Path("runs/artifacts"), description="job run folders, shared by API and workers")
    data_dir: Path = Field(Path("runs/data"), description="datasets; names resolve only inside it")
    download: bool = Field(True, description="let torchvision download datasets that are missing")

    # Access. Keys are given as `name:secret` pairs, comma separated; only their hashes are kept.
    api_keys: str = Field("", description="comma-separated name:secret pairs")
    open_mode: bool = Field(False, description="no keys needed (local use only); jobs belong to 'local'")
    metrics_token: str = Field(
        "", description="if set, GET /metrics needs `Authorization: Bearer <token>`; empty: open to scrapers"
    )
    cors_origins: str = Field("", description="comma-separated allowed origins; empty means CORS closed")
    rate_limit_per_minute: int = Field(600, ge=1)
    max_body_bytes: int = Field(64 * 1024, description="JSON request bodies")
    sse_max_streams: int = Field(
        256, ge=1, description="event streams reading Redis at once, one connection each; more wait their turn"
    )

    # Limits a job spec must stay within (422 naming the field otherwise).
    max_epochs: int = Field(200, ge=1)
    max_range_test_iter: int = Field(5000, ge=5)
    max_batch_size: int = Field(4096, ge=1)

    # Uploaded datasets.
    max_upload_bytes: int = Field(512 * 1024 * 1024)
    max_upload_files: int = Field(200_000)
    upload_quota_bytes: int = Field(
        2 * 1024 * 1024 * 1024, description="per key: stored archives plus their decode caches"
    )
    max_decoded_bytes: int = Field(
        4 * 1024**3, ge=1,
        description="one dataset's pixels once decoded; a worker needs at least twice this in memory "
                    "(the decoded arrays, their stacked copy, the training tensors): size it to the workers",
    )
    max_compression_ratio: float = Field(
        200.0, gt=1,
        description="decompressed / compressed bytes allowed for an archive and for each image in it",
    )

    # Worker behaviour.
    queue: str = Field("cpu", description="queue this worker consumes: 'cpu' or 'gpu'")
    default_queue: str = Field("cpu", description="queue of jobs with device 'auto' (set 'gpu' with GPU workers)")
    lease_seconds: float = Field(30.0, gt=0, description="a job's lease; the running worker renews it")
    heartbeat_seconds: float = Field(5.0, gt=0)
    visibility_timeout: int = Field(
        6 * 3600 + 3600,
        description="Redis redelivery of unacknowledged tasks; at least job_time_limit, or a job still "
                    "running is delivered again",
    )
    max_deliveries: int = Field(5, ge=1, description="then the job fails: it keeps killing its worker")
    job_time_limit: float = Field(6 * 3600.0, gt=0, description="seconds; a job running longer fails")
    progress_interval: float = Field(0.25, gt=0, description="seconds between progress writes")
    sweep_interval: float = Field(5.0, gt=0, description="how often lapsed leases are looked for")
    requeue_after_seconds: float = Field(
        60.0, gt=0,
        description="a job queued this long (at least 2 x lease_seconds) that is in no queue is sent again",
    )

    # Webhooks: signed notices of a job's life (jobs/webhooks.py), sent by the "webhooks" queue's worker.
    webhook_secrets: str = Field(
        "", description="comma-separated name:whsec_<base64> pairs; a key named twice signs with each "
                        "(rotation: receivers accept either); a key without one cannot ask for webhooks",
    )
    webhook_defaults: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description='JSON, key name -> notify object: {"alice": {"url": "https://...", "events": [...]}}; '
                    "used for the key's jobs that have no `notify` of their own",
    )
    webhook_allow_networks: str = Field(
        "", description="comma-separated CIDRs a webhook may reach although not public (loopback, private, "
                        "link-local, metadata are refused otherwise), e.g. 127.0.0.0/8 for local receivers",
    )
    webhook_timeout: float = Field(5.0, gt=0, description="seconds for one attempt (connect, send, answer)")
    webhook_max_attempts: int = Field(10, ge=1)
    webhook_retry_base: float = Field(
        2.0, gt=0, description="seconds before the 2nd attempt; doubles each time (+-50% jitter)")
    webhook_retry_window: float = Field(
        6 * 3600.0, gt=0, description="seconds after the first attempt when retries stop")
    webhook_progress_interval: float = Field(10.0, gt=0, description="seconds between `progress` webhooks")
    webhook_record_ttl: int = Field(7 * 86400, ge=60, description="seconds delivery records are kept")
    webhook_concurrency: int = Field(16, ge=1, description="deliveries in flight per webhooks worker")

    @field_validator("webhook_defaults")
    @classmethod
    def _defaults_are_notify_objects(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """A typo in a key's default is a start-up error, not a webhook that silently never comes."""
        return {name: NotifySpec.model_validate(notify).model_dump(mode="json") for name, notify in value.items()}

    @model_validator(mode="after")
    def _visibility_covers_a_whole_job(self) -> Settings:
        """A visibility timeout below the job time limit hands a job that is still running to a second
        worker (kombu redelivers the unacknowledged message), so refuse that combination at start-up."""
        if self.visibility_timeout < self.job_time_limit:
            raise ValueError(
                f"visibility_timeout ({self.visibility_timeout} s, CLR_VISIBILITY_TIMEOUT) must be at least "
                f"job_time_limit ({self.job_time_limit:g} s, CLR_JOB_TIME_LIMIT): otherwise Redis delivers "
                "a job that is still running to a second worker; use job_time_limit + 3600"
            )
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()

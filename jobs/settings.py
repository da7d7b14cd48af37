"""All configuration, read once from environment variables (prefix `CLR_`).

The API and the worker read the same object, so a deployment sets each value in one place.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from clrcore.specs import NotifySpec


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLR_", env_file=None, extra="ignore", populate_by_name=True)

    redis_url: str = Field("redis://127.0.0.1:6379/0", description="job records, events and the Celery broker")
    key_prefix: str = Field("clr", description="prefix of every Redis key; lets tests share one Redis")
    artifact_dir: Path = Field(Path("runs/artifacts"), description="job run folders, shared by API and workers")
    data_dir: Path = Field(Path("runs/data"), description="datasets; names resolve only inside it")
    download: bool = Field(True, description="let torchvision download datasets that are missing")

    # Object store (issue 13). Unset: the folders above, on one machine (or a shared volume).
    storage_url: str = Field(
        "", description="s3://bucket/prefix puts artifacts, checkpoints and uploads into an S3-compatible store; "
                        "credentials and region from the standard AWS_* variables")
    s3_endpoint_url: str = Field(
        "", validation_alias=AliasChoices("CLR_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL"),
        description="the store's URL (MinIO, SeaweedFS, Ceph); empty: AWS S3")
    storage_timeout: float = Field(10.0, gt=0, description="seconds to connect to / read from the store")
    storage_retry_seconds: float = Field(
        60.0, ge=0, description="how long a worker retries an unreachable store before the job fails")
    presign_seconds: int = Field(
        0, ge=0, description="if > 0, model.pt and checkpoint downloads may answer ?redirect=1 with a presigned "
                             "URL valid this long; 0: the API streams them")
    worker_dir: Path = Field(Path("runs/worker"), description="a worker's private scratch: run folders and "
                                                             "the dataset cache (store mode only)")
    cache_max_bytes: int = Field(10 * 1024**3, ge=0, description="a worker's dataset cache, archives with their "
                                                                 "decode caches; least recently used go first")
    checkpoint_upload: Literal["background", "epoch"] = Field(
        "background", description="store mode: background = a thread uploads the epoch checkpoint while the "
        "next epoch trains; epoch = training waits at each epoch end until it is stored (a killed worker then "
        "never loses a finished epoch, at the cost of the upload time per epoch)")

    # Access. Keys are given as `name:secret` pairs, comma separated; only their hashes are kept.
    api_keys: str = Field("", description="comma-separated name:secret pairs")
    open_mode: bool = Field(False, description="no keys needed (local use only); jobs belong to 'local'")
    metrics_token: str = Field(
        "", description="if set, GET /metrics needs `Authorization: Bearer <token>` (kept hashed); empty: any "
                        "API key (or no key with open_mode or metrics_open)"
    )
    metrics_open: bool = Field(False, description="GET /metrics without any key (a scraper on a private network)")
    cors_origins: str = Field("", description="comma-separated allowed origins; empty means CORS closed")
    rate_limit_per_minute: int = Field(600, ge=1)
    max_body_bytes: int = Field(64 * 1024, description="JSON request bodies")
    max_active_jobs_per_key: int = Field(
        100, ge=1, description="queued plus running jobs one key may have; more answer 429 with Retry-After"
    )
    max_running_jobs_per_key: int = Field(
        0, ge=0, description="jobs of one key sent to the workers and not finished; its other jobs wait their "
                             "turn (0: no cap beyond CLR_MAX_ACTIVE_JOBS_PER_KEY)"
    )
    sse_max_streams_per_key: int = Field(16, ge=1, description="open event streams per key (per API process)")
    sse_max_streams: int = Field(
        256, ge=1, description="event streams reading Redis at once, one connection each; more wait their turn"
    )

    # The HTTP server (`python -m service.main`, the image's command): slow or idle clients are cut off.
    http_host: str = Field("127.0.0.1", description="address the API listens on (the image sets 0.0.0.0; put "
                                                    "a TLS proxy in front of anything not on loopback)")
    http_port: int = Field(8000, ge=1, le=65535)
    http_limit_concurrency: int = Field(512, ge=1, description="connections and tasks at once; then 503")
    http_keep_alive_seconds: int = Field(5, ge=1, description="an idle keep-alive connection is closed after")
    http_header_timeout_seconds: float = Field(
        30.0, gt=0, description="a request head (request line and headers) must arrive within this, counted from "
                                "the connection's start or the head's first byte; else the connection is closed "
                                "(10 s cut off legitimate but CPU-starved clients in the 30-minute soak)"
    )
    http_max_header_bytes: int = Field(
        16 * 1024, ge=1024, description="h11's cap on an incomplete request head (headers trickled or huge)"
    )

    # Limits a job spec must stay within (422 naming the field otherwise).
    max_epochs: int = Field(200, ge=1)
    max_range_test_iter: int = Field(5000, ge=5)
    max_batch_size: int = Field(4096, ge=1)

    # Uploaded datasets.
    max_upload_bytes: int = Field(512 * 1024 * 1024)
    max_upload_files: int = Field(200_000)
    upload_quota_bytes: int = Field(
        2 * 1024 * 1024 * 1024, description="per key: stored archives, their decode caches (every training "
        "size) and uploaded weights"
    )
    max_decoded_bytes: int = Field(
        4 * 1024**3, ge=1,
        description="one dataset's pixels once decoded into memory; a worker needs at least twice this in memory "
                    "(the decoded arrays, their stacked copy, the training tensors): size it to the workers. "
                    "Larger sets are streamed to disk (memmap_min_bytes) unless streaming is off",
    )
    memmap_min_bytes: int = Field(
        1024**3, ge=0,
        description="an uploaded image set whose decoded pixels (as cached, at the training size) reach this "
                    "many bytes, or would pass max_decoded_bytes, is decoded image by image into memmapped .npy "
                    "files in the decode cache and trained from disk a batch at a time, in bounded memory; the "
                    "API then accepts it past max_decoded_bytes, bounded by the key's quota (the decode "
                    "cache's size counts) and the data disk. 1 GiB by default: smaller sets (CIFAR-10 is "
                    "180 MB) decode into memory as before. 0: off, every set is decoded into memory and "
                    "max_decoded_bytes refuses larger uploads (422 too_large_decoded)",
    )
    max_compression_ratio: float = Field(
        200.0, gt=1,
        description="decompressed / compressed bytes allowed for an archive and for each image in it",
    )

    # Retention: finished jobs, their event logs and run folders are removed this long after they end.
    retention_days: float = Field(30.0, gt=0, description="days a finished job (record, events, files) is kept")

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
    job_time_limit: float = Field(
        6 * 3600.0, gt=0,
        description="seconds of running, summed over all its deliveries; a job running longer fails",
    )
    stall_seconds: float = Field(
        900.0, gt=0,
        description="a job that reports no progress for this long (hung download, blocked device or file "
                    "call) stops having its lease renewed, so another worker takes it over",
    )
    progress_interval: float = Field(0.25, gt=0, description="seconds between progress writes")
    sweep_interval: float = Field(5.0, gt=0, description="how often lapsed leases are looked for")
    requeue_after_seconds: float = Field(
        60.0, gt=0,
        description="a job queued this long (at least 2 x lease_seconds) that is in no queue is sent again",
    )

    @field_validator("api_keys")
    @classmethod
    def _keep_only_key_hashes(cls, value: str) -> str:
        """`name:secret` becomes `name:sha256:<hex>`, so the settings object (a debugger, a crash dump, a
        repr in a log) never holds a usable key; `service.auth.KeyRing` reads either form."""
        entries = []
        for entry in filter(None, (e.strip() for e in value.split(","))):
            name, sep, secret = entry.partition(":")
            entries.append(f"{name}:{secret_hash(secret)}" if sep and secret else entry)
        return ",".join(entries)

    @field_validator("metrics_token")
    @classmethod
    def _keep_only_token_hash(cls, value: str) -> str:
        return secret_hash(value) if value else value

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
    webhook_resend_after: float = Field(
        60.0, gt=0, description="seconds after which the webhooks workers send again a delivery whose "
                                "attempt is due but never came (its send failed, or its worker died)")

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


HASHED = "sha256:"


def secret_hash(secret: str) -> str:
    """`sha256:<hex>` of a secret; a value already in that form is kept (keys may be given hashed)."""
    if secret.startswith(HASHED) and len(secret) == len(HASHED) + 64:
        return secret
    return HASHED + hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


@lru_cache
def get_settings() -> Settings:
    return Settings()

"""clrclient: the clr-service API from Python (sync and async), and the `clr remote` command.

Torch-free: it shares clrcore's pydantic job specs and nothing else of clrcore's training stack.
"""

from clrclient.async_client import AsyncClient
from clrclient.client import Client
from clrclient.errors import (
    ApiError,
    ClientError,
    Conflict,
    InvalidRequest,
    NotFound,
    Problem,
    ServerError,
    Unauthorized,
    WaitTimeout,
)
from clrclient.events import StreamOutage
from clrclient.models import FINAL_STATES, Job, JobEvent, UploadedDataset, UploadedWeights
from clrclient.retries import RetryPolicy
from clrclient.webhooks import WebhookVerificationError, verify_webhook
from clrcore.specs import RangeTestSpec, TrainSpec

__all__ = [
    "FINAL_STATES", "ApiError", "AsyncClient", "Client", "ClientError", "Conflict", "InvalidRequest", "Job",
    "JobEvent", "NotFound", "Problem", "RangeTestSpec", "RetryPolicy", "ServerError", "StreamOutage",
    "TrainSpec", "Unauthorized", "UploadedDataset", "UploadedWeights", "WaitTimeout", "WebhookVerificationError",
    "verify_webhook",
]

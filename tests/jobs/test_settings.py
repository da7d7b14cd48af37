"""Settings that would break a deployment are refused at start-up, with the reason."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from jobs.settings import Settings


def test_default_visibility_timeout_covers_the_job_time_limit_with_an_hour_to_spare(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("CLR_VISIBILITY_TIMEOUT", "CLR_JOB_TIME_LIMIT"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.visibility_timeout == settings.job_time_limit + 3600 == 25200


def test_visibility_timeout_below_the_job_time_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLR_JOB_TIME_LIMIT", raising=False)
    monkeypatch.setenv("CLR_VISIBILITY_TIMEOUT", "3600")
    with pytest.raises(ValidationError, match=r"visibility_timeout \(3600 s.*must be at least job_time_limit"):
        Settings()
    monkeypatch.setenv("CLR_JOB_TIME_LIMIT", "3600")
    assert Settings().visibility_timeout == 3600  # equal is enough

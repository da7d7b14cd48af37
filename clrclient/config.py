"""The client's settings, from the environment: where the API is and which key to send."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class ClientSettings(BaseSettings):
    """`CLR_API_URL` and `CLR_API_KEY` (and `CLR_API_TIMEOUT`); arguments to `Client` win over them."""

    model_config = SettingsConfigDict(env_prefix="CLR_", extra="ignore")

    api_url: str = "http://127.0.0.1:8000"
    api_key: str | None = None
    api_timeout: float = 30.0

"""Fault and access tests reuse the API fixtures (apps with two keys on the session's Redis prefix)."""

from tests.service.conftest import api_settings, client  # noqa: F401  (fixtures, by name)

"""API keys: who is calling, decided in constant time from hashes only.

Keys arrive as `name:secret` pairs in `Settings.api_keys`, which keeps only `name:sha256:<hex>` (the
settings validator hashes them); only the SHA-256 of each secret is kept here too, so a memory dump or a
stray log line never shows a usable key. Every job belongs to the key's name.
"""

from __future__ import annotations

import hashlib
import hmac
import logging

from jobs.settings import HASHED, secret_hash

logger = logging.getLogger(__name__)

OPEN_MODE_OWNER = "local"


class KeyRing:
    """The accepted keys, as (sha256 digest, owner name) pairs."""

    def __init__(self, pairs: list[tuple[bytes, str]], *, open_mode: bool = False) -> None:
        self._pairs = pairs
        self.open_mode = open_mode

    @classmethod
    def from_setting(cls, api_keys: str, *, open_mode: bool = False) -> KeyRing:
        """Parse `name:secret,name2:secret2`; a malformed entry is a startup error, not a silent skip."""
        pairs: list[tuple[bytes, str]] = []
        for entry in filter(None, (e.strip() for e in api_keys.split(","))):
            name, sep, secret = entry.partition(":")
            if not sep or not name.strip() or not secret:
                raise ValueError("api_keys entries must look like name:secret")
            pairs.append((bytes.fromhex(secret_hash(secret)[len(HASHED):]), name.strip()))
        if open_mode:
            logger.warning("open mode: no API key needed and every job belongs to %r; local use only",
                           OPEN_MODE_OWNER)
        elif not pairs:
            logger.warning("no API keys configured and open mode off: every /v1 request will get 401")
        return cls(pairs, open_mode=open_mode)

    def owner_of(self, secret: str) -> str | None:
        """The owner name for a presented secret, or None.

        Every stored digest is compared (no early exit), so timing says nothing about which key matched.
        """
        presented = _digest(secret)
        owner: str | None = None
        for digest, name in self._pairs:
            if hmac.compare_digest(digest, presented):
                owner = name
        return owner


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None for anything else."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None

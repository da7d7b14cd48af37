"""Verifying a webhook the service sent: the Standard Webhooks scheme (`webhook-id`,
`webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`,
secret `whsec_<base64>`), through the specification's own `standardwebhooks` package.

    payload = verify_webhook(secret, request.body, request.headers)   # raises WebhookVerificationError

Give the old and the new secret while a key's secret is being rotated: either may have signed it.
The timestamp must be within five minutes of now (the package's tolerance), which stops replays.
"""

from __future__ import annotations

import binascii
from collections.abc import Iterable, Mapping
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

__all__ = ["WebhookVerificationError", "verify_webhook"]


def verify_webhook(secret: str | Iterable[str], body: bytes | str, headers: Mapping[str, str]) -> Any:
    """The parsed JSON payload if one of the secrets signed exactly this body at a recent time."""
    secrets = [secret] if isinstance(secret, str) else list(secret)
    if not secrets:
        raise WebhookVerificationError("no webhook secret given")
    flat = {str(k): str(v) for k, v in headers.items()}
    last: Exception = WebhookVerificationError("no matching signature found")
    for candidate in secrets:
        try:
            return Webhook(candidate).verify(body, flat)
        except WebhookVerificationError as exc:
            last = exc
        except (ValueError, binascii.Error, UnicodeDecodeError) as exc:  # a malformed header or body
            last = WebhookVerificationError(f"malformed webhook: {exc}")
    raise last

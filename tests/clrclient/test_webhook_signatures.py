"""The webhook verifier: the Standard Webhooks specification's published test vector, a fresh
signature accepted, and a tampered body, a wrong secret, an old timestamp or a malformed header refused."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook

from clrclient import WebhookVerificationError, verify_webhook

# The test vector the Standard Webhooks implementations check themselves against (Svix published it).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID, VECTOR_TS, VECTOR_BODY = "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, '{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

SECRET = "whsec_" + base64.b64encode(b"a-32-byte-secret-for-this-test!!").decode()
BODY = json.dumps({"type": "job.succeeded", "data": {"id": "j1", "state": "succeeded"}}).encode()


def signed(body: bytes, secret: str = SECRET, at: float | None = None, msg_id: str = "msg_1") -> dict[str, str]:
    ts = int(time.time() if at is None else at)
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(ts, UTC), body.decode())
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": signature}


def test_the_specifications_test_vector() -> None:
    at = datetime.fromtimestamp(VECTOR_TS, UTC)
    assert Webhook(VECTOR_SECRET).sign(VECTOR_ID, at, VECTOR_BODY) == VECTOR_SIGNATURE
    headers = {"webhook-id": VECTOR_ID, "webhook-timestamp": str(VECTOR_TS), "webhook-signature": VECTOR_SIGNATURE}
    with pytest.raises(WebhookVerificationError, match="too old"):  # a 2021 delivery is a replay today
        verify_webhook(VECTOR_SECRET, VECTOR_BODY, headers)


def test_a_fresh_signature_is_accepted_and_the_payload_returned() -> None:
    headers = {k.title(): v for k, v in signed(BODY).items()}  # header names in any case
    assert verify_webhook(SECRET, BODY, headers) == json.loads(BODY)


def test_either_secret_verifies_during_a_rotation() -> None:
    new = "whsec_" + base64.b64encode(b"the-next-secret-after-rotation!!").decode()
    assert verify_webhook([SECRET, new], BODY, signed(BODY, secret=new))["data"]["id"] == "j1"
    # A sender mid-rotation signs with both; the header then carries two signatures.
    both = signed(BODY)
    both["webhook-signature"] += " " + signed(BODY, secret=new)["webhook-signature"]
    assert verify_webhook(new, BODY, both)["type"] == "job.succeeded"


@pytest.mark.parametrize("case", ["tampered body", "wrong secret", "old timestamp", "future timestamp",
                                  "other id", "malformed signature", "missing header"])
def test_refused(case: str) -> None:
    headers, body, secret = signed(BODY), BODY, SECRET
    if case == "tampered body":
        body = BODY.replace(b"succeeded", b"failed")
    elif case == "wrong secret":
        secret = "whsec_" + base64.b64encode(b"x" * 32).decode()
    elif case == "old timestamp":
        headers = signed(BODY, at=time.time() - 600)
    elif case == "future timestamp":
        headers = signed(BODY, at=time.time() + 600)
    elif case == "other id":
        headers["webhook-id"] = "msg_2"
    elif case == "malformed signature":
        headers["webhook-signature"] = "garbage"
    else:
        del headers["webhook-signature"]
    with pytest.raises(WebhookVerificationError):
        verify_webhook(secret, body, headers)

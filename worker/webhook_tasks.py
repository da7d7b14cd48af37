"""`clr.deliver_webhook(delivery_id)`: one delivery attempt, recorded, and the next one scheduled.

Each attempt resolves the receiver's host once, checks every address (`jobs.webhook_addresses`),
then connects to the checked address itself (Host header and TLS SNI set to the URL's host), so a
DNS answer that changes between check and connect cannot take it inside. Redirects are not followed.
A 2xx answer delivers; anything else is retried after an exponential, jittered delay while the
attempt cap and the retry window allow. A refused address is not retried: it will not become public.

A delivery owes an attempt while it sits in the due set (`WebhookDeliveries.due`): put there when it is
announced, moved to its retry's time before the retry is sent, taken out once delivered or given up.
Each webhooks worker sweeps it every few seconds and sends again what is overdue by
`CLR_WEBHOOK_RESEND_AFTER`: a notice whose send failed (the API's broker blip, a worker that died between
recording and sending) or whose worker died mid-attempt still reaches its receiver.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import httpx
from celery import signals

from jobs.queues import DELIVER_WEBHOOK, WEBHOOKS_QUEUE
from jobs.settings import Settings, get_settings
from jobs.store import JobStore
from jobs.webhook_addresses import allowed_networks, resolve_checked
from jobs.webhooks import WebhookDeliveries, retry_delay, sign, webhook_secrets
from worker.webhook_app import app

log = logging.getLogger(__name__)

settings = get_settings()
webhook_secrets(settings.webhook_secrets)  # a malformed secret stops the worker at start-up
_deliveries: WebhookDeliveries | None = None
USER_AGENT = "clr-webhooks/1"


def deliveries() -> WebhookDeliveries:
    global _deliveries
    if _deliveries is None:
        store = JobStore.from_settings(settings)
        _deliveries = WebhookDeliveries(store.redis, settings.key_prefix, settings)
    return _deliveries


@app.task(name=DELIVER_WEBHOOK)
def deliver_webhook(delivery_id: str) -> str:
    """One attempt; on a retryable failure the task is sent again with a countdown."""
    outcome, retry_in = attempt(deliveries(), delivery_id, settings)
    deliveries().due(delivery_id, None if retry_in is None else time.time() + retry_in)
    if retry_in is not None:
        app.send_task(DELIVER_WEBHOOK, args=[delivery_id], queue=WEBHOOKS_QUEUE, countdown=retry_in)
    log.info("webhook %s: %s%s", delivery_id, outcome, f", retry in {retry_in:.1f} s" if retry_in else "")
    return outcome


def resend_overdue() -> list[str]:
    """Send again every delivery whose attempt is overdue (see the module docstring)."""
    overdue = deliveries().overdue(settings.webhook_resend_after)
    for delivery_id in overdue:
        log.warning("webhook %s: due for over %g s and not attempted; sent again", delivery_id,
                    settings.webhook_resend_after)
        app.send_task(DELIVER_WEBHOOK, args=[delivery_id], queue=WEBHOOKS_QUEUE)
    return overdue


def _sweep_forever(stop: threading.Event) -> None:
    interval = min(5.0, settings.webhook_resend_after / 2)
    while not stop.wait(interval):
        try:
            resend_overdue()
        except Exception:  # a Redis or broker blip: the next round tries again
            log.exception("webhooks sweep failed a round")


_stop_sweeping = threading.Event()


@signals.worker_ready.connect
def _start_sweeper(**_: object) -> None:
    threading.Thread(target=_sweep_forever, args=(_stop_sweeping,), name="webhooks-due-sweeper", daemon=True).start()


@signals.worker_shutdown.connect
def _stop_sweeper(**_: object) -> None:
    _stop_sweeping.set()


def attempt(store: WebhookDeliveries, delivery_id: str, settings: Settings) -> tuple[str, float | None]:
    """Try to deliver once; returns (outcome, seconds until the next attempt or None)."""
    delivery = store.get(delivery_id)
    if delivery is None:
        return "missing", None
    if delivery["state"] != "pending":
        return delivery["state"], None  # delivered (or given up) already: a duplicate message
    number = delivery["attempts"] + 1
    started = time.monotonic()
    entry: dict = {"attempt": number, "at": time.time(), "status_code": None, "latency_ms": None,
                   "error": None, "address": None}
    retryable = True
    try:
        entry["status_code"], entry["address"] = _post(delivery, settings)
    except ValueError as exc:  # an address the SSRF rules refuse
        entry["error"], retryable = str(exc), False
    except (httpx.HTTPError, OSError) as exc:
        entry["error"] = f"{type(exc).__name__}: {exc}"[:300] or type(exc).__name__
    entry["latency_ms"] = round((time.monotonic() - started) * 1000, 1)
    delivered = entry["status_code"] is not None and 200 <= entry["status_code"] < 300
    if delivered:
        store.record_attempt(delivery_id, entry, "delivered")
        return "delivered", None
    delay = retry_delay(number, settings.webhook_retry_base)
    in_window = time.time() + delay < delivery["window_start"] + settings.webhook_retry_window
    if retryable and number < settings.webhook_max_attempts and in_window:
        store.record_attempt(delivery_id, entry, "pending")
        return "retrying", delay
    store.record_attempt(delivery_id, entry, "failed")
    return "failed", None


def _post(delivery: dict, settings: Settings) -> tuple[int, str]:
    """POST the body to the checked address of the URL's host; (status code, address used)."""
    url = urlsplit(delivery["url"])
    host = url.hostname or ""
    port = url.port or (443 if url.scheme == "https" else 80)
    address = resolve_checked(host, port, allowed_networks(settings.webhook_allow_networks))
    shown = f"[{address}]" if address.version == 6 else str(address)
    target = urlunsplit((url.scheme, f"{shown}:{port}", url.path or "/", url.query, ""))
    secrets_of_key = webhook_secrets(settings.webhook_secrets).get(delivery["owner"], [])
    at = datetime.now(UTC)
    headers = {
        "Host": url.netloc,
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "webhook-id": delivery["id"],
        "webhook-timestamp": str(int(at.timestamp())),
    }
    if secrets_of_key:
        headers["webhook-signature"] = sign(secrets_of_key, delivery["id"], at, delivery["body"])
    extensions = {"sni_hostname": host} if url.scheme == "https" else {}
    with httpx.Client(timeout=settings.webhook_timeout, follow_redirects=False, trust_env=False) as client:
        response = client.post(target, content=delivery["body"].encode(), headers=headers, extensions=extensions)
    return response.status_code, str(address)

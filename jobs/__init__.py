"""The job layer the API and the workers share: settings, job records and their state machine,
leases, idempotency, events, worker liveness, uploaded-dataset records and the Celery names.

Imports neither `service` (HTTP) nor `worker` (Celery tasks), nor FastAPI, nor torch; both of those
packages import this one (tests/test_boundaries.py checks every arrow).
"""

"""`python -m worker`: one solo-pool worker on the configured queue (`CLR_QUEUE`), named uniquely."""

from __future__ import annotations

import os
import sys

from jobs.settings import get_settings
from worker.celery_app import app


def main(argv: list[str] | None = None) -> None:
    """Start a worker with the options this service needs; extra arguments are passed to Celery."""
    queue = get_settings().queue
    args = [
        "worker",
        "--queues", queue,
        "--pool", "solo",
        "--concurrency", "1",
        "--without-mingle",
        "--without-gossip",
        "--hostname", f"clr-{queue}-{os.getpid()}@%h",
        "--loglevel", os.environ.get("CLR_LOG_LEVEL", "INFO"),
        *(sys.argv[1:] if argv is None else argv),
    ]
    app.worker_main(args)


if __name__ == "__main__":
    main()

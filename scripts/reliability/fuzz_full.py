"""The full schemathesis run behind the "requests fuzzed" figure of docs/reliability.md.

    .venv/bin/python scripts/reliability/fuzz_full.py --examples 60 --seeds 2

Builds the API with API keys on (real Redis at CLR_TEST_REDIS_URL or the local one, a key prefix of
its own, removed at the end), gives the fuzzing key jobs in every final state, and sends
`examples` generated requests per operation, generation mode and seed through the ASGI app. Exits 1
if any request got a 5xx or any response broke the schema.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from fastapi.testclient import TestClient  # noqa: E402

from jobs.settings import Settings  # noqa: E402
from jobs.store import JobStore  # noqa: E402
from scripts.reliability.fuzzing import fuzz_app  # noqa: E402
from service.main import create_app  # noqa: E402
from tests.helpers import ALICE, seed_jobs  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=60, help="per operation, mode and seed")
    parser.add_argument("--seeds", type=int, default=2, help="how many fixed seeds (20261129, +1, ...)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            redis_url=os.environ.get("CLR_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
            key_prefix=f"fuzz-{secrets.token_hex(4)}", artifact_dir=Path(tmp) / "artifacts",
            data_dir=Path(tmp) / "data", download=False, api_keys="alice:alice-secret,bob:bob-secret",
            default_queue="parked", rate_limit_per_minute=1_000_000,
        )
        store = JobStore.from_settings(settings)
        try:
            app = create_app(settings)
            total, server_errors, failures = 0, 0, []
            with TestClient(app) as client:
                job_ids = seed_jobs(client, store, settings, ALICE)
                for n in range(args.seeds):
                    report = fuzz_app(app, headers=ALICE, examples=args.examples, fuzz_seed=20261129 + n,
                                      job_ids=job_ids)
                    print(f"seed {20261129 + n}: {report.summary()}")
                    for label, count in sorted(report.by_operation.items()):
                        print(f"    {count:5d}  {label}")
                    total += report.requests
                    server_errors += report.server_errors
                    failures += report.failures
        finally:
            store.delete_all()
    print(f"TOTAL requests={total} 5xx={server_errors} schema/check failures={len(failures)}")
    for line in failures:
        print("  FAIL", line)
    return 1 if server_errors or failures else 0


if __name__ == "__main__":
    sys.exit(main())

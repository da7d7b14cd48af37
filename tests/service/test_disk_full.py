"""A full disk (issue 14 item 11): an upload answers 507 with a reason, a job fails with one. The full
disk is Linux's /dev/full, which answers every write with ENOSPC."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from service.uploads import UploadRefused, write_stream

pytestmark = pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")


class FullDiskPath(type(Path())):  # type: ignore[misc]
    """A path whose file lives on a full disk."""

    def open(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        return open("/dev/full", "wb")  # noqa: SIM115


async def body() -> AsyncIterator[bytes]:
    for _ in range(4):
        yield b"\0" * 65536


def test_an_upload_onto_a_full_disk_is_507_disk_full() -> None:
    with pytest.raises(UploadRefused) as refused:
        asyncio.run(write_stream(body(), FullDiskPath("/dev/full"), 1 << 30, UploadRefused(413, "x", "x")))
    assert refused.value.status == 507 and refused.value.problem == "disk_full"


def test_a_job_failing_on_a_full_disk_says_so() -> None:
    from worker.tasks import failure_reason

    with pytest.raises(OSError) as full, open("/dev/full", "wb") as out:  # noqa: PT012
        out.write(b"checkpoint")
        out.flush()
    assert failure_reason(full.value).startswith("artifact disk full: ")
    assert "/dev" not in failure_reason(full.value)

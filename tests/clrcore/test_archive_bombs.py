"""Archive bombs, each generated here at a CI-sized scale: refused before they cost memory or CPU.

The full-size reproductions, with RSS and CPU-seconds before and after, are
scripts/reliability/archive_bombs.py. Memory is measured with tracemalloc: a header body or a zip
directory read whole shows up as a Python allocation of its size.
"""

from __future__ import annotations

import io
import tarfile
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from clrcore.archives import ArchiveError, iter_image_members
from clrcore.capped_reader import ReadStopped
from clrcore.zip_directory import read_zip_directory

MiB = 2**20


def png(shade: int = 0) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (shade, 0, 0)).save(out, "PNG")
    return out.getvalue()


def write_tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]], mode: str = "w:gz",
              **options: object) -> Path:
    with tarfile.open(path, mode, **options) as archive:  # type: ignore[call-overload]
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                archive.addfile(member, io.BytesIO(b""))
            else:
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1])
                archive.addfile(info, io.BytesIO(member[1]))
    return path


def peak_bytes(work: Callable[[], object]) -> int:
    """Peak Python heap while `work` runs (tracemalloc sees every bytes object a reader builds)."""
    tracemalloc.start()
    try:
        work()
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


def read_all(path: Path, **limits: object) -> Callable[[], list]:
    return lambda: list(iter_image_members(path, **limits))  # type: ignore[arg-type]


def refused(path: Path, match: str, **limits: object) -> int:
    """The peak heap of reading `path`, which must raise ArchiveError matching `match`."""
    def work() -> None:
        with pytest.raises(ArchiveError, match=match):
            read_all(path, **limits)()
    return peak_bytes(work)


GOOD = [("train/a/0.png", png(1)), ("train/b/0.png", png(2)), ("test/a/0.png", png(3)), ("test/b/0.png", png(4))]


# ------------------------------------------------------------------------------------------ item 1


def test_a_gnu_long_name_header_is_refused_before_its_body_is_read(tmp_path: Path) -> None:
    long_name = tarfile.TarInfo("train/a/" + "n" * (16 * MiB) + ".png")  # a 16 MiB name, ~16 KiB gzipped
    archive = write_tar(tmp_path / "longname.tar.gz", [*GOOD, long_name], format=tarfile.GNU_FORMAT)
    assert archive.stat().st_size < 100_000
    peak = refused(archive, "long-name header of 16777[0-9]+ bytes, over the 1048576-byte limit")
    assert peak < 4 * MiB, f"{peak} bytes of heap: the header body was read"


def test_a_pax_header_is_refused_before_its_body_is_read(tmp_path: Path) -> None:
    member = tarfile.TarInfo("train/a/1.png")
    member.pax_headers = {"comment": "c" * (16 * MiB)}
    archive = write_tar(tmp_path / "pax.tar.gz", [*GOOD, member], format=tarfile.PAX_FORMAT)
    peak = refused(archive, "PAX header of [0-9]+ bytes, over the")
    assert peak < 4 * MiB, f"{peak} bytes of heap: the header body was read"


def test_ordinary_long_names_and_pax_headers_still_read(tmp_path: Path) -> None:
    long = "train/a/" + "x" * 300 + ".png"
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        archive = write_tar(tmp_path / f"ok{fmt}.tar.gz", [*GOOD, (long, png(5))], format=fmt)
        assert {m[2] for m in iter_image_members(archive)} >= {"x" * 300 + ".png"}


# ------------------------------------------------------------------------------------------ item 2


def test_a_skipped_hidden_member_still_counts_against_the_ratio(tmp_path: Path) -> None:
    """16 MiB of zeros as train/.skipme: ~16 KiB gzipped; skipped by the layout, decompressed anyway."""
    archive = write_tar(tmp_path / "skipme.tar.gz", [*GOOD, ("train/.skipme", bytes(16 * MiB))])
    refused(archive, "more than 200 times its compressed size")


def test_skipped_members_count_against_the_byte_cap(tmp_path: Path) -> None:
    """Uncompressed (ratio 1): a wrong-depth member of 3 MiB passes a 2 MiB cap only if it is not counted."""
    archive = write_tar(tmp_path / "depth.tar", [*GOOD, ("a/b/c/d/e", bytes(3 * MiB))], mode="w")
    refused(archive, "more than 2097152 bytes once decompressed", max_total_bytes=2 * MiB)


@pytest.mark.parametrize("mode", ["w:gz", "w:bz2", "w:xz", "w"])
def test_every_compression_reads_through_the_capped_reader(tmp_path: Path, mode: str) -> None:
    archive = write_tar(tmp_path / f"good.{mode[2:] or 'plain'}", GOOD, mode=mode)
    assert len(list(iter_image_members(archive))) == 4
    refused(archive, "once decompressed", max_total_bytes=1024)


# ------------------------------------------------------------------------------------------ item 3


def write_zip(path: Path, entries: int) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, data in GOOD:
            archive.writestr(name, data)
        for i in range(entries):
            archive.writestr(f"junk/{i:06d}", b"")
    return path


def test_a_zip_with_too_many_entries_is_refused_before_its_directory_is_read(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "many.zip", 20_000)  # a ~1 MiB central directory
    peak = refused(archive, "more than 100 members", max_members=100)
    assert peak < 512 * 1024, f"{peak} bytes of heap: the central directory was parsed"


def test_a_zip_directory_bigger_than_its_entries_need_is_refused(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "names.zip", 0)
    with zipfile.ZipFile(archive, "a") as z:
        z.writestr("n" * 60_000, b"")  # one entry, a 60 KB name: a directory far over 5 x 1 KiB
    refused(archive, "zip directory of [0-9]+ bytes, over the 5120-byte limit", max_members=5)


def test_zip64_end_records_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 3)  # makes the writer emit zip64 end records
    archive = write_zip(tmp_path / "z64.zip", 10)
    monkeypatch.undo()
    assert read_zip_directory(archive).entries == 14
    refused(archive, "more than 5 members \\(14 in", max_members=5)
    assert len(list(iter_image_members(archive))) == 4


def test_a_zip_member_over_the_ratio_is_refused_before_it_is_inflated(tmp_path: Path) -> None:
    archive = tmp_path / "member.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in GOOD:
            z.writestr(name, data)
        z.writestr("train/a/zeros.png", bytes(32 * MiB))
    peak = refused(archive, "zeros.png.*over the 200:1 limit")
    assert peak < 4 * MiB


# ------------------------------------------------------------------------------------------ item 4


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_a_stop_request_ends_the_reading(tmp_path: Path, kind: str) -> None:
    archive = tmp_path / f"good.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(archive, "w") as z:
            for name, data in GOOD:
                z.writestr(name, data)
    else:
        write_tar(archive, GOOD)
    wanted = True
    members = iter_image_members(archive, stop=lambda: not wanted)
    next(members)
    wanted = False  # the client hung up after the first member
    with pytest.raises(ReadStopped):
        next(members)

"""A zip's entry count and central-directory size, read from its end records alone.

`zipfile.ZipFile` reads and parses the whole central directory on open (about 5.5 bytes of heap per
directory byte) before anyone can count its entries. The end-of-central-directory record (and, for
zip64, its zip64 record) states both numbers in a few dozen bytes at the end of the file, so an
archive with too many entries or too big a directory is refused before the directory is read.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

_EOCD = struct.Struct("<4s4H2LH")  # signature, disk, cd disk, entries here, entries, cd size, cd offset, comment
_EOCD_SIG = b"PK\x05\x06"
_ZIP64_LOCATOR = struct.Struct("<4sLQL")  # signature, disk, zip64 record offset, disks
_ZIP64_LOCATOR_SIG = b"PK\x06\x07"
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")  # ..., entries here, entries, cd size, cd offset
_ZIP64_EOCD_SIG = b"PK\x06\x06"
_MAX_COMMENT = 0xFFFF


class ZipDirectoryError(ValueError):
    """No readable end-of-central-directory record."""


@dataclass(frozen=True)
class ZipDirectory:
    entries: int
    size: int  # bytes of the central directory


def read_zip_directory(path: Path) -> ZipDirectory:
    """Entries and directory size as the end records state them (zip64 values where they apply)."""
    with Path(path).open("rb") as handle:
        handle.seek(0, 2)
        file_size = handle.tell()
        tail_start = max(0, file_size - _EOCD.size - _MAX_COMMENT)
        handle.seek(tail_start)
        tail = handle.read()
        at = tail.rfind(_EOCD_SIG)
        if at < 0 or len(tail) - at < _EOCD.size:
            raise ZipDirectoryError("no end-of-central-directory record")
        _, _, _, _, entries, size, _, _ = _EOCD.unpack_from(tail, at)
        if entries != 0xFFFF and size != 0xFFFFFFFF:
            return ZipDirectory(entries, size)
        locator_at = tail_start + at - _ZIP64_LOCATOR.size
        if locator_at < 0:
            raise ZipDirectoryError("zip64 values without a zip64 locator")
        handle.seek(locator_at)
        signature, _, record_at, _ = _ZIP64_LOCATOR.unpack(handle.read(_ZIP64_LOCATOR.size))
        if signature != _ZIP64_LOCATOR_SIG or record_at > file_size - _ZIP64_EOCD.size:
            raise ZipDirectoryError("zip64 values without a readable zip64 locator")
        handle.seek(record_at)
        fields = _ZIP64_EOCD.unpack(handle.read(_ZIP64_EOCD.size))
        if fields[0] != _ZIP64_EOCD_SIG:
            raise ZipDirectoryError("no zip64 end-of-central-directory record where the locator points")
        return ZipDirectory(entries=fields[7], size=fields[8])

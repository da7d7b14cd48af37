"""Safe reading of image trees laid out `split/class/image`, from a directory or an archive.

Datasets arrive as user files (a path under the data directory, or an upload), so every member is
checked before a byte of it is used: no absolute paths, no `..`, no links, no device files, and limits
on member count and sizes. Archives are read member by member and never extracted to disk. The
service's upload validation reuses these functions; they need only the standard library.
"""

from __future__ import annotations

import bz2
import gzip
import logging
import lzma
import os
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from clrcore.capped_reader import CappedReader, Readable, ReadCapExceeded, ReadStopped, over_ratio
from clrcore.zip_directory import ZipDirectoryError, read_zip_directory

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "test", "val")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
ZIP_SUFFIXES = (".zip",)

MAX_MEMBERS = 2_000_000
MAX_MEMBER_BYTES = 64 * 2**20
MAX_TOTAL_BYTES = 8 * 2**30
MAX_HEADER_BYTES = 2**20  # a GNU long name or a PAX header; real ones are a few hundred bytes
MAX_RATIO = 200.0  # decompressed / compressed bytes, for a whole tar stream and for each zip member
ZIP_DIRECTORY_BYTES_PER_ENTRY = 1024  # fixed part (46) + name + extra + comment, generously
# tarfile's extended headers: their whole body is read into memory before any member is seen.
_EXTENDED_HEADERS = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                     tarfile.SOLARIS_XHDTYPE)

ImageMember = tuple[str, str, str, bytes]  # (split, class, file name, raw bytes)


class ArchiveError(ValueError):
    """An unsafe, unreadable or oversized member; the message names it."""


def archive_kind(path: Path) -> str:
    """'dir', 'zip' or 'tar' for `path`, by suffix first and by content when the suffix says nothing."""
    if path.is_dir():
        return "dir"
    name = path.name.lower()
    if name.endswith(ZIP_SUFFIXES):
        return "zip"
    if name.endswith(TAR_SUFFIXES):
        return "tar"
    if zipfile.is_zipfile(path):
        return "zip"
    if tarfile.is_tarfile(path):
        return "tar"
    raise ArchiveError(f"{path.name}: not a directory or a .tar, .tar.gz/.tgz or .zip archive")


def member_parts(name: str) -> tuple[str, ...]:
    """Split a member name into safe path parts, or raise if it could point outside the tree."""
    normalised = name.replace("\\", "/")
    if normalised.startswith("/") or (len(normalised) > 1 and normalised[1] == ":"):
        raise ArchiveError(f"member {name!r}: absolute path")
    parts = tuple(p for p in PurePosixPath(normalised).parts if p not in ("", "."))
    if ".." in parts:
        raise ArchiveError(f"member {name!r}: '..' in path")
    return parts


def layout_of(parts: tuple[str, ...]) -> tuple[str, str, str] | None:
    """(split, class, file) for a member laid out split/class/file, optionally under one wrapper folder.

    Hidden files and macOS resource forks are not data; anything else at another depth is ignored.
    """
    if not parts or any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return None
    if len(parts) == 4 and parts[1].lower() in SPLIT_NAMES:
        parts = parts[1:]
    if len(parts) != 3:
        return None
    return parts[0].lower(), parts[1], parts[2]


class _Budget:
    """Counts members and bytes against the limits, so a bomb fails early with a clear message."""

    def __init__(self, max_members: int, max_member_bytes: int, max_total_bytes: int, *,
                 max_header_bytes: int = MAX_HEADER_BYTES, max_ratio: float = MAX_RATIO,
                 stop: Callable[[], bool] | None = None) -> None:
        self.max_members, self.max_member_bytes, self.max_total_bytes = (
            max_members, max_member_bytes, max_total_bytes,
        )
        self.max_header_bytes, self.max_ratio, self.stop = max_header_bytes, max_ratio, stop
        self.members = 0
        self.total = 0

    def count_member(self) -> None:
        if self.stop is not None and self.stop():  # between members too: one read may hold many
            raise ReadStopped("reading stopped")
        self.members += 1
        if self.members > self.max_members:
            raise ArchiveError(f"more than {self.max_members} members")

    def check_size(self, name: str, size: int) -> None:
        if size > self.max_member_bytes:
            raise ArchiveError(f"member {name!r}: {size} bytes, over the {self.max_member_bytes}-byte limit")
        if self.total + size > self.max_total_bytes:
            raise ArchiveError(f"more than {self.max_total_bytes} bytes in all")

    def add(self, name: str, size: int) -> None:
        self.check_size(name, size)
        self.total += size


# ------------------------------------------------------------------------------------------ tar


def _guarded_tarinfo(max_header_bytes: int) -> type[tarfile.TarInfo]:
    """A TarInfo that refuses an oversized long-name or PAX header from its 512-byte header block,
    before tarfile reads the header's body into memory (it would read all of it, whatever its size).

    Hooks `TarInfo._proc_member`, the one place tarfile dispatches on a header's type (the same in
    CPython 3.8 to 3.13); everything else is tarfile's own parsing.
    """

    class GuardedTarInfo(tarfile.TarInfo):
        def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
            if self.type in _EXTENDED_HEADERS and self.size > max_header_bytes:
                kind = "long-name" if self.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK) else "PAX"
                raise ArchiveError(f"a {kind} header of {self.size} bytes, over the {max_header_bytes}-byte "
                                   "limit for a header")
            return super()._proc_member(tarfile_)  # type: ignore[misc]

    return GuardedTarInfo


# Magic bytes -> decompressor; `_decompressed` closes what these open.
_DECOMPRESSORS: tuple[tuple[bytes, Callable[[BinaryIO], Readable]], ...] = (
    (b"\x1f\x8b", lambda raw: gzip.GzipFile(fileobj=raw, mode="rb")),
    (b"BZh", lambda raw: bz2.BZ2File(raw, mode="rb")),
    (b"\xfd7zXZ\x00", lambda raw: lzma.LZMAFile(raw, mode="rb")),  # noqa: SIM115
)


@contextmanager
def _decompressed(path: Path, budget: _Budget) -> Iterator[CappedReader]:
    """The tar stream inside `path` (gzip, bzip2, xz or none, told by magic bytes), through a
    `CappedReader`: every decompressed byte is counted, skipped members and headers included."""
    with path.open("rb") as raw:
        head = raw.read(6)
        raw.seek(0)
        opener = next((open_ for magic, open_ in _DECOMPRESSORS if head.startswith(magic)), None)
        inner = opener(raw) if opener is not None else raw
        try:
            yield CappedReader(inner, what=path.name, max_bytes=budget.max_total_bytes,
                               max_ratio=budget.max_ratio, source_bytes=raw.tell, stop=budget.stop)
        finally:
            inner.close()


def _iter_tar(path: Path, budget: _Budget) -> Iterator[ImageMember]:
    # Stream mode ("r|") reads the archive once, front to back, without seeking or extracting.
    with _decompressed(path, budget) as stream, tarfile.open(
        fileobj=stream, mode="r|", tarinfo=_guarded_tarinfo(budget.max_header_bytes)
    ) as tar:
        for member in tar:
            budget.count_member()
            parts = member_parts(member.name)
            if member.isdir():
                continue
            if member.issym() or member.islnk():
                raise ArchiveError(f"member {member.name!r}: links are not allowed")
            if not member.isreg() or member.issparse():
                raise ArchiveError(f"member {member.name!r}: not a regular file (device, fifo or sparse)")
            where = layout_of(parts)
            if where is None:
                log.debug("skipping %s: not split/class/image", member.name)
                continue
            budget.add(member.name, member.size)
            handle = tar.extractfile(member)
            if handle is None:
                raise ArchiveError(f"member {member.name!r}: unreadable")
            yield (*where, handle.read())


# ------------------------------------------------------------------------------------------ zip


def _check_zip_directory(path: Path, budget: _Budget) -> None:
    """Refuse by the end records' entry count and directory size, before zipfile reads the directory."""
    try:
        directory = read_zip_directory(path)
    except ZipDirectoryError as err:
        raise ArchiveError(f"{path.name}: unreadable zip archive ({err})") from None
    if directory.entries > budget.max_members:
        raise ArchiveError(f"more than {budget.max_members} members ({directory.entries} in the zip's directory)")
    most = max(budget.max_members, 1) * ZIP_DIRECTORY_BYTES_PER_ENTRY
    if directory.size > most or directory.size > path.stat().st_size:
        raise ArchiveError(f"a zip directory of {directory.size} bytes, over the {most}-byte limit for "
                           f"{budget.max_members} members")


def _read_zip_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, budget: _Budget) -> bytes:
    """The member's bytes, counted through a `CappedReader` against its compressed size (the declared
    sizes may lie: never more than the member limit is read)."""
    if over_ratio(info.file_size, info.compress_size, budget.max_ratio):
        raise ArchiveError(f"member {info.filename!r}: declares {info.file_size} bytes from "
                           f"{info.compress_size} compressed, over the {budget.max_ratio:g}:1 limit")
    with archive.open(info) as handle:
        capped = CappedReader(handle, what=f"member {info.filename!r}", max_bytes=budget.max_member_bytes,
                              max_ratio=budget.max_ratio, source_bytes=lambda: info.compress_size,
                              stop=budget.stop)
        return capped.read()


def _iter_zip(path: Path, budget: _Budget) -> Iterator[ImageMember]:
    _check_zip_directory(path, budget)
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            budget.count_member()
            parts = member_parts(info.filename)
            # Unix file type bits, where the zip tool recorded them (0 means "plain file" elsewhere).
            kind = stat.S_IFMT(info.external_attr >> 16)
            if kind == stat.S_IFLNK:
                raise ArchiveError(f"member {info.filename!r}: links are not allowed")
            if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise ArchiveError(f"member {info.filename!r}: not a regular file")
            if info.is_dir():
                continue
            where = layout_of(parts)
            if where is None:
                log.debug("skipping %s: not split/class/image", info.filename)
                continue
            budget.check_size(info.filename, info.file_size)
            data = _read_zip_member(archive, info, budget)
            budget.add(info.filename, len(data))
            yield (*where, data)


# ------------------------------------------------------------------------------------------ folder


def _iter_dir(root: Path, budget: _Budget) -> Iterator[ImageMember]:
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        here = Path(dirpath)
        for name in [*dirnames, *sorted(filenames)]:
            entry = here / name
            relative = entry.relative_to(root).as_posix()
            budget.count_member()
            info = entry.lstat()
            if stat.S_ISLNK(info.st_mode):
                raise ArchiveError(f"member {relative!r}: links are not allowed")
            if stat.S_ISDIR(info.st_mode):
                continue
            if not stat.S_ISREG(info.st_mode):
                raise ArchiveError(f"member {relative!r}: not a regular file")
            where = layout_of(member_parts(relative))
            if where is None:
                continue
            budget.add(relative, info.st_size)
            yield (*where, entry.read_bytes())


def iter_image_members(
    path: Path | str,
    *,
    max_members: int = MAX_MEMBERS,
    max_member_bytes: int = MAX_MEMBER_BYTES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
    max_header_bytes: int = MAX_HEADER_BYTES,
    max_ratio: float = MAX_RATIO,
    stop: Callable[[], bool] | None = None,
) -> Iterator[ImageMember]:
    """Yield (split, class, name, bytes) for every file laid out split/class/file in a tree or archive.

    Split names are lower-cased; class and file names are kept. Unsafe entries raise `ArchiveError`
    naming the member; files at other depths, hidden files and `__MACOSX` are skipped. Bytes are
    not decoded here: whether they are images is the caller's question. Every decompressed byte
    counts against `max_total_bytes` and `max_ratio` (decompressed / compressed), skipped members
    and headers included; `stop` is asked before every read and raises `ReadStopped` when true.
    """
    path = Path(path)
    if not path.exists():
        raise ArchiveError(f"{path}: no such file or directory")
    budget = _Budget(max_members, max_member_bytes, max_total_bytes, max_header_bytes=max_header_bytes,
                     max_ratio=max_ratio, stop=stop)
    kind = archive_kind(path)
    readers = {"dir": _iter_dir, "zip": _iter_zip, "tar": _iter_tar}
    try:
        yield from readers[kind](path, budget)
    except ReadCapExceeded as err:
        raise ArchiveError(str(err)) from None
    # zipfile and zlib also raise NotImplementedError (unknown compression), RuntimeError (encrypted
    # member) and zlib.error on corrupt data: all mean the same thing to a caller.
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, OSError,
            NotImplementedError, RuntimeError) as err:
        raise ArchiveError(f"{path.name}: unreadable {kind} archive ({type(err).__name__}: {err})") from err

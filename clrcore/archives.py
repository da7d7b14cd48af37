"""Safe reading of image trees laid out `split/class/image`, from a directory or an archive.

Datasets arrive as user files (a path under the data directory, or an upload), so every member is
checked before a byte of it is used: no absolute paths, no `..`, no links, no device files, and limits
on member count and sizes. Archives are read member by member and never extracted to disk. The
service's upload validation reuses these functions; they need only the standard library.
"""

from __future__ import annotations

import logging
import os
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "test", "val")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
ZIP_SUFFIXES = (".zip",)

MAX_MEMBERS = 2_000_000
MAX_MEMBER_BYTES = 64 * 2**20
MAX_TOTAL_BYTES = 8 * 2**30

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

    def __init__(self, max_members: int, max_member_bytes: int, max_total_bytes: int) -> None:
        self.max_members, self.max_member_bytes, self.max_total_bytes = (
            max_members, max_member_bytes, max_total_bytes,
        )
        self.members = 0
        self.total = 0

    def count_member(self) -> None:
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


def _iter_tar(path: Path, budget: _Budget) -> Iterator[ImageMember]:
    # Stream mode ("r|*") reads the archive once, front to back, without seeking or extracting.
    with tarfile.open(path, mode="r|*") as tar:
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


def _iter_zip(path: Path, budget: _Budget) -> Iterator[ImageMember]:
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
            with archive.open(info) as handle:
                # The declared size may lie; never read more than the limit allows.
                data = handle.read(budget.max_member_bytes + 1)
            budget.add(info.filename, len(data))
            yield (*where, data)


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
) -> Iterator[ImageMember]:
    """Yield (split, class, name, bytes) for every file laid out split/class/file in a tree or archive.

    Split names are lower-cased; class and file names are kept. Unsafe entries raise `ArchiveError`
    naming the member; files at other depths, hidden files and `__MACOSX` are skipped. Bytes are
    not decoded here: whether they are images is the caller's question.
    """
    path = Path(path)
    if not path.exists():
        raise ArchiveError(f"{path}: no such file or directory")
    budget = _Budget(max_members, max_member_bytes, max_total_bytes)
    kind = archive_kind(path)
    readers = {"dir": _iter_dir, "zip": _iter_zip, "tar": _iter_tar}
    try:
        yield from readers[kind](path, budget)
    # zipfile and zlib also raise NotImplementedError (unknown compression), RuntimeError (encrypted
    # member) and zlib.error on corrupt data: all mean the same thing to a caller.
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError,
            RuntimeError) as err:
        raise ArchiveError(f"{path.name}: unreadable {kind} archive ({type(err).__name__}: {err})") from err

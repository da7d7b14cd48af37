"""Issue 14's archive and pixel bombs at full size, fed to the API's upload validation, before and after.

Each bomb is generated once into a temp folder; then each source tree (the working tree, and with
`--before REV` that revision exported by `git archive`) validates it in a fresh subprocess, which
reports the growth of its peak RSS over its baseline after imports, its CPU-seconds, its wall time
and how the validation ended. Run it niced: it spends a minute or two of CPU on the "before" side.

    nice -n 10 .venv/bin/python scripts/reliability/archive_bombs.py --before dae141a
"""

from __future__ import annotations

import argparse
import io
import json
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
MiB = 2**20

# The child: validate one archive the way POST /v1/datasets does, and measure it.
CHILD = r"""
import json, re, resource, sys, time
from service.uploads import inspect_archive
def usage():
    # VmHWM: peak RSS since the reset below (imports can peak higher than the work that follows)
    peak = int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1)) * 1024
    r = resource.getrusage(resource.RUSAGE_SELF)
    return peak, r.ru_utime + r.ru_stime
with open("/proc/self/clear_refs", "w") as reset:
    reset.write("5")
rss0, cpu0 = usage()
wall0 = time.monotonic()
try:
    summary = inspect_archive(__import__("pathlib").Path(sys.argv[1]), max_files=200_000)
    outcome = f"accepted: {sum(sum(c.values()) for c in summary.counts.values())} images"
except Exception as err:
    outcome = f"{type(err).__name__}: {getattr(err, 'problem', '')} {str(err)[:90]}"
rss1, cpu1 = usage()
print(json.dumps({"rss_growth_mib": round((rss1 - rss0) / 2**20, 1), "cpu_s": round(cpu1 - cpu0, 2),
                  "wall_s": round(time.monotonic() - wall0, 2), "outcome": outcome}))
"""


def png(size: int, shade: int = 0) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), (shade, shade, shade)).save(out, "PNG")
    return out.getvalue()


def good_members() -> dict[str, bytes]:
    return {f"{split}/{cls}/0.png": png(8, 40 * k) for split in ("train", "test") for k, cls in enumerate("ab")}


def long_name_tar(path: Path, name_bytes: int) -> Path:
    """Item 1: a GNU long-name header declaring a `name_bytes`-long name (the issue's: 256 MiB)."""
    with tarfile.open(path, "w:gz", format=tarfile.GNU_FORMAT, compresslevel=9) as tar:
        tar.addfile(tarfile.TarInfo("train/a/" + "n" * name_bytes))
    return path


def skipped_member_tar(path: Path, zero_bytes: int) -> Path:
    """Item 2: a hidden member of zeros (the issue's: 200 MiB as train/.skipme)."""
    with tarfile.open(path, "w:gz", compresslevel=9) as tar:
        for name, data in good_members().items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("train/.skipme")
        info.size = zero_bytes
        tar.addfile(info, io.BytesIO(bytes(zero_bytes)))
    return path


def many_entry_zip(path: Path, entries: int) -> Path:
    """Item 3: `entries` empty stored members, written raw (zipfile would take minutes)."""
    crc = zlib.crc32(b"")
    directory = bytearray()
    with path.open("wb") as out:
        for i in range(entries):
            name = f"junk/{i:09d}".encode()
            offset = out.tell()
            out.write(struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, crc, 0, 0, len(name), 0) + name)
            directory += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, crc, 0, 0, len(name),
                                     0, 0, 0, 0, 0, offset) + name
        start = out.tell()
        out.write(directory)
        record_at = out.tell()  # zip64 end records: more than 65,535 entries need them
        out.write(struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, entries, entries, len(directory),
                              start))
        out.write(struct.pack("<4sLQL", b"PK\x06\x07", 0, record_at, 1))
        out.write(struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0))
    return path


def pixel_bomb_zip(path: Path, images: int) -> Path:
    """Item 5: black 4096x4096 PNGs (48,917 bytes each, 1029:1); 682 of them pass a 32 GiB limit."""
    black = png(4096)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for i in range(images):
            split, cls = ("test", "ab"[i % 2]) if i < 2 else ("train", "ab"[i % 2])
            archive.writestr(f"{split}/{cls}/{i}.png", black)
    return path


def measure(source: Path, archive: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, str(archive)], cwd=source, capture_output=True, text=True,
                          env={"PYTHONPATH": str(source), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
                          check=False)
    if done.returncode != 0:
        return {"outcome": f"child exited {done.returncode}: {done.stderr.strip()[-200:]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def export(rev: str, into: Path) -> Path:
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", help="a git revision to compare against (exported with git archive)")
    parser.add_argument("--long-name-mib", type=int, default=256)
    parser.add_argument("--skipped-mib", type=int, default=200)
    parser.add_argument("--zip-entries", type=int, default=1_000_000)
    parser.add_argument("--pixel-images", type=int, default=682)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        work = Path(temp)
        bombs = {
            "1 tar long-name header": long_name_tar(work / "longname.tar.gz", args.long_name_mib * MiB),
            "2 skipped tar member": skipped_member_tar(work / "skipme.tar.gz", args.skipped_mib * MiB),
            "3 zip central directory": many_entry_zip(work / "many.zip", args.zip_entries),
            "5 pixel bomb": pixel_bomb_zip(work / "pixels.zip", args.pixel_images),
        }
        sources = {"after": ROOT}
        if args.before:
            sources = {"before": export(args.before, work / "before"), **sources}
        for label, archive in bombs.items():
            for side, source in sources.items():
                row = {"bomb": label, "archive_bytes": archive.stat().st_size, "code": side,
                       **measure(source, archive)}
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()

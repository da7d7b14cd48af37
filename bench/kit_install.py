"""Install the device kit (bench/device_kit.sh) into a folder on the GPU machine, with the standard
library only: that machine's python3 is the image's, and nothing there can be fetched.

    python3 bench/kit_install.py KIT TARGET [--no-pip]

- KIT/*.whl: the service's packages, always installed (the image has none of them).
- KIT/if-missing/*.whl: packages the image usually has (httpx, h11, certifi, pyyaml, tqdm, ...),
  installed only where importing them fails, so the image's own copies (which its torch tools were
  built against) are never shadowed.
- KIT/cpXY/*.whl: the compiled pydantic-core for Pythons other than 3.12; the one that matches.

With pip, `pip install --no-deps --target`; without it (some images ship no pip module), each wheel
is unpacked as a zip, which is all a pure or binary wheel needs to be importable from TARGET.
Prints one JSON line: what was installed, what was already importable, and how.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import zipfile
from pathlib import Path

HOME_TAG = "cp312"  # the Python the kit's compiled wheels in KIT/ are built for


def top_level_names(wheel: Path) -> list[str]:
    """The importable top-level names a wheel provides (packages and modules), read from its files."""
    names = set()
    with zipfile.ZipFile(wheel) as archive:
        for entry in archive.namelist():
            first = entry.split("/", 1)[0]
            if first.endswith((".dist-info", ".data")):
                continue
            names.add(first[:-3] if "/" not in entry and first.endswith(".py") else first.split(".", 1)[0])
    return sorted(name for name in names if name.isidentifier())


def importable(wheel: Path) -> bool:
    """Whether every top-level name of `wheel` can already be imported here."""
    names = top_level_names(wheel)
    return bool(names) and all(importlib.util.find_spec(name) is not None for name in names)


def wheels_to_install(kit: Path, tag: str) -> tuple[list[Path], list[Path]]:
    """(wheels to install, wheels skipped because the image already has them)."""
    wanted = [w for w in sorted(kit.glob("*.whl")) if tag == HOME_TAG or "pydantic_core-" not in w.name]
    if tag != HOME_TAG:
        wanted += sorted((kit / tag).glob("*.whl"))
    present = []
    for wheel in sorted((kit / "if-missing").glob("*.whl")):
        (present if importable(wheel) else wanted).append(wheel)
    return wanted, present


def unpack(wheels: list[Path], target: Path) -> None:
    """Install without pip: a wheel's files are laid out as they are imported (its .data scripts aside)."""
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            for entry in archive.namelist():
                parts = entry.split("/")
                if parts[0].endswith(".data"):  # purelib/platlib go to the top, scripts and headers nowhere
                    if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                        continue
                    destination = target.joinpath(*parts[2:])
                else:
                    destination = target / entry
                if entry.endswith("/"):
                    continue
                destination.parent.mkdir(parents=True, exist_ok=True)
                destination.write_bytes(archive.read(entry))


def install(wheels: list[Path], target: Path, use_pip: bool) -> str:
    target.mkdir(parents=True, exist_ok=True)
    if not wheels:
        return "nothing to install"
    if use_pip and importlib.util.find_spec("pip") is not None:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--upgrade", "--target", str(target), *map(str, wheels)], check=True)
        return "pip"
    unpack(wheels, target)
    return "zipfile"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kit", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--no-pip", action="store_true", help="unpack the wheels even where pip is there")
    args = parser.parse_args(argv)
    tag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    wanted, present = wheels_to_install(args.kit, tag)
    how = install(wanted, args.target, use_pip=not args.no_pip)
    print(json.dumps({"what": "kit", "python": sys.version.split()[0], "how": how,
                      "installed": [w.name for w in wanted], "already_there": [w.name for w in present]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""bench/kit_install.py, the GPU machine's installer: the service's wheels always, the image's usual
packages only where their import fails, with pip or (where the image has none) by unpacking."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def make_wheel(folder: Path, name: str, files: dict[str, str], version: str = "1.0") -> Path:
    """A minimal valid pure-Python wheel holding `files` (path -> text)."""
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    entries = {**files, f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
               f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    entries[f"{info}/RECORD"] = "".join(f"{path},,\n" for path in entries) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in entries.items():
            archive.writestr(path, text)
    return wheel


@pytest.fixture
def kit(tmp_path: Path) -> Path:
    kit = tmp_path / "kit"
    make_wheel(kit, "clrprobe_service", {"clrprobe_service/__init__.py": "VALUE = 'service'\n"})
    # the image already has yaml (this .venv does): its wheel must not be installed over it
    make_wheel(kit / "if-missing", "PyYAML", {"yaml/__init__.py": "raise ImportError('shadowed')\n"})
    make_wheel(kit / "if-missing", "clrprobe_absent", {
        "clrprobe_absent.py": "VALUE = 'absent'\n",
        "clrprobe_absent-1.0.data/purelib/clrprobe_extra.py": "VALUE = 'extra'\n",
        "clrprobe_absent-1.0.data/scripts/tool": "#!/bin/sh\n"})
    return kit


@pytest.mark.parametrize("pip", [False, True], ids=["unpacked without pip", "pip"])
def test_installs_what_is_missing_and_leaves_what_the_image_has(kit: Path, tmp_path: Path, pip: bool) -> None:
    target = tmp_path / "site"
    done = subprocess.run([sys.executable, "bench/kit_install.py", str(kit), str(target),
                           *([] if pip else ["--no-pip"])], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    line = json.loads(done.stdout.strip().splitlines()[-1])
    assert line["how"] == ("pip" if pip else "zipfile")
    assert sorted(line["installed"]) == ["clrprobe_absent-1.0-py3-none-any.whl",
                                         "clrprobe_service-1.0-py3-none-any.whl"]
    assert line["already_there"] == ["PyYAML-1.0-py3-none-any.whl"]
    assert not (target / "yaml").exists()

    probe = "import clrprobe_service, clrprobe_absent, clrprobe_extra, yaml; " \
            "print(clrprobe_service.VALUE, clrprobe_absent.VALUE, clrprobe_extra.VALUE)"
    imported = subprocess.run([sys.executable, "-c", probe], env={**os.environ, "PYTHONPATH": str(target)},
                              capture_output=True, text=True, timeout=60)
    assert imported.stdout.split() == ["service", "absent", "extra"], imported.stderr[-2000:]

"""The API process never loads torch: it needs only the torch-free specs, catalog and a by-name client."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_api_import_does_not_load_torch() -> None:
    code = (
        "import sys; import service.main; "
        "app = service.main.create_app(); app.openapi(); "
        "heavy = [m for m in ('torch', 'torchvision', 'matplotlib', 'sklearn', 'clrcore.runs', 'worker.tasks') "
        "if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            timeout=60, env={"PATH": "/usr/bin:/bin", "CLR_OPEN_MODE": "true"})
    assert result.returncode == 0, result.stdout + result.stderr

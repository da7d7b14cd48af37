"""The arrows between the three rooms: clrcore never loads the web or queue stack, and the
torch-free parts of clrcore (what the API imports) never load torch."""

import subprocess
import sys

import pytest


def _modules_after(imports: str) -> set[str]:
    code = f"import sys, {imports}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return {name.split(".")[0] for name in out.stdout.split()}


def test_clrcore_imports_no_web_or_queue_stack() -> None:
    loaded = _modules_after("clrcore.runs, clrcore.cli, clrcore.trainer, clrcore.lr_range, clrcore.datasets")
    assert "torch" in loaded  # the probe really imported the training stack
    assert not loaded & {"fastapi", "starlette", "celery", "kombu", "redis", "uvicorn"}


@pytest.mark.parametrize("module", ["clrcore.specs", "clrcore.catalog", "clrcore.presets", "clrcore.cli",
                                    "clrcore.hooks", "clrcore.datasets", "clrcore.image_tree"])
def test_spec_modules_do_not_import_torch(module: str) -> None:
    assert "torch" not in _modules_after(module)

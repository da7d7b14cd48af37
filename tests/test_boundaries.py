"""Every arrow of the house, checked: service/ (HTTP) and worker/ (Celery) import jobs/ and clrcore/;
jobs/ imports neither of them (nor FastAPI, nor torch); clrcore/ imports none of the three; no route
imports another route; the API process never loads torch.

The arrows are read from the source (every import statement, function-level ones included), and the
ones about heavy libraries are also checked by importing in a fresh interpreter.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("clrcore", "jobs", "service", "worker")


def _imports(path: Path) -> set[str]:
    """Top-level names of every module `path` imports (relative imports resolved to their package)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                names.add(".".join(path.relative_to(ROOT).parts[: -node.level]))
            elif node.module:
                names.add(node.module)
    return names


def _imported_by(package: str) -> dict[str, set[str]]:
    return {str(path.relative_to(ROOT)): _imports(path) for path in sorted((ROOT / package).rglob("*.py"))}


def _offenders(package: str, forbidden: set[str]) -> list[str]:
    return [f"{file} imports {name}" for file, names in _imported_by(package).items() for name in sorted(names)
            if name.split(".")[0] in forbidden]


@pytest.mark.parametrize(("package", "forbidden"), [
    ("jobs", {"service", "worker", "fastapi", "starlette", "torch", "torchvision"}),
    ("worker", {"service", "fastapi", "starlette"}),
    ("service", {"worker"}),
    ("clrcore", {"jobs", "service", "worker"}),
])
def test_package_imports_only_along_the_arrows(package: str, forbidden: set[str]) -> None:
    assert _imported_by(package)  # the scan found the package's files
    assert _offenders(package, forbidden) == []


def test_no_route_imports_another_route() -> None:
    routes = _imported_by("service/routes")
    assert len(routes) >= 5
    offenders = [f"{file} imports {name}" for file, names in routes.items() for name in sorted(names)
                 if name.startswith("service.routes.") or name == "service.routes"]
    assert offenders == []


def _modules_after(imports: str, **env: str) -> set[str]:
    code = f"import sys, {imports}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT,
                         env={"PATH": "/usr/bin:/bin", **env} if env else None, timeout=120)
    return set(out.stdout.split())


def _top(modules: set[str]) -> set[str]:
    return {name.split(".")[0] for name in modules}


def test_clrcore_imports_no_web_or_queue_stack() -> None:
    loaded = _top(_modules_after("clrcore.runs, clrcore.cli, clrcore.trainer, clrcore.lr_range, "
                                 "clrcore.datasets"))
    assert "torch" in loaded  # the probe really imported the training stack
    assert not loaded & {"fastapi", "starlette", "celery", "kombu", "redis", "uvicorn", "jobs", "service", "worker"}


@pytest.mark.parametrize("module", ["clrcore.specs", "clrcore.catalog", "clrcore.presets", "clrcore.cli",
                                    "clrcore.hooks", "clrcore.datasets", "clrcore.image_tree"])
def test_spec_modules_do_not_import_torch(module: str) -> None:
    assert "torch" not in _top(_modules_after(module))


def test_jobs_loads_neither_http_nor_torch() -> None:
    modules = sorted(f"jobs.{path.stem}" for path in (ROOT / "jobs").glob("*.py") if path.stem != "__init__")
    loaded = _top(_modules_after(", ".join(modules)))
    assert "jobs" in loaded and "redis" in loaded  # the probe really imported the job layer
    assert not loaded & {"fastapi", "starlette", "torch", "torchvision", "service", "worker"}


def test_api_process_never_loads_torch() -> None:
    """The API needs only the torch-free specs, catalog and a by-name Celery client."""
    code = ("import service.main; app = service.main.create_app(); app.openapi(); "
            "heavy = [m for m in ('torch', 'torchvision', 'matplotlib', 'sklearn', 'clrcore.runs', 'worker.tasks') "
            "if m in sys.modules]; print('heavy:', heavy); sys.exit(1 if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", f"import sys; {code}"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "CLR_OPEN_MODE": "true"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "heavy: []" in result.stdout

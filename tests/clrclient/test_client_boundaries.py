"""The client is light: importing it (and running `clr remote`) loads neither torch nor the server's
stack, and clrcore loads the client only when `clr remote` is run."""

import subprocess
import sys

from tests.helpers import ROOT

SERVER_SIDE = {"torch", "torchvision", "fastapi", "starlette", "uvicorn", "celery", "kombu", "redis", "service",
               "worker", "jobs", "matplotlib", "sklearn"}


def _modules_after(code: str) -> set[str]:
    probe = f"import sys\n{code}\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True, cwd=ROOT)
    return {name.split(".")[0] for name in out.stdout.split()}


def test_clrclient_loads_no_torch_and_no_server_code() -> None:
    loaded = _modules_after("import clrclient, clrclient.cli_remote")
    assert {"clrclient", "httpx", "pydantic"} <= loaded  # the probe really imported the client
    assert not loaded & SERVER_SIDE


def test_clr_remote_runs_without_torch() -> None:
    loaded = _modules_after("from clrcore.cli import main\ntry:\n    main(['remote', 'list', '--help'])\n"
                            "except SystemExit:\n    pass")
    assert "clrclient" in loaded and not loaded & SERVER_SIDE


def test_clrcore_cli_does_not_load_the_client_until_asked() -> None:
    assert "clrclient" not in _modules_after("import clrcore.cli")

"""docker-compose.yml and the Dockerfile, checked as data: Docker does not run here, so these tests keep
the deployment files saying what the README and the reliability notes rely on."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _command(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return command.split() if isinstance(command, str) else list(command)


def _workers(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose["services"].items() if _command(s)[:3] == ["python", "-m", "worker"]}


def test_redis_is_durable_never_evicts_and_has_a_healthcheck(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    command = " ".join(_command(redis))
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command
    assert redis["healthcheck"]["test"]


def test_a_gpu_worker_reserves_an_nvidia_device_and_a_cpu_worker_exists(compose: dict[str, Any]) -> None:
    workers = _workers(compose)
    queues = {name: w["environment"]["CLR_QUEUE"] for name, w in workers.items()}
    gpu = [w for name, w in workers.items() if queues[name] == "gpu"]
    assert gpu and "cpu" in queues.values()
    devices = gpu[0]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)


def test_api_and_workers_share_only_redis_and_the_object_store(compose: dict[str, Any]) -> None:
    """Issue 13: every artifact is in the object store; no volume is mounted by two services."""
    api = compose["services"]["api"]
    assert _command(api)[:2] == ["uvicorn", "service.main:app"]
    workers = _workers(compose)
    assert workers and "objectstore" in compose["services"]
    owners: dict[str, str] = {}
    for name, service in {"api": api, **workers}.items():
        env = service["environment"]
        assert env["CLR_STORAGE_URL"].startswith("s3://") and env["CLR_S3_ENDPOINT_URL"]
        assert "objectstore" in service["depends_on"]
        for mount in service.get("volumes", []):
            volume = mount.split(":")[0]
            assert volume not in owners, f"{name} shares volume {volume} with {owners.get(volume)}"
            owners[volume] = name


def test_dockerfile_installs_the_project_with_an_extras_build_arg() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG EXTRAS=", dockerfile, re.M)
    assert re.search(r'pip install "\.\[\$\{EXTRAS\}\]"', dockerfile)


def test_docker_compose_config_is_valid_where_a_client_exists() -> None:
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("no docker compose client on this machine")
    result = subprocess.run([docker, "compose", "config", "-q"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr

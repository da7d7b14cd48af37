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
    assert _command(api)[:3] == ["python", "-m", "service.main"]  # uvicorn with the CLR_HTTP_* limits
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
    assert re.search(r'pip install -c constraints\.txt "\.\[\$\{EXTRAS\}\]"', dockerfile)


def test_docker_compose_config_is_valid_where_a_client_exists() -> None:
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("no docker compose client on this machine")
    result = subprocess.run([docker, "compose", "config", "-q"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr


def test_the_api_is_published_on_loopback_and_redis_has_maxmemory(compose: dict[str, Any]) -> None:
    """Issue 14 items 11 and 13: plain HTTP stays on the host; Redis memory is bounded, with noeviction."""
    ports = compose["services"]["api"]["ports"]
    assert ports == ["${CLR_API_BIND:-127.0.0.1}:8000:8000"]
    redis_command = compose["services"]["redis"]["command"]
    assert "--maxmemory" in redis_command and redis_command[redis_command.index("--maxmemory-policy") + 1] == \
        "noeviction"


def test_the_api_entry_point_passes_the_connection_limits_to_uvicorn() -> None:
    from jobs.settings import Settings
    from service.main import server_options

    options = server_options(Settings(http_limit_concurrency=7, http_keep_alive_seconds=3,
                                      http_max_header_bytes=4096))
    assert options["host"] == "127.0.0.1"
    assert (options["limit_concurrency"], options["timeout_keep_alive"], options["h11_max_incomplete_event_size"]) \
        == (7, 3, 4096)


def _constraints() -> dict[str, str]:
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def test_every_dependency_is_pinned_to_a_version_its_range_admits() -> None:
    # a dependency added to pyproject.toml without `make lock` would install unpinned, and a pin outside
    # the range would make pip refuse to install at all
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    wanted += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    pins = _constraints()
    for req in wanted:
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in constraints.txt: run `make lock`"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} is outside {req}"


def test_make_and_the_image_install_the_pinned_versions() -> None:
    assert "-c constraints.txt" in (ROOT / "Makefile").read_text()
    assert re.search(r"COPY [^\n]*constraints\.txt", (ROOT / "Dockerfile").read_text())

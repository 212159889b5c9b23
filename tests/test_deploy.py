"""The deployment files: compose stack, Dockerfile, constraints, systemd units.

No Docker daemon runs on the test machine: what needs one (an image build, `docker
compose config`) is skipped with the reason; everything else is checked as files.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

from sftp_gateway.config import settings_from_dict

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
SERVICES = {"gateway", "notifier", "postgres", "s3", "sqs", "mailpit", "init"}
UNITS = ["sftp-gateway.service", "sftp-gateway-notifier.service"]


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def docker_works(*args: str) -> bool:
    if shutil.which("docker") is None:
        return False
    result = subprocess.run(["docker", *args], capture_output=True, timeout=30)
    return result.returncode == 0


def test_compose_starts_every_part_of_the_system() -> None:
    services = compose()["services"]
    assert set(services) == SERVICES
    assert services["gateway"]["command"] == ["serve"]
    assert services["notifier"]["command"] == ["notifier"]
    assert services["s3"]["image"].startswith("chrislusf/seaweedfs")
    assert "-s3" in services["s3"]["command"]
    assert services["sqs"]["image"].startswith("softwaremill/elasticmq-native")
    assert services["mailpit"]["image"].startswith("axllent/mailpit")
    assert services["gateway"]["build"]["context"] == ".."
    assert (DEPLOY / services["gateway"]["build"]["context"] / "Dockerfile").is_file()
    for name in ("postgres", "s3", "mailpit"):
        assert services[name]["healthcheck"]["test"], name


def test_compose_references_only_declared_services_volumes_and_files() -> None:
    data = compose()
    services, declared = data["services"], set(data["volumes"])
    used: set[str] = set()
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        for mount in service.get("volumes", []):
            source = mount.split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in declared, f"{name} uses undeclared volume {source}"
                used.add(source)
    assert used == declared  # nothing declared and forgotten
    gateway_mounts = {m.split(":")[1] for m in services["gateway"]["volumes"]}
    assert "/srv/sftp-gateway/keys" in gateway_mounts  # host keys survive a rebuild
    assert "catalog" in {m.split(":")[0] for m in services["postgres"]["volumes"]}
    starts_after_init = services["gateway"]["depends_on"]["init"]["condition"]
    assert starts_after_init == "service_completed_successfully"


def test_the_stack_config_is_valid_and_names_the_compose_services() -> None:
    config = yaml.safe_load((DEPLOY / "gateway.yaml").read_text())
    settings = settings_from_dict(config, environ={})
    hosts = {
        re.sub(r"^\w+://|:\d+.*$", "", settings.storage.endpoint_url or ""),
        re.sub(r"^\w+://|:\d+.*$", "", settings.events.endpoint_url or ""),
        settings.notifier.smtp_host,
        settings.catalog.url.split("@", 1)[1].split(":", 1)[0],
    }
    assert hosts <= set(compose()["services"])
    queue = (settings.events.queue_url or "").rsplit("/", 1)[1]
    assert f"{queue} {{" in (DEPLOY / "elasticmq.conf").read_text()


def test_dockerfile_base_is_pinned_by_digest_and_installs_no_moto() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim@sha256:[0-9a-f]{64}$", text, re.M)
    assert re.search(r"^FROM \$\{PYTHON_IMAGE\}$", text, re.M)
    installs = [line for line in text.splitlines() if "pip install" in line]
    assert installs and all("constraints.txt" in line for line in installs)
    assert not any(re.search(r"moto|\[(demo|test)", line) for line in installs)
    assert "COPY constraints.txt" in text


def test_constraints_pin_every_runtime_dependency_within_its_range_and_no_moto() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not an exact pin: {line}"
            pins[name.lower()] = version
    assert "moto" not in pins and "pytest" not in pins
    for text in project["dependencies"]:
        req = Requirement(text)
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pins, f"{name} is not pinned in constraints.txt"
        assert req.specifier.contains(pins[name]), f"{name}=={pins[name]} outside {req}"
    assert not any(Requirement(r).name == "moto" for r in project["dependencies"])
    assert any(r.startswith("moto") for r in project["optional-dependencies"]["demo"])


def test_image_builds() -> None:
    if not docker_works("info"):
        pytest.skip("no Docker daemon here (`docker info` fails): the image is not built")
    result = subprocess.run(
        ["docker", "build", "-t", "sftp-gateway:test", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    listed = subprocess.run(
        ["docker", "run", "--rm", "--entrypoint", "pip", "sftp-gateway:test", "list"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "moto" not in listed.stdout.lower()


def test_docker_compose_config_accepts_the_file() -> None:
    if not docker_works("compose", "version"):
        pytest.skip("the docker compose plugin is not installed here")
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((DEPLOY / name).read_text())
    return parser


@pytest.mark.parametrize("name", UNITS)
def test_systemd_unit_is_hardened(name: str) -> None:
    service = unit(name)["Service"]
    assert service["DynamicUser"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ReadWritePaths"] == "/var/lib/sftp-gateway"
    assert service["StateDirectory"] == "sftp-gateway"
    assert service["ExecStart"].split()[1] in {"serve", "notifier"}


@pytest.mark.parametrize("name", UNITS)
def test_systemd_analyze_verify_accepts_the_unit(name: str, tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (the unit is still parsed above)")
    # verify also checks that ExecStart exists: point it at a stand-in executable.
    binary = tmp_path / "sftp-gateway"
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    text = (DEPLOY / name).read_text().replace("/opt/sftp-gateway/bin/sftp-gateway", str(binary))
    (tmp_path / name).write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(tmp_path / name)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert name not in output and "Unknown" not in output, output  # no warning on it

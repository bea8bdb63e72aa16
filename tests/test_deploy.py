"""Deployment files: the systemd unit verifies, the manifests parse, configs load."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    unit = (REPO / "config" / "convai-monitor.service").read_text()
    # verify checks that ExecStart exists: point it at this checkout's console script.
    binary = Path(sys.executable).parent / "convai-monitor"
    unit = unit.replace("/opt/convai-monitor/.venv/bin/convai-monitor", str(binary))
    path = tmp_path / "convai-monitor.service"
    path.write_text(unit)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    for option in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "StateDirectory=",
        "LoadCredential=",
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ProtectHome=yes",
        "RestrictAddressFamilies=",
    ):
        assert option in unit


def test_every_stop_timeout_leaves_room_for_a_clean_stop() -> None:
    """systemd, compose and Kubernetes wait longer than the daemon's own stop takes, and
    the unit's comment states the daemon's real limits."""
    import re

    from monitor.app import FINAL_DELIVERY_TIMEOUT, SWITCH_DRAIN_TIMEOUT

    clean_stop = SWITCH_DRAIN_TIMEOUT + FINAL_DELIVERY_TIMEOUT
    unit = (REPO / "config" / "convai-monitor.service").read_text()
    stop = re.search(r"^TimeoutStopSec=(\d+)s$", unit, re.MULTILINE)
    assert stop is not None
    assert int(stop.group(1)) >= 2 * clean_stop
    assert f"finish ({SWITCH_DRAIN_TIMEOUT:g} s at most)" in unit
    assert f"({FINAL_DELIVERY_TIMEOUT:g} s at most)" in unit
    assert f"gone within {clean_stop:g} s" in unit
    readme = (REPO / "README.md").read_text()
    assert f"({SWITCH_DRAIN_TIMEOUT:g} s at most;" in readme
    assert f"gone within {clean_stop:g} s" in readme
    for name in ("docker-compose.yaml", "docker-compose.postgres.yaml"):
        compose = yaml.safe_load((REPO / "config" / name).read_text())
        for service in compose["services"].values():
            if "stop_grace_period" in service:
                assert int(service["stop_grace_period"].rstrip("s")) >= 2 * clean_stop, name
    for name in ("kubernetes-sidecar.yaml", "kubernetes-sidecar-postgres.yaml"):
        grace = re.findall(
            r"terminationGracePeriodSeconds: (\d+)", (REPO / "config" / name).read_text()
        )
        assert grace, name
        assert all(int(g) >= 2 * clean_stop for g in grace), name


def test_manifests_parse() -> None:
    compose = yaml.safe_load((REPO / "config" / "docker-compose.yaml").read_text())
    assert "convai-monitor" in compose["services"]
    documents = list(yaml.safe_load_all((REPO / "config" / "kubernetes-sidecar.yaml").read_text()))
    kinds = [d["kind"] for d in documents]
    assert kinds == ["ConfigMap", "Deployment"]
    embedded = documents[0]["data"]["config.yaml"]
    assert "server:" in embedded
    dockerfile = (REPO / "Dockerfile").read_text()
    for needle in ("USER monitor", "HEALTHCHECK", "VOLUME", "/healthz", "slim"):
        assert needle in dockerfile


def test_sidecar_config_validates(monkeypatch: pytest.MonkeyPatch) -> None:
    from monitor.config import parse_config

    document = next(yaml.safe_load_all((REPO / "config" / "kubernetes-sidecar.yaml").read_text()))
    env = {
        "CONVAI_API_KEY": "k-1234567",
        "VLLM_API_KEY": "k-7654321",
        "SLACK_WEBHOOK_URL": "slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ",
        "PAGERDUTY_URL": "json://127.0.0.1:9/pd",
    }
    text = document["data"]["config.yaml"].replace(
        "api_key_file: /var/run/secrets/convai-monitor/openai", "api_key: sk-file-stand-in"
    )
    config = parse_config(text, env=env)
    assert config.server.listen == "0.0.0.0:9478"


def test_compose_runs_the_example_config_as_shipped(tmp_path: Path) -> None:
    """The compose file mounts the example config unchanged: with the environment compose
    gives it, the database is on the /data volume and the server listens on 0.0.0.0 at
    the published port (127.0.0.1 inside a container is unreachable)."""
    from monitor.config import parse_config

    compose = yaml.safe_load((REPO / "config" / "docker-compose.yaml").read_text())
    service = compose["services"]["convai-monitor"]
    env = {
        name: value if not value.startswith("${") else f"stand-in-{name.lower()}-123"
        for name, value in service["environment"].items()
    }
    env["SLACK_WEBHOOK_URL"] = "json://127.0.0.1:9/slack"
    env["PAGERDUTY_URL"] = "json://127.0.0.1:9/pd"
    mounts = {m.split(":")[1]: m.split(":")[0] for m in service["volumes"]}
    assert mounts["/etc/convai-monitor/config.yaml"] == "./convai-monitor.example.yaml"
    # Secrets are mounted at /run/secrets/NAME; stand in a local folder for it.
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "openai").write_text("sk-stand-in-key\n")
    env["CREDENTIALS_DIRECTORY"] = str(secrets)
    text = (REPO / "config" / "convai-monitor.example.yaml").read_text()
    config = parse_config(text, env=env)
    assert config.storage.url == "sqlite:////data/convai-monitor.db"
    assert "/data" in mounts
    assert config.server.listen is not None
    host, port = config.server.listen.rsplit(":", 1)
    assert host == "0.0.0.0"
    assert any(p.endswith(f":{port}") for p in service["ports"])
    # The image itself sets the same, for `docker run` without compose.
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "CONVAI_MONITOR_DB_URL=sqlite:////data/convai-monitor.db" in dockerfile
    assert "CONVAI_MONITOR_LISTEN=0.0.0.0:9478" in dockerfile


def test_example_config_outside_a_container_is_absolute_and_local(tmp_path: Path) -> None:
    from monitor.config import parse_config

    (tmp_path / "openai").write_text("sk-stand-in-key\n")
    env = {
        "CONVAI_API_KEY": "k-1234567",
        "VLLM_API_KEY": "k-7654321",
        "SLACK_WEBHOOK_URL": "json://127.0.0.1:9/slack",
        "PAGERDUTY_URL": "json://127.0.0.1:9/pd",
        "CREDENTIALS_DIRECTORY": str(tmp_path),
    }
    text = (REPO / "config" / "convai-monitor.example.yaml").read_text()
    config = parse_config(text, env=env)
    # Four slashes: the systemd unit's StateDirectory, wherever the daemon is started.
    assert config.storage.url == "sqlite:////var/lib/convai-monitor/convai-monitor.db"
    assert config.server.listen == "127.0.0.1:9478"


POSTGRES_ENV = {
    "CONVAI_API_KEY": "k-1234567",
    "VLLM_API_KEY": "k-7654321",
    "PGPASSWORD": "pg-canary-secret-4242",
    "SLACK_WEBHOOK_URL": "json://127.0.0.1:9/slack",
    "PAGERDUTY_URL": "json://127.0.0.1:9/pd",
    "POD_NAME": "game-backend-7d9f-x2k4q",
}


def test_kubernetes_postgres_variant_runs_several_sidecars_on_one_database() -> None:
    from monitor.config import parse_config

    documents = list(
        yaml.safe_load_all((REPO / "config" / "kubernetes-sidecar-postgres.yaml").read_text())
    )
    assert [d["kind"] for d in documents] == ["ConfigMap", "Deployment"]
    text = documents[0]["data"]["config.yaml"].replace(
        "api_key_file: /var/run/secrets/convai-monitor/openai", "api_key: sk-file-stand-in"
    )
    config = parse_config(text, env=POSTGRES_ENV)
    assert config.storage.url.startswith("postgresql+psycopg://monitor:pg-canary-secret-4242@")
    # Each sidecar is its own vantage, named after its pod.
    assert config.instance.name == POSTGRES_ENV["POD_NAME"]
    deployment = documents[1]["spec"]
    assert deployment["replicas"] >= 3
    assert deployment["strategy"]["type"] == "RollingUpdate"
    pod = deployment["template"]["spec"]
    monitor = next(c for c in pod["containers"] if c["name"] == "convai-monitor")
    env = {e["name"]: e for e in monitor["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # A sidecar's readiness is the pod's: the monitor's must not take the game down.
    assert "readinessProbe" not in monitor
    assert not any("persistentVolumeClaim" in v for v in pod["volumes"])


def test_compose_postgres_variant_runs_three_instances_on_one_database(tmp_path: Path) -> None:
    from monitor.config import parse_config

    compose = yaml.safe_load((REPO / "config" / "docker-compose.postgres.yaml").read_text())
    services = compose["services"]
    monitors = {n: s for n, s in services.items() if n.startswith("convai-monitor")}
    assert len(monitors) == 3
    assert services["postgres"]["healthcheck"]
    names = {s["hostname"] for s in monitors.values()}
    assert len(names) == 3  # one vantage each
    ports = [p.split(":")[1] for s in monitors.values() for p in s["ports"]]
    assert len(set(ports)) == 3
    (tmp_path / "openai").write_text("sk-stand-in-key\n")
    for service in monitors.values():
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        env = {
            k: v.replace("${PGPASSWORD:?set PGPASSWORD}", POSTGRES_ENV["PGPASSWORD"])
            for k, v in service["environment"].items()
            if not v.startswith("${")
        }
        env.update({k: v for k, v in POSTGRES_ENV.items() if k != "POD_NAME"})
        env["CREDENTIALS_DIRECTORY"] = str(tmp_path)
        text = (REPO / "config" / "convai-monitor.example.yaml").read_text()
        config = parse_config(text, env=env)
        assert config.storage.url == (
            "postgresql+psycopg://monitor:pg-canary-secret-4242@postgres:5432/convai_monitor"
        )
        assert config.server.listen == "0.0.0.0:9478"

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

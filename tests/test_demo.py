"""`convai-monitor demo` and `drill`: the outage drill doubles as a smoke test."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from monitor.cli import main
from monitor.sim.receiver import AlertReceiver
from tests.conftest import config_dict, write_config


def test_demo_runs_the_whole_story() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "monitor", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for line in (
        "endpoint_down    fallback backup of demo-turbo does not serve the group's model",
        "failover         failover vllm -> openai",
        "failback         failback openai -> vllm",
        "detection (first failed probe -> switch)",
        "alerts delivered",
        "Active endpoint over time:",
        "pager   [CRITICAL] demo-turbo: failed over",
        "pager   [RESOLVED] demo-turbo: failed back; resolved",
        "Drill passed",
    ):
        assert line in out
    assert "Traceback" not in result.stderr


def test_drill_uses_the_real_targets_and_marks_alerts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with AlertReceiver() as receiver:
        group = {
            "model_group_name": "prod-turbo",
            "model_name": "gpt-4o-mini",
            "endpoints": [
                {"name": "primary", "base_url": "https://llm.invalid/v1", "api_key": "k-1234567"},
                {"name": "spare", "base_url": "https://spare.invalid/v1", "api_key": "k-7654321"},
            ],
        }
        data = config_dict(tmp_path, [group], "https://api.convai.invalid")
        data["alerts"] = {"targets": [{"url": receiver.url("pager"), "min_severity": "critical"}]}
        code = main(["drill", "-c", str(write_config(tmp_path, data)), "prod-turbo"])
        out = capsys.readouterr().out
        titles = [r.title for r in receiver.received]
        messages = [r.message for r in receiver.received]
    assert code == 0, out
    assert "failover         failover primary -> spare" in out
    assert titles == [
        "DRILL [CRITICAL] prod-turbo: failed over",
        "DRILL [RESOLVED] prod-turbo: failed back; resolved",
    ]
    assert "This is a drill" in messages[0]
    # The real database was never touched.
    assert not (tmp_path / "monitor.db").exists()


def test_drill_works_for_any_group_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Even the demo's own group name: what the drill checks follows its world, not a name.
    for name in ("demo-turbo", "llama3.1-70b-companyX"):
        group = {
            "model_group_name": name,
            "model_name": "m",
            "endpoints": [
                {"name": "one", "base_url": "https://one.invalid/v1", "api_key": "k-1234567"},
                {"name": "two", "base_url": "https://two.invalid/v1", "api_key": "k-7654321"},
            ],
        }
        folder = tmp_path / name
        folder.mkdir()
        path = write_config(folder, config_dict(folder, [group]))
        code = main(["drill", "-c", str(path), name])
        out = capsys.readouterr().out
        assert code == 0, out
        assert "Drill passed" in out


def test_drill_needs_a_fallback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    group = {
        "model_group_name": "solo",
        "model_name": "m",
        "endpoints": [{"name": "only", "base_url": "https://x.invalid/v1", "api_key": "k-1234567"}],
    }
    code = main(
        ["drill", "-c", str(write_config(tmp_path, config_dict(tmp_path, [group]))), "solo"]
    )
    assert code == 2
    assert "nothing to fail over to" in capsys.readouterr().err


def test_keep_running_prints_the_status_page_that_shows_the_outage(tmp_path: Path) -> None:
    """`demo --keep-running` names the page's URL; the daemon run on play.yaml serves it,
    opening on the outage the demo just played."""
    with subprocess.Popen(
        [sys.executable, "-m", "monitor", "demo", "--keep-running", "--dir", str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as demo:
        assert demo.stdin is not None
        assert demo.stdout is not None
        try:
            url = None
            for line in demo.stdout:  # the demo's story, then what to do next
                match = re.match(r"\s+status page\s+(http://127\.0\.0\.1:\d+/)", line)
                if match:
                    url = match.group(1)
                    break
            assert url is not None, "demo --keep-running printed no status page URL"
            page = _page_from_play_daemon(tmp_path / "play.yaml", url)
        finally:
            demo.stdin.write("quit\n")
            demo.stdin.flush()
            demo.wait(timeout=15)
    assert page.status_code == 200
    assert 'data-group="demo-turbo"' in page.text
    kinds = re.findall(r'data-kind="([a-z_]+)"', page.text)
    assert {"failover", "failback"} <= set(kinds)


def _page_from_play_daemon(config: Path, url: str) -> httpx.Response:
    with subprocess.Popen(
        [sys.executable, "-m", "monitor", "run", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ) as daemon:
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    return httpx.get(url, timeout=2, trust_env=False)
                except httpx.HTTPError:
                    time.sleep(0.2)
            raise AssertionError(f"nothing served {url}")
        finally:
            daemon.terminate()
            daemon.wait(timeout=15)

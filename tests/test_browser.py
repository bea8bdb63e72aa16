"""The status page in a real browser: Debian's chromium, headless, driven by Selenium.

What a person on call sees right after a failover: the group and its state, the switch in
the timeline, the bars of days and the latency chart actually drawn, on a desktop, on a
phone and in a dark theme. Without chromium and chromedriver this test fails: `make test`
installs them (as root); a skipped browser test would hide a page nobody has looked at.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from monitor.sim.convai import ConvaiSim
from monitor.sim.openai import EndpointSim
from tests.harness import GROUP, World, make_world, running, wait_for
from tests.test_page import failed_over

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Flags that work in a container as root with nothing outside reachable.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
)


def start_browser(profile: Path, width: int = 1200, height: int = 1800) -> WebDriver:
    """Headless chromium with a fresh profile; fails (never skips) when not installed."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(
            f"{' and '.join(missing)} not installed: the status page cannot be tested. "
            "Run `make test` as root (it installs them) or "
            "`apt-get install chromium chromium-driver`.",
            pytrace=False,
        )
    options = Options()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    service = Service(executable_path=CHROMEDRIVER, log_output=str(profile) + ".driver.log")
    return webdriver.Chrome(options=options, service=service)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    driver = start_browser(tmp_path / "chromium")
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def world(tmp_path: Path, convai: ConvaiSim, endpoints: Callable[..., EndpointSim]) -> World:
    w = make_world(tmp_path, convai, endpoints, names=("a", "b"))
    w.extra = {"server": {"listen": "127.0.0.1:0"}}
    return w


def _style(driver: WebDriver, element: Any, prop: str) -> str:
    return str(driver.execute_script(f"return getComputedStyle(arguments[0]).{prop}", element))


def _drawn(driver: WebDriver, element: Any) -> tuple[float, float]:
    """The width and height an SVG shape takes on screen."""
    box = driver.execute_script(
        "const r = arguments[0].getBoundingClientRect(); return [r.width, r.height];", element
    )
    return float(box[0]), float(box[1])


def _brightness(rgb: str) -> float:
    r, g, b = (int(v) for v in re.findall(r"\d+", rgb)[:3])
    return (r + g + b) / 3


async def test_what_on_call_sees_after_a_failover(
    world: World, browser: WebDriver, tmp_path: Path
) -> None:
    config = world.config()
    async with running(config) as daemon:
        await failed_over(world, config)
        # A few seconds of b's answers after the switch: enough for a line, not a dot.
        answered = world.sims["b"].requests
        await wait_for(lambda: world.sims["b"].requests >= answered + 6, what="b probed")
        assert daemon.server is not None
        url = f"http://127.0.0.1:{daemon.server.port}/"
        # The browser blocks; the daemon's loop keeps running meanwhile.
        await asyncio.to_thread(browser.get, url)
        await asyncio.to_thread(browser.save_screenshot, str(tmp_path / "page.png"))

        assert "need attention" in browser.title
        group = browser.find_element(By.CSS_SELECTOR, f'section.group[data-group="{GROUP}"]')
        assert group.is_displayed()
        assert group.find_element(By.TAG_NAME, "h2").text == GROUP
        badge = group.find_element(By.CSS_SELECTOR, ".badge.state")
        assert badge.text == "Failed over"
        # Amber, not green: failed over is a warning to look at.
        assert _style(browser, badge, "backgroundColor") == "rgb(208, 135, 0)"
        assert "active endpoint b" in group.text
        assert "last switch failover a → b" in group.text

        endpoints = {
            e.get_attribute("data-endpoint"): e
            for e in group.find_elements(By.CSS_SELECTOR, ".endpoint")
        }
        assert set(endpoints) == {"a", "b"}
        assert "down" in endpoints["a"].find_element(By.CSS_SELECTOR, ".head").text
        assert "active" in endpoints["b"].find_element(By.CSS_SELECTOR, ".head").text
        for name, endpoint in endpoints.items():
            cells = endpoint.find_elements(By.CSS_SELECTOR, "svg.days rect")
            assert len(cells) == 90, name
            assert all(_drawn(browser, c)[0] > 2 for c in cells[-3:]), name
            today = cells[-1]
            hover = today.find_element(By.TAG_NAME, "title").get_attribute("textContent") or ""
            assert re.fullmatch(r"\d{4}-\d\d-\d\d: [\d.]+% up \([\d,]+ probes\)", hover), hover
            # Earlier days were never probed: grey, and their figure says so.
            first = cells[0].find_element(By.TAG_NAME, "title").get_attribute("textContent")
            assert first is not None
            assert first.endswith("no probes")
            # A line, or a dot for a stretch of passing probes too short for one (a went
            # down a second after it was first judged up).
            marks = endpoint.find_elements(By.CSS_SELECTOR, "svg.latency .p50")
            assert marks, f"{name}: no p50 drawn"
            # Drawn: a flat line (every hour's p50 the same) has no height but has width.
            assert all(max(_drawn(browser, m)) > 0 for m in marks)
            assert endpoint.find_elements(By.CSS_SELECTOR, "svg.latency .p95")
        # b has answered all along: a line across the chart.
        line = endpoints["b"].find_element(By.CSS_SELECTOR, "svg.latency polyline.p50")
        chart = endpoints["b"].find_element(By.CSS_SELECTOR, "svg.latency")
        assert _drawn(browser, line)[0] > _drawn(browser, chart)[0] / 2
        # b answered every probe today: its cell is green; a failed some: not green.
        green = "rgb(31, 157, 85)"
        cell_b = endpoints["b"].find_elements(By.CSS_SELECTOR, "svg.days rect")[-1]
        cell_a = endpoints["a"].find_elements(By.CSS_SELECTOR, "svg.days rect")[-1]
        assert _style(browser, cell_b, "fill") == green
        assert _style(browser, cell_a, "fill") != green

        entries = browser.find_elements(By.CSS_SELECTOR, "ol.timeline li")
        kinds = [e.get_attribute("data-kind") for e in entries]
        assert "failover" in kinds
        switch = entries[kinds.index("failover")]
        assert switch.is_displayed()
        assert GROUP in switch.text
        stamps = [
            e.find_element(By.TAG_NAME, "time").get_attribute("datetime") or "" for e in entries
        ]
        assert stamps == sorted(stamps, reverse=True)
        assert browser.find_element(By.CSS_SELECTOR, 'meta[http-equiv="refresh"]')

        # Dark theme: the page follows the system's preference.
        browser.execute_cdp_cmd(
            "Emulation.setEmulatedMedia",
            {"features": [{"name": "prefers-color-scheme", "value": "dark"}]},
        )
        body = browser.find_element(By.TAG_NAME, "body")
        assert _brightness(_style(browser, body, "backgroundColor")) < 40
        assert _brightness(_style(browser, body, "color")) > 200
        await asyncio.to_thread(browser.save_screenshot, str(tmp_path / "page-dark.png"))

        # A phone: nothing wider than the screen, the state still in view at the top.
        browser.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True},
        )
        await asyncio.to_thread(browser.refresh)
        overflow = browser.execute_script(
            "return document.documentElement.scrollWidth - window.innerWidth"
        )
        assert overflow <= 0, f"the page is {overflow}px wider than a phone"
        badge = browser.find_element(By.CSS_SELECTOR, f'[data-group="{GROUP}"] .badge.state')
        top = browser.execute_script("return arguments[0].getBoundingClientRect().top", badge)
        assert 0 < top < 400


def test_a_missing_browser_fails_the_suite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never a silent skip: without chromium the page would go untested."""
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", str(tmp_path / "no-chromium"))
    with pytest.raises(pytest.fail.Exception, match=r"no-chromium not installed.*make test"):
        start_browser(tmp_path / "profile")

"""Outage drills: the real daemon against simulated endpoints and a simulated Convai API.

`demo` builds a whole world on loopback (a Convai API, three endpoints, an alert receiver)
and runs a scripted outage; `drill` does the same with a group from a real config, its
real alert targets, and alerts marked as a drill. Neither touches the real Convai.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import yaml

from monitor.app import Daemon, open_store
from monitor.config import Config, load_config, parse_config
from monitor.convai import ConvaiClient
from monitor.durations import format_duration
from monitor.report import table
from monitor.sim.convai import ConvaiSim
from monitor.sim.openai import Behaviour, EndpointSim
from monitor.sim.receiver import AlertReceiver
from monitor.store.outbox import Deliveries
from monitor.store.switching import EventRecord, SwitchLog

DEMO_GROUP = "demo-turbo"
DEMO_MODEL = "demo-model"
DEMO_CONVAI_KEY = "demo-convai-key"
# Sub-second cadence so the whole story fits in a few seconds.
DRILL_POLICY = {
    "interval": 0.5,
    "fast_interval": 0.1,
    "timeout": 0.4,
    "fall": 3,
    "rise": 2,
    "failback": "auto",
    "failback_after": 2.0,
    "min_dwell": 1.0,
}
STEP_TIMEOUT = 15.0


class DrillFailed(Exception):
    """The drill did not go as expected; the message says which step."""


@dataclass
class World:
    """The simulated world: a Convai API, endpoints by name, an alert receiver."""

    convai: ConvaiSim
    endpoints: dict[str, EndpointSim]
    receiver: AlertReceiver | None
    group: str
    primary: str
    folder: Path
    # The demo's scripted world has a standby that serves the wrong model, and a failover
    # must pick the healthy one; a drill's world is the group's own endpoints, all healthy.
    broken: str | None = None
    expected: str | None = None

    def stop(self) -> None:
        for sim in self.endpoints.values():
            sim.stop()
        self.convai.stop()
        if self.receiver is not None:
            self.receiver.stop()

    def registered_url(self) -> str | None:
        record = self.convai.record(self.group, DEMO_CONVAI_KEY)
        return None if record is None else str(record["base_url"])

    def active(self) -> str | None:
        url = self.registered_url()
        return next((n for n, s in self.endpoints.items() if s.base_url == url), None)


@dataclass
class Story:
    """What happened, for the live lines and the summary."""

    out: TextIO
    started: float = field(default_factory=time.time)
    seen: int = 0
    timeline: list[tuple[float, str]] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)
    # Reads the audit log; set while the daemon runs, so each new event becomes a line.
    reader: Callable[[], list[EventRecord]] | None = None

    def say(self, what: str, at: float | None = None) -> None:
        stamp = datetime.fromtimestamp(at or time.time(), UTC).strftime("%H:%M:%S.%f")[:-3]
        print(f"{stamp}  {what}", file=self.out, flush=True)

    def mark(self, name: str) -> None:
        self.marks[name] = time.time()


def _world(folder: Path, with_receiver: bool) -> World:
    convai = ConvaiSim(api_keys=[DEMO_CONVAI_KEY])
    convai.start()
    endpoints = {
        "vllm": EndpointSim(model=DEMO_MODEL, api_key="demo-key-vllm"),
        "openai": EndpointSim(model=DEMO_MODEL, api_key="demo-key-openai", delay=0.02),
        # A standby that does not serve the group's model: broken before it is needed.
        "backup": EndpointSim(model="some-other-model", api_key="demo-key-backup"),
    }
    for sim in endpoints.values():
        sim.start()
    receiver = AlertReceiver() if with_receiver else None
    if receiver is not None:
        receiver.start()
    return World(
        convai, endpoints, receiver, DEMO_GROUP, "vllm", folder, broken="backup", expected="openai"
    )


def demo_config(world: World, db: Path) -> dict[str, Any]:
    keys = {"vllm": "demo-key-vllm", "openai": "demo-key-openai", "backup": "demo-key-backup"}
    data: dict[str, Any] = {
        "convai": {"api_key": DEMO_CONVAI_KEY, "base_url": world.convai.base_url},
        "storage": {"url": f"sqlite:///{db}"},
        "defaults": dict(DRILL_POLICY),
        "groups": [
            {
                "model_group_name": world.group,
                "model_name": DEMO_MODEL,
                "endpoints": [
                    {"name": n, "base_url": s.base_url, "api_key": keys[n]}
                    for n, s in world.endpoints.items()
                ],
            }
        ],
    }
    if world.receiver is not None:
        data["alerts"] = {
            "targets": [
                {"url": world.receiver.url("oncall"), "min_severity": "warning"},
                {"url": world.receiver.url("pager"), "min_severity": "critical"},
            ]
        }
    return data


async def _register(world: World) -> None:
    async with ConvaiClient(world.convai.base_url, DEMO_CONVAI_KEY) as client:
        primary = world.endpoints[world.primary]
        await client.register(
            world.group,
            DEMO_MODEL,
            "demo-key-vllm",
            base_url=primary.base_url,
            display_name="Demo Turbo",
        )


async def _wait(what: str, condition: Callable[[], bool], story: Story, limit: float) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise DrillFailed(f"timed out after {limit:g}s waiting for: {what}")
        await _follow(story)
        await asyncio.sleep(0.05)
    await _follow(story)


async def _follow(story: Story) -> None:
    if story.reader is None:
        return
    events = await asyncio.to_thread(story.reader)
    for event in events[story.seen :]:
        story.say(f"{event.group}  {event.kind:<16} {event.message}", event.at)
    story.seen = len(events)


async def run_drill(
    config: Config,
    world: World,
    story: Story,
    *,
    drill: bool = False,
) -> dict[str, Any]:
    """The script: healthy -> primary refuses -> failover -> primary back -> failback."""
    store = open_store(config)
    switches = SwitchLog(store)
    story.reader = lambda: switches.history(None, story.started - 1)
    daemon = Daemon(config, store, drill=drill)
    task = asyncio.create_task(daemon.run())
    primary = world.endpoints[world.primary]
    fallbacks = [n for n in world.endpoints if n != world.primary]
    try:
        ready = asyncio.create_task(daemon.ready.wait())
        done, _ = await asyncio.wait({task, ready}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            ready.cancel()
            task.result()
            raise DrillFailed("the daemon stopped during start-up")
        monitor = daemon.monitor
        assert monitor is not None
        story.timeline.append((time.time(), world.primary))

        def healthy() -> bool:
            state = monitor.states.get((world.group, world.primary))
            return state is not None and state.health.value == "up"

        story.say(f"{world.group}  drill            waiting for {world.primary} to be judged up")
        await _wait(f"{world.primary} up", healthy, story, STEP_TIMEOUT)
        # Every endpoint judged, and what that taught us (a broken standby) recorded,
        # before the outage starts: the story reads in order.
        await _wait(
            "every endpoint judged",
            lambda: all(
                monitor.states.get((world.group, n)) is not None
                and monitor.states[(world.group, n)].health.value != "unknown"
                for n in world.endpoints
            ),
            story,
            STEP_TIMEOUT,
        )
        await asyncio.sleep(0.3)
        story.say(
            f"{world.group}  drill            >>> {world.primary} stops accepting connections"
        )
        story.mark("died")
        primary.set(Behaviour.REFUSE)
        await _wait(
            "failover",
            lambda: world.active() not in (None, world.primary),
            story,
            STEP_TIMEOUT,
        )
        story.mark("switched")
        moved_to = world.active()
        story.timeline.append((time.time(), moved_to or "?"))
        await _follow(story)
        story.say(f"{world.group}  drill            >>> {world.primary} is back")
        story.mark("recovered")
        primary.set(Behaviour.OK)
        await _wait("failback", lambda: world.active() == world.primary, story, STEP_TIMEOUT)
        story.mark("failed_back")
        story.timeline.append((time.time(), world.primary))
        # The resolution alert is delivered by the same loop: give it a moment.
        await asyncio.sleep(1.0)
        await _follow(story)
        probes = monitor.counters.probes
        deliveries = await asyncio.to_thread(Deliveries(store).summary)
        history = await asyncio.to_thread(switches.history, None, story.started - 1)
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 20)
        story.reader = None
        store.close()
    kinds = [e.kind for e in history]
    failover = next((e for e in history if e.kind == "failover"), None)
    detection = (failover.details or {}).get("detection_to_switch_s") if failover else None
    return {
        "moved_to": moved_to,
        "fallbacks": fallbacks,
        "kinds": kinds,
        "detection_s": detection,
        "switch_s": story.marks["switched"] - story.marks["died"],
        "failback_s": story.marks["failed_back"] - story.marks["recovered"],
        "probes": probes,
        "alerts_delivered": deliveries.delivered,
        "alerts_failed": deliveries.failed,
    }


async def _play(config: Config, world: World, story: Story, *, drill: bool, praise: str) -> bool:
    """Run the script, print the summary and the verdict; True when it went as expected."""
    try:
        result = await run_drill(config, world, story, drill=drill)
    except DrillFailed as exc:
        print(f"\nDRILL FAILED: {exc}", file=story.out)
        return False
    _summary(result, story, world)
    problems = _check(result, world)
    for problem in problems:
        print(f"DRILL FAILED: {problem}", file=story.out)
    if not problems:
        print(f"\nDrill passed: {praise}", file=story.out)
    return not problems


def _check(result: dict[str, Any], world: World) -> list[str]:
    problems = []
    if world.expected is not None and result["moved_to"] != world.expected:
        problems.append(f"expected a failover to {world.expected}, got {result['moved_to']}")
    for kind in ("failover", "failback"):
        if kind not in result["kinds"]:
            problems.append(f"no {kind} was recorded")
    if world.broken is not None and "endpoint_down" not in result["kinds"]:
        problems.append("the broken standby was not reported")
    if result["alerts_failed"]:
        problems.append(f"{result['alerts_failed']} alert(s) could not be delivered")
    if world.receiver is not None and not world.receiver.received:
        problems.append("no alert reached the receiver")
    return problems


def _summary(result: dict[str, Any], story: Story, world: World) -> None:
    out = story.out
    print(file=out)
    rows = [
        ("detection (first failed probe -> switch)", _secs(result["detection_s"])),
        ("switch (outage -> Convai updated)", _secs(result["switch_s"])),
        ("failback (primary back -> Convai updated)", _secs(result["failback_s"])),
        ("probes made", str(result["probes"])),
        ("alerts delivered", str(result["alerts_delivered"])),
    ]
    print(table(["SUMMARY", ""], rows), file=out)
    print(file=out)
    print("Active endpoint over time:", file=out)
    start = story.timeline[0][0] if story.timeline else story.started
    for at, name in story.timeline:
        print(f"  +{at - start:6.2f}s  {name}", file=out)
    if world.receiver is not None:
        print(file=out)
        print("What on-call received:", file=out)
        for alert in world.receiver.received:
            print(f"  {alert.path.strip('/'):<7} {alert.title}", file=out)


def _secs(value: float | None) -> str:
    return "-" if value is None else format_duration(float(value))


async def demo(out: TextIO, folder: Path, keep_running: bool = False) -> int:
    world = _world(folder, with_receiver=True)
    story = Story(out)
    try:
        await _register(world)
        data = demo_config(world, folder / "demo.db")
        path = folder / "demo.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        config = load_config(path)
        story.say(
            f"{world.group}  drill            Convai API, 3 endpoints and an alert receiver are "
            "up on loopback; group registered on vllm"
        )
        passed = await _play(
            config,
            world,
            story,
            drill=False,
            praise="outage noticed, group failed over, on-call paged, failed back.",
        )
        if keep_running:
            await _keep_running(world, out)
        return 0 if passed else 1
    finally:
        world.stop()


PLAY_POLICY = {
    "interval": 2.0,
    "fast_interval": 0.5,
    "timeout": 1.5,
    "fall": 3,
    "rise": 2,
    "failback": "auto",
    "failback_after": 10.0,
    "min_dwell": 5.0,
}
PLAY_COMMANDS = {
    "down": Behaviour.REFUSE,
    "up": Behaviour.OK,
    "500": Behaviour.HTTP_500,
    "hang": Behaviour.HANG,
    "badkey": Behaviour.UNAUTHORIZED,
}


async def _keep_running(world: World, out: TextIO) -> None:
    """Leave the world up with a calmer config, and let the user break things."""
    # The demo's own database: the page opens on the outage that was just played.
    data = demo_config(world, world.folder / "demo.db")
    data["defaults"] = dict(PLAY_POLICY)
    page = f"http://127.0.0.1:{_free_port()}/"
    data["server"] = {"listen": page.removeprefix("http://").rstrip("/")}
    path = world.folder / "play.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    print(file=out)
    print("The simulated world stays up. In another terminal:", file=out)
    print(f"  convai-monitor run -c {path}", file=out)
    print(f"  convai-monitor status -c {path}", file=out)
    print(f"  convai-monitor history -c {path}", file=out)
    print(f"  convai-monitor failover -c {path} {world.group} --to openai", file=out)
    print(file=out)
    print(f"  {'status page':<17}{page}  (while the daemon runs)", file=out)
    print(f"  {'Convai API':<17}{world.convai.base_url}  (key {DEMO_CONVAI_KEY})", file=out)
    for name, sim in world.endpoints.items():
        print(f"  {'endpoint ' + name:<17}{sim.base_url}", file=out)
    if world.receiver is not None:
        print(f"  {'alert receiver':<17}{world.receiver.url('oncall')}", file=out)
    print(file=out)
    verbs = "|".join(PLAY_COMMANDS)
    print(f"Type `{verbs} ENDPOINT` to change an endpoint, `quit` (or Ctrl-C) to stop.", file=out)
    while True:
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line or line.strip() in ("quit", "exit"):
            return
        words = line.split()
        if len(words) != 2 or words[0] not in PLAY_COMMANDS or words[1] not in world.endpoints:
            print(f"  usage: {verbs} {'|'.join(world.endpoints)}", file=out, flush=True)
            continue
        world.endpoints[words[1]].set(PLAY_COMMANDS[words[0]])
        print(f"  {words[1]}: {PLAY_COMMANDS[words[0]].value}", file=out, flush=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def drill_config(config: Config, group_name: str, world: World, db: Path) -> Config:
    """The group's own config (policy, alert targets) pointed at the simulated world."""
    group = config.group(group_name)
    assert group is not None
    policy = {**group.policy.model_dump(), **DRILL_POLICY}
    data: dict[str, Any] = {
        "convai": {"api_key": DEMO_CONVAI_KEY, "base_url": world.convai.base_url},
        "storage": {"url": f"sqlite:///{db}"},
        "defaults": policy,
        "groups": [
            {
                "model_group_name": group_name,
                "model_name": DEMO_MODEL,
                "endpoints": [
                    {
                        "name": e.name,
                        "base_url": world.endpoints[e.name].base_url,
                        "api_key": "drill-key",
                    }
                    for e in group.endpoints
                ],
            }
        ],
        "alerts": {
            "targets": [
                {"url": t.url.get_secret_value(), "min_severity": t.min_severity}
                for t in config.alerts.targets
            ],
            "prefix": config.alerts.prefix,
        },
    }
    return parse_config(yaml.safe_dump(data), source="drill")


async def drill(config: Config, group_name: str, out: TextIO, folder: Path) -> int:
    group = config.group(group_name)
    if group is None:
        raise DrillFailed(f"no group named {group_name!r} in the config")
    if len(group.endpoints) < 2:
        raise DrillFailed(f"group {group_name} has a single endpoint: nothing to fail over to")
    convai = ConvaiSim(api_keys=[DEMO_CONVAI_KEY])
    convai.start()
    endpoints = {
        e.name: EndpointSim(model=DEMO_MODEL, api_key="drill-key") for e in group.endpoints
    }
    for sim in endpoints.values():
        sim.start()
    primary = group.primary.name
    convai.seed(
        group_name,
        DEMO_MODEL,
        "drill-key",
        base_url=endpoints[primary].base_url,
        convai_key=DEMO_CONVAI_KEY,
    )
    world = World(convai, endpoints, None, group_name, primary, folder)
    story = Story(out)
    try:
        drill_cfg = drill_config(config, group_name, world, folder / "drill.db")
        story.say(
            f"{group_name}  drill            simulated endpoints and Convai API up; real alert "
            f"targets ({len(config.alerts.targets)}); alerts are marked DRILL"
        )
        passed = await _play(
            drill_cfg,
            world,
            story,
            drill=True,
            praise="your alert targets got the story, each alert marked DRILL.",
        )
        return 0 if passed else 1
    finally:
        world.stop()

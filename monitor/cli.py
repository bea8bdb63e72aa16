"""Command line: `convai-monitor COMMAND`. User mistakes end in one line and exit 2."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from monitor import __version__
from monitor.config import CONFIG_ENV, Config, ConfigError, load_config
from monitor.logs import setup_logging
from monitor.loop import run as run_loop
from monitor.loop import settle_gc
from monitor.redact import redact
from monitor.store import StoreError

EXIT_OK, EXIT_UNHEALTHY, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A mistake in how the command was called; one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        print(f"convai-monitor: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _out(text: str = "") -> None:
    print(redact(text))


def _json(data: Any) -> None:
    from monitor.report import dumps

    print(dumps(data))


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config)


# --- commands ---------------------------------------------------------------------------


def cmd_config_validate(args: argparse.Namespace) -> int:
    from monitor.config import storage_problems

    config = _config(args)
    problems = storage_problems(config)
    if problems:
        raise ConfigError(problems, args.config or os.environ.get(CONFIG_ENV))
    endpoints = sum(len(g.endpoints) for g in config.groups)
    _out(f"config ok: {len(config.groups)} group(s), {endpoints} endpoint(s)")
    return EXIT_OK


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from monitor.app import open_store

    config = _config(args)
    store = open_store(config, migrate=True)
    store.close()
    _out(f"database at the newest schema: {store.where}")
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from monitor.app import check
    from monitor.report import check_report, fmt_ms, table

    config = _config(args)
    if args.group is not None and config.group(args.group) is None:
        raise UsageError(f"no group named {args.group!r} in the config")
    results = run_loop(check(config, args.group))
    if args.json:
        _json(check_report(results))
    else:
        _out(
            table(
                ["GROUP", "ENDPOINT", "OUTCOME", "LATENCY", "STATUS", "DETAIL"],
                [
                    (
                        r.group,
                        r.endpoint,
                        r.outcome.value,
                        fmt_ms(r.latency_ms),
                        r.http_status,
                        r.detail,
                    )
                    for r in results
                ],
            )
        )
    primaries = {g.model_group_name: g.primary.name for g in config.groups}
    healthy = all(r.ok for r in results if primaries.get(r.group) == r.endpoint)
    return EXIT_OK if healthy else EXIT_UNHEALTHY


def cmd_status(args: argparse.Namespace) -> int:
    from monitor.app import open_store
    from monitor.report import fmt_ms, fmt_pct, table
    from monitor.state import State, daemon_liveness

    config = _config(args)
    store = open_store(config, migrate=False)
    try:
        if not store.schema_current():
            raise StoreError(
                "database has no current schema: run `convai-monitor db upgrade -c FILE` "
                "or start the daemon once"
            )
        now = time.time()
        report = State(config, store, _config_arg(args)).status(now)
        daemon = daemon_liveness(store.last_beat(), now)
    finally:
        store.close()
    if args.json:
        _json(report)
        return EXIT_OK if daemon["running"] else EXIT_UNHEALTHY
    rows = []
    for group in report["groups"]:
        for endpoint in group["endpoints"]:
            last = endpoint["last_probe"] or {}
            marker = "*" if endpoint["name"] == group["active_endpoint"] else ""
            rows.append(
                (
                    group["model_group_name"],
                    endpoint["name"] + marker,
                    endpoint["health"],
                    last.get("outcome"),
                    last.get("at"),
                    fmt_pct(endpoint["uptime"]["1h"]),
                    fmt_pct(endpoint["uptime"]["24h"]),
                    fmt_ms(endpoint["latency_ms"]["p50"]),
                    fmt_ms(endpoint["latency_ms"]["p95"]),
                )
            )
    _out(daemon["text"] if daemon["running"] else f"WARNING: {daemon['text']}")
    for group in report["groups"]:
        last = group["last_switch"]
        switched = f", last switch {last['from']} -> {last['to']} at {last['at']}" if last else ""
        state = group["state"] or "not seen by the daemon yet"
        _out(f"{group['model_group_name']}: {state}{switched}")
        if group["pinned"]:
            pin = group["pinned"]
            _out(f"  held on {pin['endpoint']} until {pin['until']} (unpin to release)")
        if group["unmanaged_fix"]:
            _out(
                f"  unmanaged: Convai points at {group['registered_base_url']}, no configured "
                f"endpoint; to bring it back: {group['unmanaged_fix']}"
            )
    _out()
    _out(
        table(
            ["GROUP", "ENDPOINT", "HEALTH", "LAST", "AT", "UP 1H", "UP 24H", "P50 1H", "P95 1H"],
            rows,
        )
    )
    _out("(* = active endpoint)")
    cluster = report["cluster"]
    if len(cluster["instances"]) > 1 or cluster["leader"] is None:
        until = cluster["lease_expires_at"]
        lease = f" (lease until {until})" if until is not None else ""
        _out(f"leader: {cluster['leader'] or 'none'}{lease}")
        for instance in cluster["instances"]:
            cut_off = " (isolated: its view is not counted)" if instance["isolated"] else ""
            _out(f"  {instance['name']}: last heartbeat {instance['heartbeat_at']}{cut_off}")
        for group in report["groups"]:
            for endpoint in group["endpoints"]:
                quorum = endpoint["quorum"]
                if quorum is None:
                    continue
                views = ", ".join(
                    f"{name} {view['health']}"
                    + (f" ({view['vote']})" if view["vote"] != "counted" else "")
                    for name, view in endpoint["vantages"].items()
                )
                down, counted, needed = quorum["down"], quorum["counted"], quorum["needed"]
                _out(
                    f"  {group['model_group_name']}/{endpoint['name']}: {views}; "
                    f"{down} of {counted} see it down, {needed} needed"
                )
    _out()
    _out(_cost_table(report))
    for group in report["unmonitored"]:
        _out(f"unmonitored: {group['model_group_name']} ({group['base_url']}) is not in the config")
    alerts = report["alerts"]
    _out(
        f"alerts: {alerts['delivered']} delivered, {alerts['pending']} pending, "
        f"{alerts['failed']} failed"
    )
    if alerts["last_failure"]:
        failure = alerts["last_failure"]
        _out(
            f"  last failed delivery: {failure['kind']} for {failure['group']} to "
            f"{failure['target']}: {failure['error']}"
        )
    return EXIT_OK if daemon["running"] else EXIT_UNHEALTHY


def _count(value: int) -> str:
    return f"{value:,}"


def _cost_table(report: dict[str, Any]) -> str:
    """What probing costs: probes and tokens of the last 24 h, and a month at that pace."""
    from monitor.report import table

    rows = []
    for group in report["groups"]:
        for endpoint in group["endpoints"]:
            usage = endpoint["usage_24h"]
            cost = usage["cost_per_month"]
            rows.append(
                (
                    group["model_group_name"],
                    endpoint["name"],
                    _count(usage["probes"]),
                    _count(usage["tokens"]),
                    _count(usage["tokens_per_month"]),
                    "-" if cost is None else f"{cost:,.2f}",
                )
            )
    headers = ["GROUP", "ENDPOINT", "PROBES 24H", "TOKENS 24H", "TOKENS/MONTH", "COST/MONTH"]
    return table(headers, rows)


def _config_arg(args: argparse.Namespace) -> str:
    """The config file as the operator named it, for commands we print back."""
    return str(args.config or os.environ.get(CONFIG_ENV) or "FILE")


def _convai(config: Config) -> Any:
    from monitor.app import convai_client

    return convai_client(config)


def _run_async(coro: Any) -> Any:
    return run_loop(coro)


def cmd_failover(args: argparse.Namespace) -> int:
    from monitor.app import open_store
    from monitor.durations import parse_duration
    from monitor.ops import manual_failover

    config = _config(args)
    try:
        # `--hold 0` (any unit) asks for no hold at all.
        zero = args.hold.strip().rstrip("smhd") in ("0", "0.0")
        hold = 0.0 if zero else parse_duration(args.hold)
    except ValueError as exc:
        raise UsageError(f"--hold: {exc}") from None
    store = open_store(config)

    async def go() -> Any:
        async with _convai(config) as convai:
            return await manual_failover(
                config,
                store,
                convai,
                args.group,
                args.to,
                force=args.force,
                yes=args.yes,
                hold=hold,
            )

    try:
        result = _run_async(go())
    finally:
        store.close()
    if result.outcome is None:
        _out(result.message)
        return EXIT_OK
    if result.outcome.status == "confirmed":
        switch = result.outcome.switch
        tid = switch.transaction_id if switch else None
        _out(f"switched {args.group}: {result.from_endpoint} -> {args.to} (transactionID {tid})")
        if hold:
            from monitor.report import iso

            _out(
                f"held on {args.to} until {iso(time.time() + hold)}: no automatic switch until "
                f"then (convai-monitor unpin {args.group} releases it)"
            )
        return EXIT_OK
    return _fail(
        f"switch not done ({result.outcome.status}): {result.outcome.message}", EXIT_UNHEALTHY
    )


def cmd_pin(args: argparse.Namespace) -> int:
    from monitor.app import open_store
    from monitor.durations import parse_duration
    from monitor.ops import manual_failover, pin, require_endpoint, require_group

    config = _config(args)
    group = require_group(config, args.group)
    require_endpoint(group, args.endpoint)
    try:
        seconds = parse_duration(args.duration)
    except ValueError as exc:
        raise UsageError(f"--for: {exc}") from None
    store = open_store(config)
    try:

        async def go() -> Any:
            async with _convai(config) as convai:
                return await manual_failover(
                    config,
                    store,
                    convai,
                    args.group,
                    args.endpoint,
                    force=args.force,
                    yes=args.yes,
                )

        result = _run_async(go())
        if result.outcome is not None and result.outcome.status != "confirmed":
            return _fail(
                f"not pinned: could not move {args.group} to {args.endpoint}: "
                f"{result.outcome.message or result.outcome.status}",
                EXIT_UNHEALTHY,
            )
        until = pin(store, args.group, args.endpoint, seconds)
    finally:
        store.close()
    from monitor.report import iso

    _out(f"pinned {args.group} to {args.endpoint} until {iso(until)}")
    return EXIT_OK


def cmd_unpin(args: argparse.Namespace) -> int:
    from monitor.app import open_store
    from monitor.ops import require_group, unpin

    config = _config(args)
    require_group(config, args.group)
    store = open_store(config)
    try:
        was = unpin(store, args.group)
    finally:
        store.close()
    _out(f"unpinned {args.group}" if was else f"{args.group} was not pinned")
    return EXIT_OK


def cmd_history(args: argparse.Namespace) -> int:
    from monitor.app import open_store
    from monitor.durations import parse_duration
    from monitor.ops import require_group
    from monitor.report import history_lines
    from monitor.state import State, event_dict

    config = _config(args)
    if args.group is not None:
        require_group(config, args.group)
    try:
        since = parse_duration(args.since)
    except ValueError as exc:
        raise UsageError(f"--since: {exc}") from None
    store = open_store(config)
    try:
        now = time.time()
        records = State(config, store).switches.history(args.group, now - since)
    finally:
        store.close()
    if args.json:
        _json({"events": [event_dict(e) for e in records]})
        return EXIT_OK
    if not records:
        _out(f"no events in the last {args.since}")
        return EXIT_OK
    width = shutil.get_terminal_size((100, 24)).columns
    for line in history_lines(records, now, width):
        _out(line)
    return EXIT_OK


def cmd_explain(args: argparse.Namespace) -> int:
    from monitor.app import open_store
    from monitor.ops import require_group
    from monitor.state import State

    config = _config(args)
    require_group(config, args.group)
    store = open_store(config)
    try:
        lines = State(config, store, _config_arg(args)).explain(args.group, time.time())
    finally:
        store.close()
    for line in lines:
        _out(line)
    return EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    from monitor.ops import require_endpoint, require_group
    from monitor.report import table

    config = _config(args)
    action = args.action

    async def go() -> Any:
        async with _convai(config) as convai:
            if action == "list":
                return await convai.list_models()
            if action == "deregister":
                if not args.yes:
                    raise UsageError(
                        "deregister breaks every character using the group; add --yes to confirm"
                    )
                return await convai.deregister(args.group)
            group = require_group(config, args.group)
            endpoint_name = args.endpoint or group.primary.name
            require_endpoint(group, endpoint_name)
            endpoint = group.endpoint(endpoint_name)
            assert endpoint is not None
            if action == "register":
                model = args.model_name or group.model_name
                if not model:
                    raise UsageError("register needs --model-name (or model_name in the config)")
                return await convai.register(
                    args.group,
                    model,
                    endpoint.key,
                    is_uncensored=args.uncensored,
                    display_name=args.display_name,
                    base_url=endpoint.base_url,
                )
            return await convai.update(
                args.group,
                base_url=endpoint.base_url,
                api_key=endpoint.key,
                display_name=args.display_name,
            )

    result = _run_async(go())
    if action == "list":
        if args.json:
            _json(
                {
                    "models": [
                        {
                            "model_group_name": m.model_group_name,
                            "model_name": m.model_name,
                            "display_name": m.display_name,
                            "base_url": m.base_url,
                            "is_uncensored": m.is_uncensored,
                            "monitored": config.group(m.model_group_name) is not None,
                        }
                        for m in result.models
                    ]
                }
            )
        else:
            _out(
                table(
                    ["GROUP", "MODEL", "DISPLAY NAME", "BASE URL", "MONITORED"],
                    [
                        (
                            m.model_group_name,
                            m.model_name,
                            m.display_name,
                            m.base_url,
                            "yes" if config.group(m.model_group_name) else "no",
                        )
                        for m in result.models
                    ],
                )
            )
        return EXIT_OK
    _out(f"{result.message} (transactionID {result.transaction_id})")
    return EXIT_OK


def cmd_alerts_test(args: argparse.Namespace) -> int:
    from monitor.alerts.delivery import Notifier
    from monitor.alerts.targets import target_id

    config = _config(args)
    if not config.alerts.targets:
        raise UsageError("no alerts.targets in the config")
    notifier = Notifier(config.alerts)
    failures = 0
    for target in config.alerts.targets:
        key = target_id(target.url.get_secret_value())
        result = notifier.send(
            key,
            "[TEST] convai-monitor test notification",
            "This is a test from `convai-monitor alerts test`. If you can read it, this "
            f"target receives alerts of severity {target.min_severity} and above.",
            "info",
        )
        if result.ok:
            _out(f"{notifier.name(key)}: delivered in {result.elapsed_ms:.0f}ms")
        else:
            failures += 1
            _out(f"{notifier.name(key)}: FAILED: {result.error}")
    return EXIT_OK if failures == 0 else EXIT_UNHEALTHY


def cmd_demo(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from monitor.drill import demo

    setup_logging("critical")  # the drill's own lines tell the story
    if args.keep_running:
        folder = Path(args.dir or "convai-monitor-demo").resolve()
        folder.mkdir(parents=True, exist_ok=True)
        try:
            return int(run_loop(demo(sys.stdout, folder, keep_running=True)))
        except KeyboardInterrupt:
            return EXIT_OK
    with tempfile.TemporaryDirectory(prefix="convai-monitor-demo-") as tmp:
        return int(run_loop(demo(sys.stdout, Path(tmp))))


def cmd_drill(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from monitor.drill import DrillFailed, drill

    config = _config(args)
    setup_logging("critical")
    with tempfile.TemporaryDirectory(prefix="convai-monitor-drill-") as tmp:
        try:
            return int(run_loop(drill(config, args.group, sys.stdout, Path(tmp))))
        except DrillFailed as exc:
            raise UsageError(str(exc)) from None


def cmd_run(args: argparse.Namespace) -> int:
    from monitor.app import Daemon, open_store

    config = _config(args)
    store = open_store(config, migrate=False)
    try:
        store.lock()  # before anything is written: a second daemon must not start at all
        store.migrate()
        daemon = Daemon(
            config,
            store,
            config_path=str(Path(args.config or os.environ[CONFIG_ENV]).resolve()),
            dry_run=args.dry_run,
            register=args.register,
        )
        settle_gc()
        run_loop(daemon.run())
    finally:
        store.close()
    return EXIT_OK


# --- parser -----------------------------------------------------------------------------


def _nested(commands: Any, name: str, text: str, dest: str = "action") -> Any:
    """A command with sub-commands of its own (`models list`, `db upgrade`, ...)."""
    parser = commands.add_parser(name, help=text)
    nested = parser.add_subparsers(dest=dest, metavar=dest.upper(), parser_class=_Parser)
    nested.required = True
    return nested


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help=f"config file (default: ${CONFIG_ENV})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="convai-monitor",
        description="Watch the LLM endpoints behind Convai model groups; fail over when one dies.",
    )
    parser.add_argument("--version", action="version", version=f"convai-monitor {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    run = commands.add_parser("run", help="run the daemon")
    _add_config(run)
    run.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="least level logged (default: info)",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="decide and record 'would switch' without calling Convai's update",
    )
    run.add_argument(
        "--register",
        action="store_true",
        help="register configured groups Convai does not know (on their primary endpoint)",
    )
    run.set_defaults(func=cmd_run)

    chk = commands.add_parser("check", help="probe every endpoint once and print the results")
    _add_config(chk)
    chk.add_argument("--group", metavar="G", help="only this group")
    chk.add_argument("--json", action="store_true", help="machine-readable output")
    chk.set_defaults(func=cmd_check)

    st = commands.add_parser("status", help="health, uptime and latency from the database")
    _add_config(st)
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(func=cmd_status)

    fo = commands.add_parser("failover", help="switch a group to an endpoint now")
    _add_config(fo)
    fo.add_argument("group", metavar="GROUP")
    fo.add_argument(
        "--to", required=True, metavar="ENDPOINT", help="the configured endpoint to switch to"
    )
    fo.add_argument("--force", action="store_true", help="skip the pre-flight probe")
    fo.add_argument(
        "--hold",
        default="1h",
        metavar="DURATION",
        help="keep the group there this long, like a pin (default 1h; 0: no hold)",
    )
    fo.add_argument("--yes", action="store_true", help="confirm --force to an endpoint judged down")
    fo.set_defaults(func=cmd_failover)

    pn = commands.add_parser("pin", help="hold a group on an endpoint for a while")
    _add_config(pn)
    pn.add_argument("group", metavar="GROUP")
    pn.add_argument("endpoint", metavar="ENDPOINT")
    pn.add_argument("--for", dest="duration", required=True, metavar="DURATION", help="e.g. 2h")
    pn.add_argument("--force", action="store_true", help="skip the pre-flight probe")
    pn.add_argument("--yes", action="store_true", help="confirm --force to an endpoint judged down")
    pn.set_defaults(func=cmd_pin)

    up = commands.add_parser("unpin", help="let automatic switching resume")
    _add_config(up)
    up.add_argument("group", metavar="GROUP")
    up.set_defaults(func=cmd_unpin)

    hi = commands.add_parser("history", help="the audit log: switches, drift, all-down, ...")
    _add_config(hi)
    hi.add_argument("--group", metavar="G", help="only this group")
    hi.add_argument(
        "--since", default="24h", metavar="DURATION", help="how far back (default: 24h)"
    )
    hi.add_argument("--json", action="store_true", help="machine-readable output")
    hi.set_defaults(func=cmd_history)

    ex = commands.add_parser("explain", help="why a group is on its endpoint now")
    _add_config(ex)
    ex.add_argument("group", metavar="GROUP")
    ex.set_defaults(func=cmd_explain)

    dm = commands.add_parser("demo", help="an outage drill on loopback: nothing to configure")
    dm.add_argument(
        "--keep-running",
        action="store_true",
        help="leave the simulated world up afterwards, with a ready config file",
    )
    dm.add_argument("--dir", metavar="DIR", help="where --keep-running writes its config")
    dm.set_defaults(func=cmd_demo)

    dr = commands.add_parser("drill", help="a group's real config against simulated endpoints")
    _add_config(dr)
    dr.add_argument("group", metavar="GROUP")
    dr.set_defaults(func=cmd_drill)

    alert_commands = _nested(commands, "alerts", "alert targets")
    at = alert_commands.add_parser("test", help="send a test notification to every target")
    _add_config(at)
    at.set_defaults(func=cmd_alerts_test)

    model_commands = _nested(commands, "models", "Convai's model groups (/llm-models/*)")
    ml = model_commands.add_parser("list", help="list registered groups")
    _add_config(ml)
    ml.add_argument("--json", action="store_true", help="machine-readable output")
    ml.set_defaults(func=cmd_models)
    for action, text in (
        ("register", "register a configured group"),
        ("update", "point a group at an endpoint"),
    ):
        mp = model_commands.add_parser(action, help=text)
        _add_config(mp)
        mp.add_argument("group", metavar="GROUP")
        mp.add_argument("--endpoint", metavar="NAME", help="configured endpoint (default: primary)")
        mp.add_argument("--display-name", metavar="TEXT")
        mp.set_defaults(func=cmd_models)
        if action == "register":
            mp.add_argument("--model-name", metavar="NAME")
            mp.add_argument("--uncensored", action="store_true")
    md = model_commands.add_parser("deregister", help="remove a group from Convai")
    _add_config(md)
    md.add_argument("group", metavar="GROUP")
    md.add_argument("--yes", action="store_true", help="confirm: characters on it stop working")
    md.set_defaults(func=cmd_models)

    cfg_commands = _nested(commands, "config", "config file commands", "subcommand")
    validate = cfg_commands.add_parser("validate", help="load and validate the config")
    _add_config(validate)
    validate.set_defaults(func=cmd_config_validate)

    db_commands = _nested(commands, "db", "database commands", "subcommand")
    upgrade = db_commands.add_parser("upgrade", help="apply database migrations")
    _add_config(upgrade)
    upgrade.set_defaults(func=cmd_db_upgrade)
    return parser


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"convai-monitor: error: {redact(message)}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    # One-shot commands print their answer on stdout and their failure as one line on
    # stderr; only errors beyond that are logged (to stderr). `run` sets its own level.
    setup_logging(getattr(args, "log_level", "error"))
    from monitor.convai import ConvaiError
    from monitor.ops import OperatorError
    from monitor.runtime.failover import StartupError
    from monitor.server import ListenError

    try:
        return func(args)
    except ConfigError as exc:
        where = f"{exc.source}: " if exc.source else ""
        for problem in exc.problems:
            print(f"convai-monitor: config error: {where}{redact(problem)}", file=sys.stderr)
        return EXIT_USAGE
    except (UsageError, StoreError, StartupError, OperatorError, ListenError) as exc:
        return _fail(str(exc))
    except ConvaiError as exc:
        return _fail(str(exc), EXIT_UNHEALTHY)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `status | head`: the reader has what it wanted. Point stdout at /dev/null so the
        # interpreter's final flush does not raise again (the recipe in Python's docs).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK

"""Command line: `convai-monitor COMMAND`. User mistakes end in one line and exit 2."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from monitor import __version__
from monitor.config import CONFIG_ENV, Config, ConfigError, load_config
from monitor.logs import setup_logging
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
    _out(json.dumps(data, indent=2, sort_keys=False))


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config)


# --- commands ---------------------------------------------------------------------------


def cmd_config_validate(args: argparse.Namespace) -> int:
    config = _config(args)
    endpoints = sum(len(g.endpoints) for g in config.groups)
    _out(f"config ok: {len(config.groups)} group(s), {endpoints} endpoint(s)")
    return EXIT_OK


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from monitor.app import open_store

    config = _config(args)
    store = open_store(config, migrate=True)
    store.close()
    _out(f"database at the newest schema: {store.path or 'external database'}")
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from monitor.app import check
    from monitor.report import check_report, fmt_ms, table

    config = _config(args)
    if args.group is not None and config.group(args.group) is None:
        raise UsageError(f"no group named {args.group!r} in the config")
    results = asyncio.run(check(config, args.group))
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
    from monitor.report import fmt_ms, fmt_pct, status_report, table

    config = _config(args)
    store = open_store(config, migrate=False)
    try:
        if not store.schema_current():
            raise StoreError(
                "database has no current schema: run `convai-monitor db upgrade -c FILE` "
                "or start the daemon once"
            )
        report = status_report(config, store, time.time())
    finally:
        store.close()
    if args.json:
        _json(report)
        return EXIT_OK
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
    _out(
        table(
            ["GROUP", "ENDPOINT", "HEALTH", "LAST", "AT", "UP 1H", "UP 24H", "P50 1H", "P95 1H"],
            rows,
        )
    )
    _out("(* = active endpoint)")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from monitor.app import Daemon, open_store

    config = _config(args)
    setup_logging(args.log_level)
    store = open_store(config, migrate=True)
    try:
        asyncio.run(Daemon(config, store, dry_run=args.dry_run, register=args.register).run())
    finally:
        store.close()
    return EXIT_OK


# --- parser -----------------------------------------------------------------------------


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
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
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

    cfg = commands.add_parser("config", help="config file commands")
    cfg_commands = cfg.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", parser_class=_Parser)
    cfg_commands.required = True
    validate = cfg_commands.add_parser("validate", help="load and validate the config")
    _add_config(validate)
    validate.set_defaults(func=cmd_config_validate)

    db = commands.add_parser("db", help="database commands")
    db_commands = db.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", parser_class=_Parser)
    db_commands.required = True
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
    from monitor.convai import ConvaiError
    from monitor.runtime.failover import StartupError

    try:
        return func(args)
    except ConfigError as exc:
        where = f"{exc.source}: " if exc.source else ""
        for problem in exc.problems:
            print(f"convai-monitor: config error: {where}{redact(problem)}", file=sys.stderr)
        return EXIT_USAGE
    except (UsageError, StoreError, StartupError) as exc:
        return _fail(str(exc))
    except ConvaiError as exc:
        return _fail(str(exc), EXIT_UNHEALTHY)
    except KeyboardInterrupt:
        return 130

"""Config: YAML with ${VAR} interpolation, validated whole at load.

Every problem is reported with its path, all at once, so an operator fixes the file in one
pass. Secrets are resolved here (env or file) and registered with the redactor before
anything can log them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from monitor.durations import parse_duration
from monitor.redact import redactor

CONFIG_ENV = "CONVAI_MONITOR_CONFIG"
DEFAULT_CONVAI_URL = "https://api.convai.com"


class ConfigError(Exception):
    """A config that cannot be used; `problems` are `path: message` lines."""

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = problems
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(where + "; ".join(problems))


Duration = Annotated[float, BeforeValidator(parse_duration)]


def _check_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not a URL (expected http:// or https://)")
    if parts.username or parts.password:
        # Credentials in a URL would be stored and printed as part of the URL; keys
        # belong in api_key / api_key_file, which are redacted everywhere.
        raise ValueError("must not carry credentials; use api_key or api_key_file")
    return value.rstrip("/")


Url = Annotated[str, BeforeValidator(lambda v: _check_url(v) if isinstance(v, str) else v)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConvaiConfig(Strict):
    api_key: SecretStr
    base_url: Url = DEFAULT_CONVAI_URL
    timeout: Duration = 10.0
    # Total time one Convai call may spend retrying timeouts, 429 and 5xx.
    retry_budget: Duration = 30.0
    # How often `list` is read to learn which endpoint each group is on (drift detection).
    sync_interval: Duration = 300.0
    # Convai unreachable this long is paged (critical): no group can be failed over then.
    # Shorter outages are common (a deploy, a blip) and cost nothing while nothing is down.
    unreachable_grace: Duration = 120.0

    @field_validator("api_key")
    @classmethod
    def _key_not_empty(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("must not be empty")
        return value


class StorageConfig(Strict):
    url: str = "sqlite:///convai-monitor.db"
    retention: Duration = 30 * 86400.0
    # Hourly rollups answer uptime and percentiles for long windows after raw rows are gone.
    rollup_retention: Duration = 400 * 86400.0

    @field_validator("url")
    @classmethod
    def _sqlalchemy_url(cls, value: str) -> str:
        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError("not a database URL (e.g. sqlite:///convai-monitor.db)") from None
        backend = url.get_backend_name()
        driver = url.drivername.partition("+")[2]
        if backend == "sqlite":
            return value
        if backend != "postgresql":
            raise ValueError(
                f"{backend} is not supported: use sqlite:///FILE or "
                "postgresql+psycopg://USER@HOST:5432/DB"
            )
        if "+" in url.drivername and driver != "psycopg":
            raise ValueError(
                f"PostgreSQL driver {driver} is not supported: "
                "use postgresql+psycopg:// (psycopg 3)"
            )
        if importlib.util.find_spec("psycopg") is None:
            raise ValueError(
                "PostgreSQL needs the psycopg driver: pip install 'convai-monitor[postgres]'"
            )
        # `postgresql://` alone means psycopg2 to SQLAlchemy; the daemon ships psycopg 3.
        return url.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def _percent(value: Any) -> Any:
    """`30%`, `0.3` or `30` (percent when over 1) to a fraction."""
    if isinstance(value, str):
        text = value.strip()
        try:
            number = float(text.removesuffix("%"))
        except ValueError:
            raise ValueError(f"not a percentage: {value!r} (e.g. 30%)") from None
        return number / 100.0 if text.endswith("%") or number > 1 else number
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 1:
        return value / 100.0
    return value


class FailureRateConfig(Strict):
    """Down when this share of the probes in the window failed (brownouts)."""

    window: Duration = 60.0
    # Fewer probes than this in the window say too little to judge a rate on.
    min_probes: int = Field(default=20, ge=2, le=10_000)
    threshold: Annotated[float, BeforeValidator(_percent)] = Field(default=0.30, gt=0.0, le=1.0)


class Policy(Strict):
    """Every key here may be set under `defaults` and overridden per group."""

    interval: Duration = 30.0
    fast_interval: Duration = 2.0
    timeout: Duration = 15.0
    fall: int = Field(default=3, ge=1, le=100)
    rise: int = Field(default=2, ge=1, le=100)
    latency_threshold: Duration | None = None
    # Reasoning models spend tokens before they answer; 1 token makes them fail (LiteLLM).
    max_tokens: int = Field(default=16, ge=1, le=4096)
    # Ask for a streamed answer (what a chat UI does); the probe then passes on the first
    # chunk that carries a choice, and its latency is the time to that first chunk.
    stream: bool = False
    prompt: str = Field(default="Reply with the single word OK.", min_length=1, max_length=2000)
    failback: Literal["auto", "manual"] = "auto"
    failback_after: Duration = 300.0
    min_dwell: Duration = 120.0
    max_switches_per_hour: int = Field(default=4, ge=1, le=60)
    failure_rate: FailureRateConfig = FailureRateConfig()
    # What makes the active endpoint worth leaving: failed probes, and (when listed) a
    # window p95 latency over latency_threshold.
    failover_on: tuple[Literal["errors", "latency"], ...] = Field(default=("errors",), min_length=1)
    # Learned deadline: a probe unanswered after max(deadline_floor, deadline_factor x the
    # endpoint's p99 over the last hour) fails as a timeout then (never later than timeout),
    # so a hang is detected at the pace of the endpoint's own normal, not of `timeout`.
    deadline_floor: Duration = 2.0
    deadline_factor: float = Field(default=4.0, ge=1.0, le=100.0)

    @model_validator(mode="after")
    def _cadence(self) -> Policy:
        problem = cadence_problem(
            self.interval, self.fast_interval, self.timeout, self.deadline_floor
        )
        if problem:
            raise ValueError(problem)
        if "errors" not in self.failover_on:
            raise ValueError("failover_on must include errors (latency is the optional extra)")
        if "latency" in self.failover_on and self.latency_threshold is None:
            raise ValueError("failover_on: latency needs latency_threshold")
        return self


def cadence_problem(
    interval: float, fast_interval: float, timeout: float, deadline_floor: float
) -> str | None:
    # `timeout` may be longer than `interval`: once an endpoint has history a probe is
    # failed at its learned deadline and the next one starts then, while the request
    # waits on for its answer. min(floor, timeout) is the shortest that deadline can be;
    # at or past the interval every probe of a hang would overrun its slot.
    if min(timeout, deadline_floor) >= interval:
        return "timeout or deadline_floor must be shorter than interval"
    if fast_interval > interval:
        return "fast_interval must not be longer than interval"
    return None


def duplicates(names: list[Any]) -> list[str]:
    return sorted({str(n) for n in names if names.count(n) > 1})


POLICY_KEYS = frozenset(Policy.model_fields)


class EndpointConfig(Strict):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    base_url: Url
    api_key: SecretStr | None = None
    api_key_file: Path | None = None
    # What the provider charges per 1,000 tokens (any currency): probes' tokens become money
    # in status. Unset: tokens only.
    price_per_1k_tokens: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _one_key(self) -> EndpointConfig:
        if (self.api_key is None) == (self.api_key_file is None):
            raise ValueError("set exactly one of api_key or api_key_file")
        return self

    @property
    def key(self) -> str:
        """The resolved key (a file's content is read at load)."""
        assert self.api_key is not None, "keys from files are resolved at load"
        return self.api_key.get_secret_value()


class GroupConfig(Strict):
    model_group_name: str = Field(min_length=1, max_length=200)
    model_name: str | None = Field(default=None, min_length=1)
    endpoints: list[EndpointConfig] = Field(min_length=1)
    # Built by the loader from `defaults` plus the group's own policy keys.
    policy: Policy = Policy()

    @model_validator(mode="after")
    def _unique(self) -> GroupConfig:
        dupes = duplicates([e.name for e in self.endpoints])
        if dupes:
            raise ValueError(f"endpoint names must be unique: {', '.join(dupes)}")
        urls = [normalize_url(e.base_url) for e in self.endpoints]
        if len(set(urls)) != len(urls):
            # The active endpoint is learnt by matching Convai's base_url; two endpoints
            # with one URL could never be told apart.
            raise ValueError("endpoint base_urls must be unique within a group")
        return self

    def endpoint(self, name: str) -> EndpointConfig | None:
        return next((e for e in self.endpoints if e.name == name), None)

    @property
    def primary(self) -> EndpointConfig:
        return self.endpoints[0]


class ProbeLimits(Strict):
    # Bound the probes in flight and size the pool to match: one shared client with
    # hundreds of requests in flight collapses into pool timeouts (DESIGN.md).
    max_in_flight: int = Field(default=100, ge=1, le=2000)
    # A response body is read up to this many bytes; more is a bad response.
    max_body_bytes: int = Field(default=1 << 20, ge=1024)


def _host_name() -> str:
    # The host name names the vantage unless the config does; cut to a valid name.
    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname()).strip(".-_")
    return name[:100] or "convai-monitor"


class InstanceConfig(Strict):
    # This copy's name: the vantage its probe results are stored under, the holder of the
    # leader lease, and part of the probe's User-Agent. Unique per instance.
    name: str = Field(
        default_factory=_host_name,
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
    )


class HaConfig(Strict):
    # How long the leader lease lasts without renewal; renewed every third of it, so two
    # missed renewals still leave it held. A dead leader is replaced within this time.
    lease_ttl: Duration = Field(default=15.0, ge=1.0, le=600.0)
    # How many vantages (instances with fresh results) must judge an endpoint down before
    # the leader acts on it. Unset: a majority of the fresh vantages (one of one, two of
    # three). A fixed number is never lowered: with fewer fresh vantages than that,
    # nothing is judged down.
    quorum: int | None = Field(default=None, ge=1, le=100)


class ServerAuth(Strict):
    """Basic auth in front of the status page and its API (never the health checks)."""

    username: str = Field(min_length=1, max_length=200, pattern=r"^[^:\s]+$")
    password: SecretStr | None = None
    password_file: Path | None = None

    @model_validator(mode="after")
    def _one_password(self) -> ServerAuth:
        if (self.password is None) == (self.password_file is None):
            raise ValueError("set exactly one of password or password_file")
        if self.password is not None and not self.password.get_secret_value():
            raise ValueError("password must not be empty")
        return self

    @property
    def secret(self) -> str:
        assert self.password is not None, "a password file is read at load"
        return self.password.get_secret_value()


class ServerConfig(Strict):
    # HOST:PORT for /healthz, /readyz, /metrics, the status page (/) and its API (/api/*);
    # a bare :PORT is loopback. Unset: no HTTP server.
    listen: str | None = None
    auth: ServerAuth | None = None

    @model_validator(mode="after")
    def _auth_needs_listen(self) -> ServerConfig:
        if self.auth is not None and self.listen is None:
            raise ValueError("auth is set but listen is not: there is no page to protect")
        return self

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        from monitor.server import parse_listen

        if value is not None:
            parse_listen(value)
        return value


Severity = Literal["info", "warning", "critical"]


class AlertTarget(Strict):
    """One apprise URL. The URL is a secret: it is never printed, only its scheme."""

    url: SecretStr
    # How on-call and the CLI call this target ("pagerduty", "slack-oncall"); the URL
    # itself is never shown.
    name: str | None = Field(
        default=None, min_length=1, max_length=60, pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._-]*$"
    )
    min_severity: Severity = "info"

    @field_validator("url")
    @classmethod
    def _apprise_understands(cls, value: SecretStr) -> SecretStr:
        from monitor.alerts.targets import check_url  # apprise is slow to import

        check_url(value.get_secret_value())
        return value


class AlertsConfig(Strict):
    targets: list[AlertTarget] = Field(default_factory=list)
    # Repeat an open critical incident this often until it is resolved.
    reminder_interval: Duration = 1800.0
    # A delivery is retried with backoff for this long, then marked failed.
    retry_for: Duration = 900.0
    # Prefix on every message, e.g. the environment's name.
    prefix: str | None = Field(default=None, max_length=100)


class Config(Strict):
    convai: ConvaiConfig
    storage: StorageConfig = StorageConfig()
    defaults: Policy = Policy()
    probes: ProbeLimits = ProbeLimits()
    dry_run: bool = False
    groups: list[GroupConfig] = Field(min_length=1)
    alerts: AlertsConfig = AlertsConfig()
    server: ServerConfig = ServerConfig()
    instance: InstanceConfig = InstanceConfig()
    ha: HaConfig = HaConfig()

    @model_validator(mode="after")
    def _unique_target_names(self) -> Config:
        dupes = duplicates([t.name for t in self.alerts.targets if t.name])
        if dupes:
            raise ValueError(f"alerts.targets names must be unique: {', '.join(dupes)}")
        return self

    @model_validator(mode="after")
    def _unique_groups(self) -> Config:
        dupes = duplicates([g.model_group_name for g in self.groups])
        if dupes:
            raise ValueError(f"model_group_name must be unique: {', '.join(dupes)}")
        return self

    def group(self, name: str) -> GroupConfig | None:
        return next((g for g in self.groups if g.model_group_name == name), None)

    def secrets(self) -> Iterator[str]:
        from monitor.alerts.targets import secret_parts

        yield self.convai.api_key.get_secret_value()
        if self.server.auth is not None:
            yield self.server.auth.secret
        # A database password in storage.url is as secret as any key.
        password = make_url(self.storage.url).password
        if password:
            yield str(password)
        for group in self.groups:
            for endpoint in group.endpoints:
                yield endpoint.key
        for target in self.alerts.targets:
            yield from secret_parts(target.url.get_secret_value())


def normalize_url(url: str) -> str:
    """Compare URLs as Convai and httpx would: case-insensitive scheme/host, no trailing /."""
    parts = urlsplit(url.strip())
    host = (parts.hostname or "").lower()
    port = parts.port
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    netloc = host if port is None or port == default else f"{host}:{port}"
    path = parts.path.rstrip("/")
    query = f"?{parts.query}" if parts.query else ""
    return f"{parts.scheme.lower()}://{netloc}{path}{query}"


def display_url(url: str | None) -> str:
    """A URL fit for messages: no credentials, no query string (tokens hide there)."""
    if url is None:
        return "nothing"
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}" + ("?..." if parts.query else "")


# --- loading ---------------------------------------------------------------------------

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(node: Any, path: str, env: dict[str, str], problems: list[str]) -> Any:
    if isinstance(node, dict):
        return {k: _interpolate(v, _join(path, str(k)), env, problems) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, f"{path}[{i}]", env, problems) for i, v in enumerate(node)]
    if not isinstance(node, str):
        return node

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        problems.append(f"{path or '<root>'}: environment variable {name} is not set")
        return ""

    return _VAR.sub(substitute, node)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _loc_to_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out = _join(out, part)
    return out


def _message(error: Any) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required"
    msg = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    return msg


def _split_policy(data: dict[str, Any]) -> dict[int, set[str]]:
    """Move each group's policy keys under `policy`, on top of `defaults`.

    Returns, per group, the keys the group set itself, so an error in a default is
    reported once (under `defaults`) and not again for every group.
    """
    own_keys: dict[int, set[str]] = {}
    defaults = data.get("defaults")
    base = (
        {k: v for k, v in defaults.items() if k in POLICY_KEYS}
        if isinstance(defaults, dict)
        else {}
    )
    groups = data.get("groups")
    if not isinstance(groups, list):
        return own_keys
    for index, group in enumerate(groups):
        if not isinstance(group, dict):
            continue
        own = {k: group.pop(k) for k in list(group) if k in POLICY_KEYS}
        own_keys[index] = set(own)
        if "policy" in group:
            # `policy` is internal; a user who writes it meant a policy key by another name.
            group["policy!"] = group.pop("policy")
        group["policy"] = {**base, **own}
    return own_keys


def _translate(loc: tuple[int | str, ...], own_keys: dict[int, set[str]]) -> str | None:
    """Map an internal error location back to what the user wrote, or None to drop it."""
    if len(loc) >= 3 and loc[0] == "groups" and isinstance(loc[1], int) and loc[2] == "policy":
        rest = loc[3:]
        key = rest[0] if rest else None
        if key is None:
            # A cross-field policy rule: report it on the group if the group set any key.
            return _loc_to_path(loc[:2]) if own_keys.get(loc[1]) else None
        if key not in own_keys.get(loc[1], set()):
            return None
        return _loc_to_path((*loc[:2], *rest))
    if len(loc) >= 3 and loc[0] == "groups" and loc[2] == "policy!":
        return _loc_to_path((*loc[:2], "policy"))
    return _loc_to_path(loc)


def _cadence_of(policy: Any) -> str | None:
    if not isinstance(policy, dict):
        return None
    base = Policy()
    try:
        interval, fast, timeout, floor = (
            parse_duration(policy[k]) if k in policy else getattr(base, k)
            for k in ("interval", "fast_interval", "timeout", "deadline_floor")
        )
    except (ValueError, TypeError):
        return None  # the bad duration itself is reported at its own path
    return cadence_problem(interval, fast, timeout, floor)


def _cross_checks(data: dict[str, Any], own_keys: dict[int, set[str]]) -> list[str]:
    """The cross-field rules, checked on the raw data.

    Pydantic runs a model's own rules only once its fields are valid, so an unknown key
    elsewhere would hide `timeout >= interval` or a duplicate name until the next run.
    These are run whenever validation fails, so the operator sees everything at once.
    """
    found: list[str] = []
    defaults = data.get("defaults")
    if isinstance(defaults, dict):
        problem = _cadence_of({k: v for k, v in defaults.items() if k in POLICY_KEYS})
        if problem:
            found.append(f"defaults: {problem}")
    groups = data.get("groups")
    if not isinstance(groups, list):
        return found
    for index, group in enumerate(groups):
        if not isinstance(group, dict):
            continue
        problem = _cadence_of(group.get("policy"))
        if problem and own_keys.get(index):
            found.append(f"groups[{index}]: {problem}")
        endpoints = group.get("endpoints")
        if not isinstance(endpoints, list):
            continue
        items = [e for e in endpoints if isinstance(e, dict)]
        dupes = duplicates([e["name"] for e in items if isinstance(e.get("name"), str)])
        if dupes:
            found.append(f"groups[{index}]: endpoint names must be unique: {', '.join(dupes)}")
        try:
            urls = [
                normalize_url(e["base_url"]) for e in items if isinstance(e.get("base_url"), str)
            ]
        except ValueError:
            urls = []  # a malformed URL is reported at its own path
        if duplicates(urls):
            found.append(f"groups[{index}]: endpoint base_urls must be unique within a group")
    names = [g.get("model_group_name") for g in groups if isinstance(g, dict)]
    dupes = duplicates([n for n in names if isinstance(n, str)])
    if dupes:
        found.append(f"<root>: model_group_name must be unique: {', '.join(dupes)}")
    return found


def _resolve_key_files(config: Config, problems: list[str]) -> Config:
    groups = []
    for gi, group in enumerate(config.groups):
        endpoints = []
        for ei, endpoint in enumerate(group.endpoints):
            if endpoint.api_key_file is not None:
                path = f"groups[{gi}].endpoints[{ei}].api_key_file"
                try:
                    key = endpoint.api_key_file.read_text(encoding="utf-8").strip()
                except OSError as exc:
                    problems.append(f"{path}: cannot read {endpoint.api_key_file}: {exc.strerror}")
                    key = ""
                else:
                    if not key:
                        problems.append(f"{path}: {endpoint.api_key_file} is empty")
                endpoint = endpoint.model_copy(update={"api_key": SecretStr(key)})
            endpoints.append(endpoint)
        groups.append(group.model_copy(update={"endpoints": endpoints}))
    server = config.server
    if server.auth is not None and server.auth.password_file is not None:
        path, file = "server.auth.password_file", server.auth.password_file
        try:
            password = file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            problems.append(f"{path}: cannot read {file}: {exc.strerror}")
            password = ""
        else:
            if not password:
                problems.append(f"{path}: {file} is empty")
        auth = server.auth.model_copy(update={"password": SecretStr(password)})
        server = server.model_copy(update={"auth": auth})
    return config.model_copy(update={"groups": groups, "server": server})


def _yaml_problem(exc: yaml.YAMLError, text: str) -> str:
    """One line: where, what, and what to do about the mistakes people actually make."""
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    problem = str(getattr(exc, "problem", None) or "invalid YAML")
    context = str(getattr(exc, "context", None) or "")
    line = text.splitlines()[mark.line] if mark and mark.line < len(text.splitlines()) else ""
    if "\\t" in problem or "\t" in problem:  # PyYAML names the tab as "\\t"
        problem = "a tab character: YAML indents with spaces, not tabs; use spaces"
    elif "flow" in context and "${" in line:
        # `{name: a, api_key: ${KEY}}`: inside {...} the braces of ${KEY} end the mapping.
        problem += (
            '; a ${VAR} inside a {...} mapping must be quoted (api_key: "${VAR}") '
            "or the mapping written in block style (one key per line)"
        )
    return f"{where}{problem}"


def parse_config(text: str, source: str | None = None, env: dict[str, str] | None = None) -> Config:
    env = dict(os.environ) if env is None else env
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_problem(exc, text)], source) from None
    if not isinstance(raw, dict):
        raise ConfigError(["<root>: expected a mapping of sections (convai, groups, ...)"], source)
    problems: list[str] = []
    data = _interpolate(raw, "", env, problems)
    unset = list(problems)
    own_keys = _split_policy(data)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            path = _translate(tuple(error["loc"]), own_keys)
            # An unset variable was already reported at this path; its empty stand-in
            # would only add a confusing second error.
            if path is not None and not any(p.startswith(f"{path}: ") for p in unset):
                line = f"{path or '<root>'}: {_message(error)}"
                if line not in problems:
                    problems.append(line)
        problems.extend(p for p in _cross_checks(data, own_keys) if p not in problems)
        # Every problem at once: a missing database directory too, not only on the next run.
        storage = data.get("storage")
        url = storage.get("url") if isinstance(storage, dict) else None
        reported = any(p.startswith("storage.url: ") for p in problems)
        if not reported and (url is None or isinstance(url, str)):
            with contextlib.suppress(ArgumentError):  # a bad URL is reported above
                problems.extend(url_problems(url or StorageConfig().url))
        raise ConfigError(problems or ["invalid config"], source) from None
    config = _resolve_key_files(config, problems)
    if problems:
        raise ConfigError(problems, source)
    redactor.register(*config.secrets())
    return config


def load_config(path: str | os.PathLike[str] | None) -> Config:
    if path is None:
        path = os.environ.get(CONFIG_ENV) or None
    if path is None:
        raise ConfigError([f"no config file: pass -c FILE or set {CONFIG_ENV}"])
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{file}: no such file"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{file}: is a directory, not a config file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError([f"{file}: cannot read: {reason}"]) from None
    return parse_config(text, source=str(file))


def storage_problems(config: Config) -> list[str]:
    """Can the database be opened where storage.url says? (SQLite only: a server database
    is checked when it is connected to.) Catches `sqlite:///var/lib/...`, which is a path
    relative to the working directory, before `db upgrade` fails on it."""
    return url_problems(config.storage.url)


def url_problems(storage_url: str) -> list[str]:
    url = make_url(storage_url)
    if not url.drivername.startswith("sqlite") or url.database in (None, "", ":memory:"):
        return []
    path = Path(url.database or "")
    hint = (
        ""
        if path.is_absolute()
        else (
            f" (sqlite:///{path} is relative to the working directory {Path.cwd()}; "
            f"an absolute path takes four slashes: sqlite:////{path})"
        )
    )
    folder = path.absolute().parent
    if not folder.is_dir():
        return [f"storage.url: directory {folder} does not exist{hint}"]
    if not os.access(folder, os.W_OK | os.X_OK):
        return [f"storage.url: directory {folder} is not writable by this user{hint}"]
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        return [f"storage.url: {path.absolute()} is not readable and writable by this user"]
    return []


@dataclass(frozen=True, slots=True)
class Target:
    """One endpoint of one group, resolved: what a probe needs."""

    group: str
    endpoint: str
    base_url: str
    api_key: str
    model: str
    policy: Policy
    priority: int  # 0 is the primary

    def __repr__(self) -> str:
        # Never show the key, even in a debugger or a traceback.
        return f"Target({self.group}/{self.endpoint} {self.base_url})"


def build_targets(config: Config, models: dict[str, str] | None = None) -> list[Target]:
    """Resolve every endpoint of every group into a probe target.

    `models` is the model each group is probed with, as Convai lists it (or as it was last
    stored); it wins over the config's model_name, which is only a cross-check (Convai
    sends its own model_name, and update cannot change it). A group with neither is an
    error the caller reports.
    """
    models = models or {}
    targets = []
    for group in config.groups:
        model = models.get(group.model_group_name) or group.model_name
        if model is None:
            raise ConfigError(
                [f"{group.model_group_name}: no model_name in config and Convai lists none"]
            )
        for priority, endpoint in enumerate(group.endpoints):
            targets.append(
                Target(
                    group=group.model_group_name,
                    endpoint=endpoint.name,
                    base_url=endpoint.base_url,
                    api_key=endpoint.key,
                    model=model,
                    policy=group.policy,
                    priority=priority,
                )
            )
    return targets

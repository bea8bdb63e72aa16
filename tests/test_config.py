"""Config loading: interpolation, durations, defaults, and every error with its path."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.config import ConfigError, load_config, normalize_url, parse_config
from monitor.durations import parse_duration

REPO = Path(__file__).resolve().parent.parent

GOOD = """
convai:
  api_key: ${CONVAI_API_KEY}
storage:
  url: sqlite:///x.db
  retention: 7d
defaults:
  interval: 30s
  fast_interval: 2s
  timeout: 15s
groups:
  - model_group_name: my-turbo
    model_name: gpt-4o-mini
    fall: 5
    endpoints:
      - name: vllm
        base_url: https://vllm.internal/v1/
        api_key: ${VLLM_API_KEY}
      - name: openai
        base_url: https://api.openai.com/v1
        api_key: ${OPENAI_KEY:-sk-default-value}
"""
ENV = {"CONVAI_API_KEY": "convai-secret", "VLLM_API_KEY": "vllm-secret"}


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, env=ENV if env is None else env)
    return info.value.problems


def test_good_config_resolves_defaults_overrides_and_env() -> None:
    config = parse_config(GOOD, env=ENV)
    assert config.convai.base_url == "https://api.convai.com"
    assert config.convai.api_key.get_secret_value() == "convai-secret"
    assert config.storage.retention == 7 * 86400
    group = config.groups[0]
    assert group.policy.fall == 5  # the group's own override
    assert group.policy.rise == 2  # built-in default
    assert group.policy.interval == 30.0  # from defaults
    assert group.endpoints[0].base_url == "https://vllm.internal/v1"  # trailing slash dropped
    assert group.endpoints[1].key == "sk-default-value"
    assert group.primary.name == "vllm"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("30s", 30),
        ("5m", 300),
        ("2h", 7200),
        ("30d", 2592000),
        ("0.25", 0.25),
        (3, 3.0),
    ],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "5x", "-1s", "0", "abc", True, None, "1e3"])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def test_every_problem_reported_with_its_path() -> None:
    text = """
convai:
  api_key: ${MISSING_VAR}
  colour: blue
storage:
  retention: 30x
defaults:
  fall: 0
groups:
  - model_group_name: g
    endpoints:
      - name: a
        base_url: nope
        api_key: k-1234567
      - name: b
        base_url: http://ok.example/v1
  - model_group_name: h
    endpoints: []
"""
    found = problems(text, env={})
    assert found == [
        "convai.api_key: environment variable MISSING_VAR is not set",
        "convai.colour: unknown key",
        "storage.retention: not a duration: '30x' (use e.g. 500ms, 30s, 5m, 2h, 30d)",
        "defaults.fall: Input should be greater than or equal to 1",
        "groups[0].endpoints[0].base_url: not a URL (expected http:// or https://)",
        "groups[0].endpoints[1]: set exactly one of api_key or api_key_file",
        "groups[1].endpoints: List should have at least 1 item after validation, not 0",
    ]


def test_group_override_errors_point_at_the_group() -> None:
    text = GOOD.replace("    fall: 5\n", "    fall: many\n    bogus: 1\n")
    found = problems(text)
    assert (
        "groups[0].fall: Input should be a valid integer, unable to parse string as an integer"
        in found
    )
    assert "groups[0].bogus: unknown key" in found


def test_cross_field_rules() -> None:
    text = GOOD.replace(
        "    fall: 5\n", "    interval: 10s\n    timeout: 20s\n    deadline_floor: 10s\n"
    )
    assert problems(text) == ["groups[0]: timeout or deadline_floor must be shorter than interval"]
    # A timeout past the interval is fine: a hang is failed at its learned deadline.
    longer = parse_config(
        GOOD.replace("    fall: 5\n", "    interval: 10s\n    timeout: 15s\n"), env=ENV
    )
    assert (longer.groups[0].policy.interval, longer.groups[0].policy.timeout) == (10.0, 15.0)


def test_duplicate_names_and_urls() -> None:
    dup_endpoint = GOOD.replace("name: openai", "name: vllm")
    assert problems(dup_endpoint) == ["groups[0]: endpoint names must be unique: vllm"]
    dup_url = GOOD.replace("https://api.openai.com/v1", "https://VLLM.internal/v1")
    assert problems(dup_url) == ["groups[0]: endpoint base_urls must be unique within a group"]
    body = GOOD.split("groups:\n", 1)[1]
    dup_group = GOOD + body
    assert problems(dup_group) == ["<root>: model_group_name must be unique: my-turbo"]


def test_credentials_in_url_rejected() -> None:
    text = GOOD.replace("https://api.openai.com/v1", "https://user:pw@api.openai.com/v1")
    assert problems(text) == [
        "groups[0].endpoints[1].base_url: must not carry credentials; use api_key or api_key_file"
    ]


def test_bad_yaml_is_one_line_with_position() -> None:
    found = problems("convai: [unclosed\n")
    assert len(found) == 1
    assert found[0].startswith("line ")


def test_not_a_mapping() -> None:
    assert problems("- a\n- b\n") == [
        "<root>: expected a mapping of sections (convai, groups, ...)"
    ]


def test_key_file(tmp_path: Path) -> None:
    key = tmp_path / "openai.key"
    key.write_text("sk-from-file\n")
    text = GOOD.replace("api_key: ${OPENAI_KEY:-sk-default-value}", f"api_key_file: {key}")
    config = parse_config(text, env=ENV)
    assert config.groups[0].endpoints[1].key == "sk-from-file"
    missing = GOOD.replace(
        "api_key: ${OPENAI_KEY:-sk-default-value}", f"api_key_file: {tmp_path / 'nope'}"
    )
    assert problems(missing) == [
        f"groups[0].endpoints[1].api_key_file: cannot read {tmp_path / 'nope'}: "
        "No such file or directory"
    ]


def test_dollar_escape() -> None:
    config = parse_config(GOOD.replace("${OPENAI_KEY:-sk-default-value}", "sk-$$literal"), env=ENV)
    assert config.groups[0].endpoints[1].key == "sk-$literal"


def test_load_missing_file_and_env_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.yaml")
    monkeypatch.delenv("CONVAI_MONITOR_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="pass -c FILE or set CONVAI_MONITOR_CONFIG"):
        load_config(None)


def test_example_config_loads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("CONVAI_API_KEY", "VLLM_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.setenv(name, f"example-{name.lower()}")
    monkeypatch.setenv("SLACK_WEBHOOK_URL", "slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ")
    monkeypatch.setenv("PAGERDUTY_URL", "json://127.0.0.1:9/pd")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    (tmp_path / "openai").write_text("sk-example\n")
    config = load_config(REPO / "config" / "convai-monitor.example.yaml")
    assert [g.model_group_name for g in config.groups] == ["my-turbo"]
    assert [t.min_severity for t in config.alerts.targets] == ["info", "critical"]


def test_alert_urls_are_checked_but_never_printed() -> None:
    text = (
        GOOD
        + "alerts:\n  targets:\n    - url: notascheme-secret-token-123\n    - url: zz://secret-token-456\n"
    )
    found = problems(text)
    assert found == [
        "alerts.targets[0].url: not an apprise URL (expected scheme://...)",
        "alerts.targets[1].url: apprise does not understand this zz:// URL",
    ]
    assert not any("secret-token" in line for line in found)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("https://API.openai.com/v1/", "https://api.openai.com/v1"),
        ("https://h:443/v1", "https://h/v1"),
        ("HTTP://h/v1", "http://h/v1"),
    ],
)
def test_normalize_url(a: str, b: str) -> None:
    assert normalize_url(a) == normalize_url(b)


def test_cross_field_rules_come_with_every_other_problem() -> None:
    # An unknown key, a bad URL, timeout and deadline_floor >= interval and duplicate
    # names: one run says all.
    text = GOOD.replace(
        "  timeout: 15s\n", "  timeout: 40s\n  deadline_floor: 40s\n  colour: blue\n"
    )
    text = text.replace("name: openai", "name: vllm")
    text = text.replace("https://api.openai.com/v1", "nope")
    text += text.split("groups:\n", 1)[1]
    found = problems(text)
    assert "defaults.colour: unknown key" in found
    assert "groups[0].endpoints[1].base_url: not a URL (expected http:// or https://)" in found
    assert "defaults: timeout or deadline_floor must be shorter than interval" in found
    assert "groups[0]: endpoint names must be unique: vllm" in found
    assert "<root>: model_group_name must be unique: my-turbo" in found
    assert len(found) == len(set(found))


def test_tab_in_yaml_says_use_spaces() -> None:
    found = problems(GOOD.replace("  interval: 30s", "\tinterval: 30s"))
    assert len(found) == 1
    assert found[0].startswith("line 8, column 1: ")
    assert "use spaces" in found[0]


def test_unquoted_variable_in_flow_mapping_says_quote_or_block_style() -> None:
    text = GOOD.replace(
        "      - name: vllm\n        base_url: https://vllm.internal/v1/\n"
        "        api_key: ${VLLM_API_KEY}\n",
        "      - {name: vllm, base_url: https://vllm.internal/v1, api_key: ${VLLM_API_KEY}}\n",
    )
    found = problems(text)
    assert len(found) == 1
    assert "must be quoted" in found[0]
    assert "block style" in found[0]
    quoted = text.replace("api_key: ${VLLM_API_KEY}}", 'api_key: "${VLLM_API_KEY}"}')
    assert parse_config(quoted, env=ENV).groups[0].endpoints[0].key == "vllm-secret"


def test_readme_configuration_example_validates(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    # The key file is the one thing that must exist on the machine that runs it.
    (tmp_path / "openai").write_text("sk-example-key\n")
    assert "/run/secrets/openai" in example
    example = example.replace("/run/secrets/openai", str(tmp_path / "openai"))
    config = parse_config(example, env={"CONVAI_API_KEY": "k-1234567", "VLLM_API_KEY": "k-7654"})
    assert [e.name for e in config.groups[0].endpoints] == ["vllm", "openai"]


def test_instance_name_defaults_to_the_host_name() -> None:
    import socket

    config = parse_config(GOOD, env=ENV)
    assert config.instance.name == socket.gethostname()[:100]
    named = parse_config(GOOD + "instance:\n  name: probe-east-1\n", env=ENV)
    assert named.instance.name == "probe-east-1"


def test_instance_name_must_be_a_plain_name() -> None:
    found = problems(GOOD + "instance:\n  name: 'east coast'\n")
    assert len(found) == 1
    assert found[0].startswith("instance.name: ")


def test_failure_rate_and_failover_on() -> None:
    config = parse_config(
        GOOD.replace(
            "  timeout: 15s\n", "  timeout: 15s\n  failure_rate: {threshold: 40%}\n"
        ).replace(
            "    fall: 5\n",
            "    fall: 5\n    failure_rate: {window: 2m, min_probes: 20, threshold: 25%}\n"
            "    latency_threshold: 8s\n    failover_on: [errors, latency]\n",
        ),
        env=ENV,
    )
    policy = config.groups[0].policy
    assert policy.failure_rate.window == 120.0
    assert policy.failure_rate.min_probes == 20
    assert policy.failure_rate.threshold == pytest.approx(0.25)
    assert policy.failover_on == ("errors", "latency")
    assert config.defaults.failure_rate.threshold == pytest.approx(0.40)
    no_threshold = GOOD.replace("    fall: 5\n", "    failover_on: [errors, latency]\n")
    assert problems(no_threshold) == ["groups[0]: failover_on: latency needs latency_threshold"]
    bad = GOOD.replace("    fall: 5\n", "    failure_rate: {threshold: lots}\n")
    assert any(
        p.startswith("groups[0].failure_rate.threshold: not a percentage") for p in problems(bad)
    )

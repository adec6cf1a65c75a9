"""Declarative configuration: precedence, validation, secrets, Markdown reference."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

from xsha_common.config import (
    ConfigError,
    ConfigSchema,
    Setting,
    SettingGroup,
    in_range,
    load_config,
    load_config_or_exit,
    logging_settings_group,
    render_markdown_table,
    server_settings_group,
)
from xsha_common.logging import clear_registered_secrets, setup_logging

from .conftest import tmp_file

SCHEMA = ConfigSchema(
    "test_service",
    "XSHA_TEST_",
    "A service for tests.",
    (
        server_settings_group("127.0.0.1:50070", default_metrics_address="127.0.0.1:9070"),
        logging_settings_group(),
        SettingGroup(
            "Test service",
            (
                Setting("poll_interval_seconds", float, 5.0, "How often to poll.", validator=in_range(0.1, 60)),
                Setting("database_password", str, "", "Database password.", secret=True),
                Setting("mode", str, "auto", "Operating mode.", choices=("auto", "manual")),
                Setting("pools", list, ["p1"], "Pools to watch."),
            ),
        ),
    ),
)
OPEN = {"XSHA_TEST_AUTH_DISABLED": "true"}


@pytest.fixture(autouse=True)
def _forget_secrets():
    yield
    clear_registered_secrets()


def test_defaults_apply_when_nothing_is_set() -> None:
    config = load_config(SCHEMA, [], OPEN)
    assert config.listen_address == "127.0.0.1:50070"
    assert config["poll_interval_seconds"] == 5.0
    assert config.pools == ["p1"]
    assert config.tls_cert_file is None
    assert config.source("listen_address") == "default"


def test_precedence_is_default_then_file_then_environment_then_flag(tmp_path: Path) -> None:
    config_file = tmp_file(
        tmp_path,
        "svc.toml",
        'max_workers = 7\npoll_interval_seconds = 2\nmode = "manual"\nlog_level = "DEBUG"\nauth_disabled = true\n',
    )
    environ = {"XSHA_TEST_CONFIG": str(config_file), "XSHA_TEST_POLL_INTERVAL_SECONDS": "3", "XSHA_TEST_MODE": "auto"}
    config = load_config(SCHEMA, ["--mode", "manual", "--no-auth-disabled", "--auth-tokens", "a,b"], environ)
    assert config.max_workers == 7 and config.source("max_workers") == f"config file {config_file}"
    assert config.poll_interval_seconds == 3.0 and config.source("poll_interval_seconds").startswith("environment")
    assert config.mode == "manual" and config.source("mode") == "flag --mode"
    assert config.auth_disabled is False and config.auth_tokens == ["a", "b"]
    assert config.log_level == "DEBUG"
    assert config.shutdown_grace_seconds == 10.0


def test_the_config_flag_wins_over_the_environment_and_yaml_works(tmp_path: Path) -> None:
    toml_file = tmp_file(tmp_path, "a.toml", "max_workers = 3\nauth_disabled = true\n")
    yaml_file = tmp_file(tmp_path, "b.yaml", "max-workers: 4\nauth_disabled: true\npools: [x, y]\n")
    config = load_config(SCHEMA, ["--config", str(yaml_file)], {"XSHA_TEST_CONFIG": str(toml_file)})
    assert config.max_workers == 4 and config.pools == ["x", "y"]


def test_every_problem_is_reported_in_one_error(tmp_path: Path) -> None:
    config_file = tmp_file(tmp_path, "bad.toml", 'max_wrokers = 3\nlog_format = "xml"\n')
    environ = {
        "XSHA_TEST_CONFIG": str(config_file),
        "XSHA_TEST_POLL_INTERVAL_SECONDS": "often",
        "XSHA_TEST_MAX_WORKERS": "0",
        "XSHA_TEST_TLS_CLIENT_CA_FILE": str(tmp_path / "missing-ca.pem"),
    }
    with pytest.raises(ConfigError) as caught:
        load_config(SCHEMA, ["--metrics-address", "nowhere", "--auth-disabled", "--auth-tokens", "t"], environ)
    problems = caught.value.problems
    text = str(caught.value)
    assert text.startswith(f"Invalid configuration for test_service ({len(problems)} problems):")
    expected_fragments = [
        "unknown setting 'max_wrokers'; did you mean 'max_workers'?",
        "poll_interval_seconds (from environment variable XSHA_TEST_POLL_INTERVAL_SECONDS): value 'often' is not "
        "a valid number",
        "max_workers (from environment variable XSHA_TEST_MAX_WORKERS): 0 is out of range",
        "log_format (from config file",
        "missing-ca.pem does not exist",
        "metrics_address (from flag --metrics-address): 'nowhere' is not host:port",
        "tls_client_ca_file (mutual TLS) needs server TLS",
        "auth_disabled is true but auth tokens are configured",
    ]
    for fragment in expected_fragments:
        assert any(fragment in problem for problem in problems), fragment
    assert len(problems) == len(expected_fragments)


def test_authentication_must_be_configured_or_disabled_explicitly() -> None:
    with pytest.raises(ConfigError, match="no auth token"):
        load_config(SCHEMA, [], {})


def test_tls_key_without_cert_and_shared_ports_are_refused(tmp_path: Path) -> None:
    key = tmp_file(tmp_path, "server.key", "not really a key")
    argv = ["--tls-key-file", str(key), "--listen-address", "0.0.0.0:9070"]
    with pytest.raises(ConfigError) as caught:
        load_config(SCHEMA, argv, OPEN)
    assert len(caught.value.problems) == 2
    assert "tls_cert_file and tls_key_file go together" in str(caught.value)
    assert "both use port 9070" in str(caught.value)


def test_secrets_are_redacted_in_repr_errors_and_logs(tmp_path: Path) -> None:
    environ = {"XSHA_TEST_DATABASE_PASSWORD": "s3cr3t-pw", "XSHA_TEST_AUTH_TOKENS": "tok-aaa,tok-bbb"}
    config = load_config(SCHEMA, [], environ)
    assert config.database_password == "s3cr3t-pw"
    for text in (repr(config), str(config), str(config.redacted())):
        assert "s3cr3t-pw" not in text and "tok-aaa" not in text and "tok-bbb" not in text
    assert config.redacted()["auth_tokens"] == "***"
    stream = io.StringIO()
    handler = setup_logging("INFO", "json", stream=stream)
    try:
        logging.getLogger("xsha.test").info("connecting with %s", config.database_password, extra={"t": "tok-aaa"})
    finally:
        logging.getLogger().removeHandler(handler)
    assert "s3cr3t-pw" not in stream.getvalue() and "tok-aaa" not in stream.getvalue()
    assert "***" in stream.getvalue()
    with pytest.raises(ConfigError) as caught:
        load_config(
            ConfigSchema("s", "S_", "", (SettingGroup("g", (Setting("pin", int, 0, "PIN.", secret=True),)),)),
            [],
            {"S_PIN": "12x34"},
        )
    assert "12x34" not in str(caught.value)


def test_booleans_choices_and_lists_parse_from_text() -> None:
    environ = {**OPEN, "XSHA_TEST_LOG_LEVEL": "warning", "XSHA_TEST_POOLS": " a , b,,c "}
    config = load_config(SCHEMA, [], environ)
    assert config.log_level == "WARNING" and config.pools == ["a", "b", "c"]
    with pytest.raises(ConfigError, match="use true or false"):
        load_config(SCHEMA, [], {"XSHA_TEST_AUTH_DISABLED": "maybe"})


def test_load_config_or_exit_prints_the_problems_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        load_config_or_exit(SCHEMA, ["--max-workers", "lots"], OPEN)
    assert caught.value.code == 2
    assert "max_workers (from flag --max-workers): value 'lots' is not a valid integer" in capsys.readouterr().err


def test_markdown_table_lists_every_setting() -> None:
    table = render_markdown_table(SCHEMA)
    lines = table.strip().splitlines()
    assert lines[0] == "| Setting | Environment variable | Flag | Default | Description |"
    assert len(lines) == 2 + 1 + len(SCHEMA.settings)
    assert "| `config` | `XSHA_TEST_CONFIG` | `--config` | (none) |" in table
    assert (
        "| `listen_address` | `XSHA_TEST_LISTEN_ADDRESS` | `--listen-address` | `127.0.0.1:50070` | gRPC listen "
        "address, host:port (port 0 picks a free port). |"
    ) in lines
    assert "| `mode` | `XSHA_TEST_MODE` | `--mode` | `auto` | Operating mode. One of: `auto`, `manual`. |" in lines
    assert "| `auth_disabled` | `XSHA_TEST_AUTH_DISABLED` | `--auth-disabled` | `false` |" in table
    assert "Secret: never logged." in next(line for line in lines if "`database_password`" in line)


def test_schemas_refuse_duplicate_names() -> None:
    group = SettingGroup("g", (Setting("a", str, "", "A."),))
    with pytest.raises(ValueError, match="duplicate setting names: a"):
        ConfigSchema("s", "S_", "", (group, group))
    with pytest.raises(TypeError):
        Setting("b", dict, {}, "B.")

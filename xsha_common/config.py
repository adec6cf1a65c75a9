"""Declarative configuration for both services.

A service declares its settings as `Setting`s in `SettingGroup`s (reusing `server_settings_group()` and
`logging_settings_group()`), bundles them in a `ConfigSchema`, and calls `load_config_or_exit(schema)`. Values are
merged with the precedence default < config file (TOML or YAML) < environment variable < command-line flag, then
validated; every problem is reported at once in a `ConfigError`. Secret values are registered for log redaction
and never shown by `repr`, `str` or `Config.redacted()`.

Names: a setting `max_workers` of a schema with env_prefix `XSHA_HA_` is read from the config file key
`max_workers`, the environment variable `XSHA_HA_MAX_WORKERS` and the flag `--max-workers` unless the setting names
its own `env` / `flag`. The config file path comes from `--config` or `<env_prefix>CONFIG`.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import yaml

from xsha_common.logging import LOG_FORMATS, LOG_LEVELS, REDACTED, register_secret

Validator = Callable[[Any], "str | None"]
"""Returns a problem description (what is wrong and what to do) or None when the value is fine."""
Check = Callable[[Mapping[str, Any]], Iterable[str]]
"""A cross-field rule over the merged values; yields problem descriptions."""

SUPPORTED_TYPES: tuple[type, ...] = (str, int, float, bool, Path, list)
_TYPE_NAMES = {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path", list: "list"}
_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
_FALSE_WORDS = frozenset({"0", "false", "no", "off"})


class ConfigError(Exception):
    """The configuration is invalid; `problems` lists every problem found, each saying what to fix."""

    def __init__(self, problems: Sequence[str], program: str | None = None) -> None:
        self.problems = list(problems)
        self.program = program
        super().__init__(str(self))

    def __str__(self) -> str:
        count = len(self.problems)
        heading = f"Invalid configuration{f' for {self.program}' if self.program else ''}"
        lines = [f"{heading} ({count} problem{'s' if count != 1 else ''}):"]
        lines += [f"  - {problem}" for problem in self.problems]
        return "\n".join(lines)


@dataclass(frozen=True)
class Setting:
    """One configuration value.

    `type` is one of str, int, float, bool, Path or list (a list of strings; comma-separated in environment
    variables and flags). A default of None means "not set" and is allowed whatever the type.
    """

    name: str
    type: type
    default: Any
    help: str
    env: str | None = None
    flag: str | None = None
    secret: bool = False
    choices: Sequence[Any] | None = None
    validator: Validator | None = None

    def __post_init__(self) -> None:
        if self.type not in SUPPORTED_TYPES:
            raise TypeError(f"setting {self.name}: unsupported type {self.type!r}")
        if not self.name.isidentifier() or self.name != self.name.lower():
            raise ValueError(f"setting name must be a lower_snake identifier, got {self.name!r}")

    def env_var(self, env_prefix: str) -> str:
        return self.env or f"{env_prefix}{self.name.upper()}"

    def flag_name(self) -> str:
        return self.flag or f"--{self.name.replace('_', '-')}"


@dataclass(frozen=True)
class SettingGroup:
    title: str
    settings: tuple[Setting, ...]
    checks: tuple[Check, ...] = ()


@dataclass(frozen=True)
class ConfigSchema:
    """All settings of one program, e.g. `ConfigSchema("ha_service", "XSHA_HA_", "...", (server, logging, own))`."""

    program: str
    env_prefix: str
    description: str
    groups: tuple[SettingGroup, ...]
    settings: tuple[Setting, ...] = field(init=False)

    def __post_init__(self) -> None:
        settings = tuple(setting for group in self.groups for setting in group.settings)
        for label, keys in (
            ("name", [s.name for s in settings]),
            ("environment variable", [s.env_var(self.env_prefix) for s in settings]),
            ("flag", [s.flag_name() for s in settings]),
        ):
            duplicates = sorted({key for key in keys if keys.count(key) > 1})
            if duplicates:
                raise ValueError(f"{self.program}: duplicate setting {label}s: {', '.join(duplicates)}")
        object.__setattr__(self, "settings", settings)

    @property
    def config_file_env_var(self) -> str:
        return f"{self.env_prefix}CONFIG"

    def setting(self, name: str) -> Setting:
        for setting in self.settings:
            if setting.name == name:
                return setting
        raise KeyError(name)


class Config(Mapping[str, Any]):
    """The merged, validated values of a schema. Read as `config["name"]` or `config.name`."""

    def __init__(self, schema: ConfigSchema, values: Mapping[str, Any], sources: Mapping[str, str]) -> None:
        self._schema = schema
        self._values = dict(values)
        self._sources = dict(sources)

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"{self._schema.program} has no setting {name!r}") from None

    @property
    def schema(self) -> ConfigSchema:
        return self._schema

    def source(self, name: str) -> str:
        """Where the value came from: "default", "file <path>", "env <VAR>" or "flag <--flag>"."""
        return self._sources[name]

    def redacted(self) -> dict[str, Any]:
        """The values with secrets replaced by `***`: safe to log at startup."""
        shown: dict[str, Any] = {}
        for setting in self._schema.settings:
            value = self._values[setting.name]
            shown[setting.name] = REDACTED if setting.secret and value not in (None, "", [], ()) else value
        return shown

    def __repr__(self) -> str:
        items = ", ".join(f"{name}={value!r}" for name, value in self.redacted().items())
        return f"Config({self._schema.program}: {items})"

    __str__ = __repr__


# --- loading ------------------------------------------------------------------------------------------------------


def build_argument_parser(schema: ConfigSchema) -> argparse.ArgumentParser:
    """The command-line parser: one flag per setting (booleans get --x / --no-x) plus --config."""
    parser = argparse.ArgumentParser(
        prog=schema.program,
        description=schema.description,
        epilog=f"Every flag also has an environment variable ({schema.env_prefix}...) and a config file key; "
        "flags win over environment variables, which win over the config file.",
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help=f"configuration file, TOML (.toml) or YAML (.yaml/.yml) [env {schema.config_file_env_var}]",
    )
    for group in schema.groups:
        arguments = parser.add_argument_group(group.title)
        for setting in group.settings:
            described = (
                f"{setting.help} [env {setting.env_var(schema.env_prefix)}; default {_describe_default(setting)}]"
            )
            described = described.replace("%", "%%")
            if setting.type is bool:
                arguments.add_argument(
                    setting.flag_name(),
                    dest=setting.name,
                    action=argparse.BooleanOptionalAction,
                    default=argparse.SUPPRESS,
                    help=described,
                )
            elif setting.type is list:
                arguments.add_argument(
                    setting.flag_name(),
                    dest=setting.name,
                    action="append",
                    metavar="VALUE[,VALUE]",
                    default=argparse.SUPPRESS,
                    help=described,
                )
            else:
                arguments.add_argument(
                    setting.flag_name(),
                    dest=setting.name,
                    metavar=setting.name.upper(),
                    default=argparse.SUPPRESS,
                    help=described,
                    choices=None,
                )
    return parser


def load_config(
    schema: ConfigSchema, argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Merge default < config file < environment < flags, validate, and return the values or raise ConfigError.

    `argv` defaults to sys.argv[1:] and `environ` to os.environ. Unknown flags and `--help` are handled by
    argparse (usage message, exit code 2 / 0).
    """
    environ = os.environ if environ is None else environ
    parsed = vars(build_argument_parser(schema).parse_args(sys.argv[1:] if argv is None else list(argv)))
    problems: list[str] = []
    values: dict[str, Any] = {setting.name: setting.default for setting in schema.settings}
    sources: dict[str, str] = {setting.name: "default" for setting in schema.settings}

    config_path = parsed.get("config") or environ.get(schema.config_file_env_var) or None
    if config_path:
        for key, raw in _read_config_file(Path(config_path).expanduser(), schema, problems).items():
            _apply(schema.setting(key), raw, f"config file {config_path}", values, sources, problems)
    for setting in schema.settings:
        env_var = setting.env_var(schema.env_prefix)
        if env_var in environ:
            _apply(setting, environ[env_var], f"environment variable {env_var}", values, sources, problems)
    for setting in schema.settings:
        if setting.name in parsed:
            raw = parsed[setting.name]
            if setting.type is list:
                raw = [item for chunk in raw for item in _split_list(chunk)]
            _apply(setting, raw, f"flag {setting.flag_name()}", values, sources, problems)

    for setting in schema.settings:
        value = values[setting.name]
        if value is None:
            continue
        origin = sources[setting.name]
        shown = "the value" if setting.secret else repr(value)
        if setting.choices is not None:
            items = value if isinstance(value, list) else [value]
            for item in items:
                if item not in setting.choices:
                    choices = ", ".join(str(choice) for choice in setting.choices)
                    problems.append(f"{setting.name} (from {origin}): {shown} is not allowed; use one of: {choices}")
        if setting.validator is not None:
            problem = setting.validator(value)
            if problem:
                problems.append(f"{setting.name} (from {origin}): {problem}")
    for group in schema.groups:
        for check in group.checks:
            problems.extend(check(values))

    if problems:
        raise ConfigError(problems, schema.program)
    for setting in schema.settings:
        if setting.secret:
            value = values[setting.name]
            for secret in value if isinstance(value, list) else [value]:
                if isinstance(secret, str):
                    register_secret(secret)
    return Config(schema, values, sources)


def load_config_or_exit(
    schema: ConfigSchema, argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """`load_config` for a `__main__`: on a ConfigError print every problem to stderr and exit with code 2."""
    try:
        return load_config(schema, argv, environ)
    except ConfigError as error:
        _exit_with(error)


def _exit_with(error: ConfigError) -> NoReturn:
    print(f"{error}\nRun with --help to see every setting.", file=sys.stderr)
    raise SystemExit(2)


def _read_config_file(path: Path, schema: ConfigSchema, problems: list[str]) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        problems.append(
            f"config file {path}: cannot read it ({error.strerror}); fix the path given by --config "
            f"or {schema.config_file_env_var}"
        )
        return {}
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            data: Any = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        else:
            problems.append(f"config file {path}: unknown format; name it *.toml, *.yaml or *.yml")
            return {}
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as error:
        problems.append(f"config file {path}: not valid {suffix.lstrip('.').upper()}: {error}")
        return {}
    if not isinstance(data, dict):
        problems.append(f"config file {path}: expected a table of settings at the top level")
        return {}
    known = {setting.name for setting in schema.settings}
    found: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        if key in known:
            found[key] = value
        else:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else "; remove it or check the spelling"
            problems.append(f"config file {path}: unknown setting {raw_key!r}{hint}")
    return found


def _apply(
    setting: Setting,
    raw: Any,
    origin: str,
    values: dict[str, Any],
    sources: dict[str, str],
    problems: list[str],
) -> None:
    try:
        values[setting.name] = _convert(setting, raw)
        sources[setting.name] = origin
    except ValueError as error:
        shown = "" if setting.secret else f" {raw!r}"
        problems.append(
            f"{setting.name} (from {origin}): value{shown} is not a valid {_TYPE_NAMES[setting.type]}: {error}"
        )


def _convert(setting: Setting, raw: Any) -> Any:
    """Convert a raw value (a string from env/flags, or a native value from a file) to the setting's type."""
    kind = setting.type
    if isinstance(raw, str) and kind is not str and raw.strip() == "":
        if kind is list:
            return []
        if setting.default is None:
            return None
        raise ValueError("it is empty; give a value or unset it")
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in _TRUE_WORDS | _FALSE_WORDS:
            return raw.strip().lower() in _TRUE_WORDS
        raise ValueError("use true or false")
    if kind is int:
        if isinstance(raw, bool) or not isinstance(raw, int | str):
            raise ValueError("use a whole number")
        try:
            return int(raw)
        except ValueError:
            raise ValueError("use a whole number") from None
    if kind is float:
        if isinstance(raw, bool) or not isinstance(raw, int | float | str):
            raise ValueError("use a number")
        try:
            return float(raw)
        except ValueError:
            raise ValueError("use a number") from None
    if kind is Path:
        if not isinstance(raw, str | Path):
            raise ValueError("use a file path")
        return Path(raw).expanduser()
    if kind is list:
        if isinstance(raw, str):
            return _split_list(raw)
        if isinstance(raw, list) and all(isinstance(item, str | int | float) for item in raw):
            return [str(item) for item in raw]
        raise ValueError("use a list of strings (comma-separated in environment variables and flags)")
    if not isinstance(raw, str):
        raise ValueError("use a string")
    if setting.choices is not None:
        # Case-insensitive choices ("info" for "INFO"), normalised to the declared spelling.
        for choice in setting.choices:
            if isinstance(choice, str) and choice.lower() == raw.lower():
                return choice
    return raw


def _split_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


# --- validators ---------------------------------------------------------------------------------------------------


def in_range(minimum: float | None = None, maximum: float | None = None) -> Validator:
    """A validator for numbers within [minimum, maximum]."""

    def validate(value: Any) -> str | None:
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            low = "" if minimum is None else f"at least {minimum}"
            high = "" if maximum is None else f"at most {maximum}"
            return f"{value} is out of range; use a value {' and '.join(part for part in (low, high) if part)}"
        return None

    return validate


def existing_file(value: Any) -> str | None:
    """A validator for paths that must name a readable file."""
    path = Path(value)
    if not path.is_file():
        return f"file {path} does not exist (or is not a regular file); fix the path"
    if not os.access(path, os.R_OK):
        return f"file {path} is not readable by this process; fix its permissions"
    return None


def split_host_port(address: str) -> tuple[str, int]:
    """`host:port` or `[ipv6]:port` -> (host, port) with IPv6 brackets removed; ValueError explains the format."""
    host, separator, port_text = address.rpartition(":")
    if not separator or not host:
        raise ValueError(f"{address!r} is not host:port; use e.g. 127.0.0.1:50051, 0.0.0.0:50051 or [::]:50051")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{address!r}: put an IPv6 host in brackets, e.g. [::1]:50051")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{address!r}: the port must be a number from 0 to 65535 (0 picks a free port)")
    return host, int(port_text)


def host_port(value: Any) -> str | None:
    """A validator for `host:port` addresses; the empty string is allowed (meaning "off")."""
    if value == "":
        return None
    try:
        split_host_port(value)
    except ValueError as error:
        return str(error)
    return None


# --- the groups both services include ------------------------------------------------------------------------------


def server_settings_group(
    default_listen_address: str,
    default_metrics_address: str = "",
    workers_help: str = "Threads serving RPCs; each open watch stream holds one.",
) -> SettingGroup:
    """The gRPC server settings every service has; read back with `ServerSettings.from_config(config)`.
    `workers_help` says what `max_workers` threads serve on this service's server."""
    settings = (
        Setting("listen_address", str, default_listen_address,
                "gRPC listen address, host:port (port 0 picks a free port).", validator=host_port),
        Setting("max_workers", int, 32, workers_help, validator=in_range(1, 4096)),
        Setting("tls_cert_file", Path, None,
                "PEM server certificate (chain) for TLS; without it the server listens without TLS.",
                validator=existing_file),
        Setting("tls_key_file", Path, None, "PEM private key of the server certificate.", validator=existing_file),
        Setting("tls_client_ca_file", Path, None,
                "PEM CA bundle for mutual TLS: clients must present a certificate it signed.",
                validator=existing_file),
        Setting("auth_tokens", list, [],
                "Accepted bearer tokens, comma-separated; clients send 'authorization: Bearer <token>'.",
                secret=True),
        Setting("auth_token_file", Path, None,
                "File with accepted bearer tokens, one per line (keeps tokens out of the environment).",
                validator=existing_file),
        Setting("auth_disabled", bool, False,
                "Accept calls without a token. Only for trusted networks and tests; logged as a warning."),
        Setting("metrics_address", str, default_metrics_address,
                "Prometheus /metrics listen address, host:port; empty turns the endpoint off.", validator=host_port),
        Setting("shutdown_grace_seconds", float, 10.0,
                "On SIGTERM, how long in-flight calls may run before they are cancelled.",
                validator=in_range(0, 3600)),
        Setting("shutdown_drain_seconds", float, 0.0,
                "On SIGTERM, how long to report NOT_SERVING while still accepting calls, so load balancers "
                "stop routing first.", validator=in_range(0, 600)),
        Setting("max_message_bytes", int, 16 * 1024 * 1024,
                "Largest gRPC message received or sent, in bytes.", validator=in_range(1024, 1024**3)),
    )  # fmt: skip
    return SettingGroup("gRPC server", settings, (_check_tls_files, _check_auth, _check_distinct_ports))


def database_settings_group(default_database_url: str) -> SettingGroup:
    """The database settings every service has: where its tables live and whether start-up migrates them."""
    return SettingGroup(
        "Database",
        (
            Setting(
                "database_url",
                str,
                default_database_url,
                "SQLAlchemy URL: sqlite:///PATH, mysql+pymysql://USER:PASSWORD@HOST/DB or "
                "postgresql+psycopg://USER:PASSWORD@HOST/DB. The password is redacted from logs.",
            ),
            Setting(
                "database_auto_upgrade",
                bool,
                None,
                "Apply pending schema migrations at start-up (default: yes on SQLite, no on MariaDB/PostgreSQL, "
                "where the operator runs them once before rolling out replicas).",
            ),
            Setting(
                "database_connect_timeout",
                float,
                60.0,
                "At start-up, how long to wait for the database to answer before giving up (exit code 2).",
                validator=in_range(0, 3600),
            ),
        ),
    )


def logging_settings_group() -> SettingGroup:
    return SettingGroup(
        "Logging",
        (
            Setting("log_level", str, "INFO", "Lowest level logged.", choices=LOG_LEVELS),
            Setting(
                "log_format",
                str,
                "json",
                "Log line format: json (one object per line) or text (key=value).",
                choices=LOG_FORMATS,
            ),
        ),
    )


def _check_tls_files(values: Mapping[str, Any]) -> Iterator[str]:
    if (values["tls_cert_file"] is None) != (values["tls_key_file"] is None):
        yield "tls_cert_file and tls_key_file go together: set both for TLS, or neither"
    if values["tls_client_ca_file"] is not None and values["tls_cert_file"] is None:
        yield "tls_client_ca_file (mutual TLS) needs server TLS: also set tls_cert_file and tls_key_file"


def _check_auth(values: Mapping[str, Any]) -> Iterator[str]:
    has_tokens = bool(values["auth_tokens"]) or values["auth_token_file"] is not None
    if values["auth_disabled"] and has_tokens:
        yield "auth_disabled is true but auth tokens are configured: remove the tokens or enable authentication"
    if not values["auth_disabled"] and not has_tokens:
        yield "no auth token: set auth_tokens or auth_token_file, or set auth_disabled to true (trusted networks only)"


def _check_distinct_ports(values: Mapping[str, Any]) -> Iterator[str]:
    listen, metrics = values["listen_address"], values["metrics_address"]
    if host_port(listen) or not metrics or host_port(metrics):
        return
    listen_port, metrics_port = split_host_port(listen)[1], split_host_port(metrics)[1]
    if listen_port != 0 and listen_port == metrics_port:
        yield f"metrics_address and listen_address both use port {listen_port}; give the metrics endpoint its own port"


# --- documentation ------------------------------------------------------------------------------------------------


def render_markdown_table(schema: ConfigSchema) -> str:
    """The configuration reference of a program as a Markdown table (the README embeds it verbatim)."""
    rows = [
        "| Setting | Environment variable | Flag | Default | Description |",
        "|---|---|---|---|---|",
        f"| `config` | `{schema.config_file_env_var}` | `--config` | (none) | "
        "Configuration file, TOML (`.toml`) or YAML (`.yaml`/`.yml`), keyed by setting name. |",
    ]
    for setting in schema.settings:
        description = setting.help
        if setting.choices is not None:
            description += " One of: " + ", ".join(f"`{choice}`" for choice in setting.choices) + "."
        if setting.secret:
            description += " Secret: never logged."
        default = _describe_default(setting)
        cells = [
            f"`{setting.name}`",
            f"`{setting.env_var(schema.env_prefix)}`",
            f"`{setting.flag_name()}`",
            default if default.startswith("(") else f"`{default}`",
            description,
        ]
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(rows) + "\n"


def _describe_default(setting: Setting) -> str:
    value = setting.default
    if value is None or value == []:
        return "(none)"
    if value == "":
        return "(empty)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    return str(value)


__all__ = [
    "Check",
    "Config",
    "ConfigError",
    "ConfigSchema",
    "Setting",
    "SettingGroup",
    "Validator",
    "build_argument_parser",
    "existing_file",
    "host_port",
    "in_range",
    "load_config",
    "load_config_or_exit",
    "logging_settings_group",
    "render_markdown_table",
    "server_settings_group",
    "split_host_port",
]

"""docker/ without a Docker engine: the compose file parses and configures every service only with real settings,
the Dockerfile's commands exist, and each container's command line, as written in the compose file with its
environment and secrets (adapted to local addresses, SQLite instead of MariaDB), starts and answers health SERVING
through the image's own health check command."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml

from ha_service.__main__ import SCHEMA as HA_SCHEMA
from sync_service.settings import SCHEMA as SYNC_SCHEMA
from xsha_common.config import ConfigSchema, load_config
from xsha_common.procs import ChildProcess
from xsha_common.testing import free_port, wait_until

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
SCHEMAS: dict[str, ConfigSchema] = {"sync-service": SYNC_SCHEMA, "ha-service": HA_SCHEMA}
HOSTNAMES = ("0.0.0.0", "sync-service", "ha-service", "xapi-sim", "mariadb")


def load_compose() -> dict[str, Any]:
    data = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def console_scripts() -> dict[str, str]:
    scripts: dict[str, str] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    return scripts


def resolve_entry_point(target: str) -> object:
    module_name, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", (DOCKER / "Dockerfile").read_text())
    instructions = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


# --- static checks --------------------------------------------------------------------------------------------------


def test_compose_has_mariadb_both_services_and_the_simulator() -> None:
    services = load_compose()["services"]
    assert set(services) == {"mariadb", "xapi-sim", "sync-service", "ha-service"}
    for name in ("sync-service", "ha-service", "xapi-sim"):
        assert services[name]["image"] == "xsha:latest"
        assert services[name]["build"]["dockerfile"] == "docker/Dockerfile"
    assert services["ha-service"]["depends_on"]["sync-service"]["condition"] == "service_healthy"


@pytest.mark.parametrize("service", sorted(SCHEMAS))
def test_every_environment_variable_is_a_real_setting(service: str) -> None:
    schema = SCHEMAS[service]
    known = {setting.env_var(schema.env_prefix) for setting in schema.settings} | {schema.config_file_env_var}
    environment = load_compose()["services"][service]["environment"]
    unknown = sorted(set(environment) - known)
    assert not unknown, f"{service} sets variables that are no setting of {schema.program}: {unknown}"


@pytest.mark.parametrize("service", sorted(SCHEMAS))
def test_secrets_are_mounted_not_put_in_the_environment(service: str) -> None:
    compose = load_compose()
    definition = compose["services"][service]
    schema = SCHEMAS[service]
    secret_vars = {setting.env_var(schema.env_prefix) for setting in schema.settings if setting.secret}
    assert not secret_vars & set(definition["environment"]), "secret settings must come from secret files"
    assert "auth_token" in definition["secrets"]
    for secret in definition["secrets"]:
        assert secret in compose["secrets"]
    for value in definition["environment"].values():
        if str(value).startswith("/run/secrets/"):
            assert str(value).removeprefix("/run/secrets/") in definition["secrets"]


def test_mariadb_takes_its_passwords_from_secrets() -> None:
    mariadb = load_compose()["services"]["mariadb"]
    assert mariadb["environment"]["MARIADB_PASSWORD_FILE"] == "/run/secrets/db_password"
    assert "MARIADB_PASSWORD" not in mariadb["environment"]
    assert (DOCKER / "mariadb-init" / "01-databases.sql").is_file()


def test_dockerfile_is_multi_stage_non_root_with_existing_commands() -> None:
    instructions = dockerfile_instructions()
    stages = [args for keyword, args in instructions if keyword == "FROM"]
    assert len(stages) == 2 and stages[0].endswith("AS builder") and stages[1].endswith("AS runtime")
    runtime = instructions[[keyword for keyword, _ in instructions].index("FROM", 1) :]
    users = [args for keyword, args in runtime if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    for keyword, args in instructions:
        if keyword == "COPY" and not args.startswith("--from"):
            for source in args.split()[:-1]:
                assert (REPO / source).exists(), f"COPY {source}: no such path in the repository"

    scripts = console_scripts()
    cmd = next(args for keyword, args in instructions if keyword == "CMD")
    program = yaml.safe_load(cmd)[0]
    assert program in scripts and callable(resolve_entry_point(scripts[program]))

    healthcheck = next(args for keyword, args in instructions if keyword == "HEALTHCHECK")
    command = yaml.safe_load(healthcheck.partition("CMD")[2].strip())
    assert command[:3] == ["python", "-m", "xsha_cli.healthcheck"]
    assert callable(importlib.import_module("xsha_cli.healthcheck").main)


def test_compose_commands_are_console_scripts_of_the_image() -> None:
    scripts = console_scripts()
    for name, definition in load_compose()["services"].items():
        if name == "mariadb":
            continue
        program = definition["command"][0]
        assert program in scripts, f"{name}: {program} is not a console script of the xsha package"
        assert callable(resolve_entry_point(scripts[program]))
        assert (Path(sys.executable).parent / program).exists(), f"{program} is not installed in the venv"


def test_init_secrets_writes_private_files_once(tmp_path: Path) -> None:
    script = DOCKER / "init_secrets.py"
    first = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, check=True)
    assert "auth_token" in first.stdout
    compose_files = {Path(spec["file"]).name for spec in load_compose()["secrets"].values()}
    assert compose_files == {path.name for path in tmp_path.iterdir()}
    for path in tmp_path.iterdir():
        assert path.stat().st_mode & 0o077 == 0, f"{path.name} is readable by others"
    token = (tmp_path / "auth_token").read_text()
    again = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, check=True)
    assert "nothing changed" in again.stdout
    assert (tmp_path / "auth_token").read_text() == token
    ha_config = yaml.safe_load((tmp_path / "ha_service.yaml").read_text())
    assert ha_config["sync_token"] == token.strip()
    password = (tmp_path / "db_password").read_text().strip()
    assert password in ha_config["database_url"] and "mariadb" in ha_config["database_url"]


# --- the containers' command lines, run locally -----------------------------------------------------------------------


class LocalDeployment:
    """Maps the compose file's hosts, ports and /run/secrets paths to local ones."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.secrets_dir = tmp_path / "secrets"
        self.ports: dict[int, int] = {}
        self.children: list[ChildProcess] = []
        subprocess.run([sys.executable, str(DOCKER / "init_secrets.py"), str(self.secrets_dir)], check=True)
        # SQLite instead of MariaDB, keeping every other value of the config secrets.
        for name, key, database in (
            ("sync_service.yaml", "database_url", "sync"),
            ("ha_service.yaml", "database_url", "ha"),
        ):
            path = self.secrets_dir / name
            config = yaml.safe_load(path.read_text())
            config[key] = f"sqlite:///{tmp_path / f'{database}.sqlite'}"
            path.write_text(yaml.safe_dump(config))
        self.secret_files = {
            name: self.secrets_dir / Path(spec["file"]).name for name, spec in load_compose()["secrets"].items()
        }

    def port(self, port: int) -> int:
        if port not in self.ports:
            self.ports[port] = free_port()
        return self.ports[port]

    def adapt(self, value: str) -> str:
        for name, path in self.secret_files.items():
            value = value.replace(f"/run/secrets/{name}", str(path))
        pattern = r"\b(" + "|".join(re.escape(host) for host in HOSTNAMES) + r"|127\.0\.0\.1):(\d+)"
        return re.sub(pattern, lambda match: f"127.0.0.1:{self.port(int(match.group(2)))}", value)

    def command(self, argv: list[str]) -> list[str]:
        program = Path(sys.executable).parent / argv[0]
        if argv[0] == "python":
            program = Path(sys.executable)
        return [str(program), *(self.adapt(str(arg)) for arg in argv[1:])]

    def start(self, service: str, extra_args: list[str] | None = None) -> ChildProcess:
        definition = load_compose()["services"][service]
        environment = {key: self.adapt(str(value)) for key, value in definition.get("environment", {}).items()}
        env = {key: value for key, value in os.environ.items() if not key.startswith("XSHA_")}
        child = ChildProcess(
            service,
            self.command(definition["command"]) + (extra_args or []),
            log_path=self.tmp / f"{service}.log",
            env={**env, **environment},
        )
        self.children.append(child.start())
        return child

    def healthy(self, service: str) -> bool:
        test = load_compose()["services"][service]["healthcheck"]["test"]
        assert test[0] == "CMD"
        completed = subprocess.run(self.command(test[1:]), capture_output=True, timeout=30, check=False)
        return completed.returncode == 0

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalDeployment]:
    deployment = LocalDeployment(tmp_path)
    try:
        yield deployment
    finally:
        deployment.stop()


def serving(local: LocalDeployment, child: ChildProcess, service: str) -> bool:
    assert child.returncode is None, f"{service} exited: {child.log_tail()}"
    return local.healthy(service)


@pytest.mark.timeout(180)
def test_compose_command_lines_start_the_services_and_they_answer_health(local: LocalDeployment) -> None:
    scenario = yaml.safe_load((DOCKER / "xapi-sim-scenario.yaml").read_text())
    for pool in scenario["pools"]:
        for host in pool["hosts"]:
            host["address"] = "127.0.0.1"
            host["port"] = local.port(int(host["port"]))
    scenario_file = local.tmp / "scenario.yaml"
    scenario_file.write_text(yaml.safe_dump(scenario))
    sim = local.start("xapi-sim", ["--scenario", str(scenario_file)])  # a later --scenario wins
    wait_until(lambda: local.healthy("xapi-sim"), 60, interval=0.2, what="xapi-sim healthy")

    for service in ("sync-service", "ha-service"):
        child = local.start(service)
        wait_until(partial(serving, local, child, service), 60, interval=0.2, what=f"{service} health SERVING")
        assert child.returncode is None, child.log_tail()
    assert sim.returncode is None

    # The environment is what each service really runs with: every value loads through its schema.
    for service, schema in SCHEMAS.items():
        environment = {
            key: local.adapt(str(value)) for key, value in load_compose()["services"][service]["environment"].items()
        }
        config = load_config(schema, [], environment)
        assert config["auth_token_file"] is not None
    for child in local.children:
        assert child.stop() == 0, child.log_tail()

"""Suite-wide fixtures: databases. Area-specific fixtures belong in tests/<area>/conftest.py.

``db_url`` runs a test once per backend (ids ``sqlite``, ``mysql``, ``postgresql``; also markers of those names, so
``-k mysql`` and ``-m postgresql`` select them), each time against a fresh, empty database of its own:
a file under tmp_path for SQLite, a uniquely named database (``xsha_t_<random>``) created on the server named by
XSHA_TEST_MYSQL_URL / XSHA_TEST_POSTGRES_URL and dropped afterwards. Unset variable: skip with the reason.
Set but the server does not answer: skip locally, fail in CI (CI=true), so CI can never silently lose a backend.
"""

from __future__ import annotations

import os
import secrets
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import URL, Engine

from tests.reliability.summary import SECTIONS as REPORT_SECTIONS
from xsha_common.db import Backend, create_engine_for, normalize_url

BACKENDS: tuple[Backend, ...] = ("sqlite", "mysql", "postgresql")
SERVER_URL_ENV: dict[Backend, str] = {"mysql": "XSHA_TEST_MYSQL_URL", "postgresql": "XSHA_TEST_POSTGRES_URL"}

# Per backend: outcome of the one reachability probe per session, and how many tests used / skipped it.
_server_probe: dict[Backend, str | None] = {}
_backend_runs: Counter[Backend] = Counter()
_backend_skips: dict[Backend, str] = {}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def pytest_configure(config: pytest.Config) -> None:
    for backend in BACKENDS:
        config.addinivalue_line("markers", f"{backend}: test runs against the {backend} database backend")


def _probe(backend: Backend, server_url: URL) -> str | None:
    """None when the server answers, else why not. Done once per session: a dead server costs a connect timeout."""
    if backend not in _server_probe:
        engine = create_engine_for(server_url, pool_size=1, max_overflow=0, connect_timeout=5)
        try:
            with engine.connect() as connection:
                connection.execute(sa.text("SELECT 1"))
            _server_probe[backend] = None
        except sa.exc.DBAPIError as exc:
            _server_probe[backend] = f"{SERVER_URL_ENV[backend]} is set but {backend} does not answer: {exc.orig}"
        finally:
            engine.dispose()
    return _server_probe[backend]


def _unavailable(backend: Backend, reason: str) -> None:
    _backend_skips[backend] = reason
    if in_ci():
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture(params=[pytest.param(b, id=b, marks=getattr(pytest.mark, b)) for b in BACKENDS])
def db_backend(request: pytest.FixtureRequest) -> Backend:
    """The backend the current test parametrisation targets: "sqlite", "mysql" or "postgresql"."""
    backend: Backend = request.param
    return backend


@pytest.fixture
def db_url(db_backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a fresh, empty database on ``db_backend``, removed after the test."""
    if db_backend == "sqlite":
        _backend_runs[db_backend] += 1
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'xsha.sqlite'}"
        return

    env = SERVER_URL_ENV[db_backend]
    raw = os.environ.get(env, "").strip()
    if not raw:
        # Not configured is a local choice, even in CI (.ci/run sets both); the summary line shows it.
        _backend_skips[db_backend] = f"set {env} to run {'MariaDB' if db_backend == 'mysql' else 'PostgreSQL'} tests"
        pytest.skip(_backend_skips[db_backend])
    server_url = normalize_url(raw)
    problem = _probe(db_backend, server_url)
    if problem is not None:
        _unavailable(db_backend, problem)

    name = f"xsha_t_{secrets.token_hex(6)}"
    admin = create_engine_for(server_url, pool_size=1, max_overflow=0)
    # CREATE/DROP DATABASE cannot run inside a transaction on PostgreSQL.
    autocommit = admin.execution_options(isolation_level="AUTOCOMMIT")
    create = f"CREATE DATABASE {name}" + (" CHARACTER SET utf8mb4" if db_backend == "mysql" else "")
    # WITH (FORCE) ends sessions a failed test leaked, which would otherwise block the drop.
    drop = f"DROP DATABASE IF EXISTS {name}" + (" WITH (FORCE)" if db_backend == "postgresql" else "")
    try:
        with autocommit.connect() as connection:
            connection.exec_driver_sql(create)
        _backend_runs[db_backend] += 1
        yield server_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with autocommit.connect() as connection:
            connection.exec_driver_sql(drop)
        admin.dispose()


@pytest.fixture
def db_engine(db_url: str) -> Iterator[Engine]:
    """An xsha engine on the fresh ``db_url`` database, disposed after the test."""
    engine = create_engine_for(db_url)
    yield engine
    engine.dispose()


def pytest_sessionfinish(session: pytest.Session) -> None:
    # Under pytest-xdist each worker counts its own tests; the controller adds them up (pytest_testnodedown).
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["xsha_backend_runs"] = dict(_backend_runs)
        workeroutput["xsha_backend_skips"] = dict(_backend_skips)
        workeroutput["xsha_report_sections"] = dict(REPORT_SECTIONS)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    output = getattr(node, "workeroutput", {})
    _backend_runs.update(output.get("xsha_backend_runs", {}))
    _backend_skips.update(output.get("xsha_backend_skips", {}))
    REPORT_SECTIONS.update(output.get("xsha_report_sections", {}))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    # Here rather than in tests/reliability/conftest.py: under pytest-xdist only this conftest is loaded by the
    # controller, which prints the summary.
    for title, lines in REPORT_SECTIONS.items():
        terminalreporter.section(title)
        for line in lines:
            terminalreporter.write_line(line)
    if not _backend_runs and not _backend_skips:
        return
    terminalreporter.section("database backends")
    for backend in BACKENDS:
        runs = _backend_runs.get(backend, 0)
        skipped = _backend_skips.get(backend)
        line = f"{backend}: {runs} test database(s) created"
        if skipped:
            line += f"; unavailable: {skipped}"
        terminalreporter.write_line(line)

"""Database plumbing shared by both services: engines, transactions, metadata, Alembic, transient errors.

Supported backends: SQLite (embedded default, one replica), MariaDB/MySQL through PyMySQL, PostgreSQL through
psycopg 3. Each service declares its own ORM base with its own metadata::

    class Base(DeclarativeBase):
        metadata = make_metadata()

and keeps its own Alembic history in ``<service>/migrations/`` with its own version table, so both services can
share one database. A service's ``migrations/env.py`` is just::

    from sync_service.models import Base
    from xsha_common.db import run_migrations_online

    run_migrations_online(Base.metadata, "alembic_version_sync")
"""

from __future__ import annotations

import hashlib
import logging
import random
import sqlite3
import threading
import time
import weakref
import zlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from importlib import resources
from pathlib import Path
from typing import Any, Final, Literal, TypeVar, overload

import psycopg
import sqlalchemy.exc as sa_exc
from alembic import command, context
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import URL, Connection, Engine, MetaData, create_engine, event, make_url, text
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

from xsha_common.logging import register_secret
from xsha_common.mysql_literals import LiteralCursor

__all__ = [
    "NAMING_CONVENTION",
    "Backend",
    "DatabaseUnavailableError",
    "SchemaNotCurrentError",
    "UnsupportedDatabaseURLError",
    "alembic_config",
    "backend_of",
    "create_engine_for",
    "current_revision",
    "default_auto_upgrade",
    "downgrade_to_base",
    "ensure_schema",
    "head_revision",
    "is_transient_db_error",
    "make_metadata",
    "make_sessionmaker",
    "normalize_url",
    "prepare_sqlite_directory",
    "retry_transient",
    "run_migrations_online",
    "upgrade_to_head",
    "wait_for_database",
    "write_transaction",
]

log = logging.getLogger(__name__)

Backend = Literal["sqlite", "mysql", "postgresql"]
T = TypeVar("T")

# Deterministic constraint names: without them each backend invents its own (or none, on SQLite), and Alembic
# cannot later drop or alter a constraint by name portably. Keep generated names under 63 characters (PostgreSQL
# limit); longer ones get truncated with a hash suffix that depends on the backend's limit.
NAMING_CONVENTION: Final[dict[str, str]] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

_DRIVERS: Final[dict[str, str]] = {
    "sqlite": "sqlite",
    "sqlite+pysqlite": "sqlite",
    "mysql": "mysql+pymysql",
    "mysql+pymysql": "mysql+pymysql",
    "mariadb": "mysql+pymysql",
    "mariadb+pymysql": "mysql+pymysql",
    "postgresql": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "postgres+psycopg": "postgresql+psycopg",
}

# Execution option read by the SQLite "begin" hook to choose BEGIN IMMEDIATE over a deferred BEGIN.
_SQLITE_BEGIN_OPTION: Final = "xsha_sqlite_begin"


class UnsupportedDatabaseURLError(ValueError):
    """The URL names a database or driver xsha does not support."""


class SchemaNotCurrentError(RuntimeError):
    """The database schema is not at the revision the code expects and automatic upgrade is off."""


class DatabaseUnavailableError(RuntimeError):
    """The database did not answer at start-up (within the wait), or refused the connection for good."""


# --------------------------------------------------------------------------------------------------- engines


def normalize_url(url: str | URL) -> URL:
    """Map accepted spellings (``mysql://``, ``mariadb://``, ``postgres://``...) onto the drivers xsha ships.

    Raises UnsupportedDatabaseURLError for any other scheme, for in-memory SQLite (each pooled connection would
    see its own empty database) and for a MySQL charset other than utf8mb4.
    """
    try:
        parsed = make_url(url)
    except sa_exc.ArgumentError as exc:
        raise UnsupportedDatabaseURLError(f"not a database URL: {_redact(url)!r}") from exc
    driver = _DRIVERS.get(parsed.drivername.lower())
    if driver is None:
        raise UnsupportedDatabaseURLError(
            f"unsupported database URL scheme {parsed.drivername!r} in {_redact(parsed)!r}; use sqlite:///PATH, "
            "mysql+pymysql://USER:PASSWORD@HOST/DB (mysql://, mariadb:// accepted) or "
            "postgresql+psycopg://USER:PASSWORD@HOST/DB (postgresql://, postgres:// accepted)"
        )
    parsed = parsed.set(drivername=driver)
    if driver == "sqlite":
        if parsed.database in (None, "", ":memory:") or (parsed.database or "").startswith("file::memory:"):
            raise UnsupportedDatabaseURLError("in-memory SQLite is not supported; use sqlite:///PATH/TO/FILE")
    elif driver == "mysql+pymysql":
        charset = parsed.query.get("charset", "utf8mb4")
        if charset != "utf8mb4":
            raise UnsupportedDatabaseURLError(f"MySQL charset must be utf8mb4 (4-byte UTF-8), got {charset!r}")
        parsed = parsed.update_query_dict({"charset": "utf8mb4"})
    return parsed


def backend_of(url: str | URL | Engine | Connection) -> Backend:
    """The backend family of a URL, engine or connection."""
    name = url.dialect.name if isinstance(url, Engine | Connection) else normalize_url(url).get_backend_name()
    if name == "sqlite":
        return "sqlite"
    if name in ("mysql", "mariadb"):
        return "mysql"
    if name == "postgresql":
        return "postgresql"
    raise UnsupportedDatabaseURLError(f"unsupported database backend {name!r}")


def create_engine_for(
    url: str | URL,
    *,
    pool_size: int = 5,
    max_overflow: int = 10,
    pool_timeout: float = 30.0,
    connect_timeout: float = 5.0,
    io_timeout: float = 60.0,
    sqlite_busy_timeout_ms: int = 5000,
    idle_transaction_timeout: float = 15.0,
    echo: bool = False,
) -> Engine:
    """An Engine configured for xsha on SQLite, MariaDB/MySQL or PostgreSQL.

    ``connect_timeout`` makes a dead server fail fast instead of hanging; ``io_timeout`` bounds how long a
    statement may wait on a silent network (MySQL read/write timeout, PostgreSQL TCP user timeout) so a cut
    cable turns into a transient error. ``sqlite_busy_timeout_ms`` is how long a SQLite writer waits for the lock.
    ``idle_transaction_timeout`` is how long the server lets a transaction wait on its client before it ends the
    session (PostgreSQL, MariaDB): a replica that is frozen, not dead, inside a transaction would otherwise keep
    its row locks (a lease, the revision counter) and stall every other replica's writes for as long as it sleeps.
    """
    parsed = normalize_url(url)
    if parsed.password:
        register_secret(str(parsed.password))  # a driver error or a log line may quote the URL
    backend = backend_of(parsed)
    pool_args: dict[str, Any] = {"pool_size": pool_size, "max_overflow": max_overflow, "pool_timeout": pool_timeout}
    if backend == "sqlite":
        engine = create_engine(parsed, echo=echo, **pool_args)
        _configure_sqlite(engine, busy_timeout_ms=sqlite_busy_timeout_ms)
        return engine
    if backend == "mysql":
        # READ COMMITTED rather than InnoDB's REPEATABLE READ: each statement sees the latest committed rows
        # (a polling loop inside one transaction would otherwise keep reading its first snapshot), and InnoDB
        # takes no gap/next-key locks, which otherwise deadlock concurrent inserts into change logs and leases.
        engine = create_engine(
            parsed,
            echo=echo,
            isolation_level="READ COMMITTED",
            pool_pre_ping=True,
            pool_recycle=3600,  # below the server's wait_timeout, so idle pooled connections are never stale
            connect_args={
                "connect_timeout": connect_timeout,
                "read_timeout": io_timeout,
                "write_timeout": io_timeout,
                "cursorclass": LiteralCursor,  # PyMySQL renders parameters into SQL text; this does it faster
            },
            **pool_args,
        )
        _configure_mariadb_idle_transactions(engine, idle_transaction_timeout)
        return engine
    return create_engine(
        parsed,
        echo=echo,
        pool_pre_ping=True,
        connect_args={
            "connect_timeout": max(2, round(connect_timeout)),  # libpq: whole seconds, minimum 2
            "application_name": "xsha",
            # Keepalives and a TCP user timeout detect a silently dead peer instead of waiting for the OS (~15 min).
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 10,
            "keepalives_count": 3,
            "tcp_user_timeout": int(io_timeout * 1000),
            "options": f"-c idle_in_transaction_session_timeout={int(idle_transaction_timeout * 1000)}",
        },
        **pool_args,
    )


def _configure_mariadb_idle_transactions(engine: Engine, timeout: float) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
        # MariaDB's idle_transaction_timeout (10.3 on); MySQL has no such variable, so it is left alone there.
        if "mariadb" not in str(dbapi_connection.get_server_info()).lower():  # type: ignore[attr-defined]
            return
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"SET SESSION idle_transaction_timeout = {max(1, round(timeout))}")
        finally:
            cursor.close()


# Per SQLite engine: the lock its in-process writers queue on (see _writer_queue).
_SQLITE_WRITER_LOCKS: weakref.WeakKeyDictionary[Engine, threading.RLock] = weakref.WeakKeyDictionary()


def _configure_sqlite(engine: Engine, *, busy_timeout_ms: int) -> None:
    _SQLITE_WRITER_LOCKS[engine] = threading.RLock()

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
        assert isinstance(dbapi_connection, sqlite3.Connection)
        # Take BEGIN away from the sqlite3 module (which defers it and skips it before DDL) so SQLAlchemy's
        # "begin" hook below decides how a transaction starts; this also makes DDL transactional.
        dbapi_connection.isolation_level = None
        for pragma in (
            f"PRAGMA busy_timeout = {int(busy_timeout_ms)}",  # first, so the journal-mode switch also waits
            "PRAGMA journal_mode = WAL",  # readers do not block the writer and vice versa
            "PRAGMA synchronous = NORMAL",  # durable enough under WAL, far fewer fsyncs
            "PRAGMA foreign_keys = ON",  # off by default in SQLite
        ):
            dbapi_connection.execute(pragma)

    @event.listens_for(engine, "begin")
    def on_begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get(_SQLITE_BEGIN_OPTION, "DEFERRED")
        connection.exec_driver_sql(f"BEGIN {mode}")


def prepare_sqlite_directory(url: str | URL) -> None:
    """Creates the directory of a SQLite file (the embedded default keeps it under ./var/, absent on a clone)."""
    normalized = normalize_url(url)
    if backend_of(normalized) == "sqlite" and normalized.database:
        Path(normalized.database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def wait_for_database(url: str | URL, *, timeout: float = 60.0, sleep: Callable[[float], None] = time.sleep) -> None:
    """Waits until the database answers. At start-up a database that is restarting, or a link being repaired,
    should delay a service, not end it with a traceback; a permanent refusal (bad password, unknown database)
    fails at once. Raises DatabaseUnavailableError with what to check."""
    shown = normalize_url(url).render_as_string(hide_password=True)
    prepare_sqlite_directory(url)
    engine = create_engine_for(url, pool_size=1, max_overflow=0, connect_timeout=min(5.0, max(timeout, 0.5)))
    deadline = time.monotonic() + timeout
    attempt = 0
    try:
        while True:
            try:
                with engine.connect() as connection:
                    connection.execute(text("SELECT 1"))
                return
            except sa_exc.DBAPIError as error:
                if not is_transient_db_error(error):
                    raise DatabaseUnavailableError(f"database {shown} refused the connection: {error.orig}") from None
                if time.monotonic() >= deadline:
                    raise DatabaseUnavailableError(
                        f"database {shown} did not answer within {timeout:g} s ({error.orig}); check that it runs "
                        "and is reachable, or raise database_connect_timeout"
                    ) from None
                delay = min(2.0, 0.2 * 2**attempt)
                log.warning("database not answering yet; retrying", extra={"database": shown, "retry_in": delay})
                sleep(delay)
                attempt += 1
    finally:
        engine.dispose()


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """A Session factory; objects stay usable after commit (services hand them to gRPC responses)."""
    return sessionmaker(bind=engine, expire_on_commit=False)


@overload
def write_transaction(bind: Engine) -> AbstractContextManager[Connection]: ...
@overload
def write_transaction(bind: sessionmaker[Session]) -> AbstractContextManager[Session]: ...
def write_transaction(
    bind: Engine | sessionmaker[Session],
) -> AbstractContextManager[Connection] | AbstractContextManager[Session]:
    """A transaction that will write: commits on success, rolls back on error.

    On SQLite it starts with BEGIN IMMEDIATE, taking the write lock up front: two deferred transactions that both
    read and then write deadlock on the lock upgrade and one fails with SQLITE_BUSY without waiting for
    busy_timeout. Elsewhere it is an ordinary transaction. Yields a Connection for an Engine, a Session for a
    sessionmaker.
    """
    if isinstance(bind, Engine):
        return _engine_write_transaction(bind)
    return _session_write_transaction(bind)


def _writer_queue(engine: Engine | None) -> AbstractContextManager[object]:
    """SQLite admits one writer at a time. This process's writers queue on a lock and wake the moment the
    current writer commits; left to SQLite, each would poll its busy handler (sleeping up to 100 ms between
    tries) and, with many threads, some would run out of busy_timeout. Other processes still meet busy_timeout.
    Re-entrant, so a nested write transaction fails in SQLite as before rather than deadlocking here."""
    lock = _SQLITE_WRITER_LOCKS.get(engine) if engine is not None else None
    return lock if lock is not None else nullcontext()


@contextmanager
def _engine_write_transaction(engine: Engine) -> Iterator[Connection]:
    with _writer_queue(engine), engine.connect() as connection:
        connection = connection.execution_options(**{_SQLITE_BEGIN_OPTION: "IMMEDIATE"})
        with connection.begin():
            yield connection


@contextmanager
def _session_write_transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    bind = factory.kw.get("bind")
    with _writer_queue(bind if isinstance(bind, Engine) else None), factory() as session, session.begin():
        # Procure the connection now, with the option, so the SQLite begin hook sees it (harmless elsewhere).
        session.connection(execution_options={_SQLITE_BEGIN_OPTION: "IMMEDIATE"})
        yield session


def make_metadata() -> MetaData:
    """A fresh MetaData with xsha's constraint naming convention; one per service's DeclarativeBase."""
    return MetaData(naming_convention=dict(NAMING_CONVENTION))


# ------------------------------------------------------------------------------------------ transient errors

# MySQL/MariaDB error codes worth retrying: the connection is gone, or the transaction lost a lock race.
_MYSQL_TRANSIENT_CODES: Final = frozenset(
    {
        1040,  # too many connections
        1053,  # server shutdown in progress
        1205,  # lock wait timeout exceeded
        1213,  # deadlock found
        1317,  # query interrupted
        1927,  # MariaDB: connection killed
        2002,  # can't connect (socket)
        2003,  # can't connect (TCP)
        2006,  # server has gone away
        2013,  # lost connection during query
        2014,  # commands out of sync (connection left in a bad state)
        2055,  # lost connection (system error)
        4031,  # MySQL 8: disconnected by the server for inactivity
    }
)
# PostgreSQL SQLSTATEs worth retrying (class 08, connection exceptions, is matched by prefix).
_PG_TRANSIENT_SQLSTATES: Final = frozenset(
    {
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "55P03",  # lock_not_available
        "53300",  # too_many_connections
        "57P01",  # admin_shutdown (also pg_terminate_backend)
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now (starting up / recovering)
        "25P03",  # idle_in_transaction_session_timeout: the server ended a transaction left waiting
    }
)
_SQLITE_BUSY: Final = 5
_SQLITE_LOCKED: Final = 6


def is_transient_db_error(exc: BaseException) -> bool:
    """True when retrying the whole transaction may succeed: connection lost or refused, deadlock, lock wait
    timeout, serialization failure, SQLite "database is locked". False for everything else (constraint
    violations, syntax errors, missing tables...), which a retry would only repeat.
    """
    if isinstance(exc, sa_exc.TimeoutError | sa_exc.DisconnectionError):
        return True  # pool checkout timed out / pool saw a dead connection
    orig: BaseException | None = exc
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        orig = exc.orig
    if orig is None:
        return False
    if isinstance(orig, sqlite3.OperationalError):
        code = getattr(orig, "sqlite_errorcode", None)
        if isinstance(code, int) and code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED):
            return True
        message = str(orig).lower()
        return "database is locked" in message or "database table is locked" in message
    if isinstance(orig, psycopg.Error):
        sqlstate = orig.sqlstate
        if sqlstate is None:
            # Raised by libpq itself (refused, reset, closed): no server verdict, so the link is the problem.
            return isinstance(orig, psycopg.OperationalError | psycopg.InterfaceError)
        return sqlstate.startswith("08") or sqlstate in _PG_TRANSIENT_SQLSTATES
    if type(orig).__module__.startswith("pymysql"):  # PyMySQL ships no type stubs, so match it by module
        if type(orig).__name__ == "InterfaceError":
            return True  # PyMySQL's "connection already closed"
        code = orig.args[0] if orig.args else None
        return isinstance(code, int) and code in _MYSQL_TRANSIENT_CODES
    return False


def retry_transient(
    fn: Callable[[], T],
    *,
    attempts: int = 8,
    backoff: float = 0.2,
    max_backoff: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fn`` and retry it while it raises a transient database error, with jittered exponential backoff.

    ``fn`` must be a whole transaction (open, work, commit), since a transient error aborts the transaction.
    The defaults wait about 9 s in total, enough to ride out a 5 s database outage.
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    delay = backoff
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if attempt == attempts or not is_transient_db_error(exc):
                raise
            # Jitter so replicas that failed together do not retry in lockstep.
            pause = min(delay, max_backoff) * random.uniform(0.5, 1.0)
            log.warning(
                "transient database error (attempt %d/%d), retrying in %.2fs: %s", attempt, attempts, pause, exc
            )
            sleep(pause)
            delay *= 2
    raise AssertionError("unreachable")


# ------------------------------------------------------------------------------------------------- Alembic

_URL_ATTRIBUTE: Final = "xsha_url"
_VERSION_TABLE_ATTRIBUTE: Final = "xsha_version_table"


def _migrations_dir(service_package: str) -> Path:
    directory = Path(str(resources.files(service_package) / "migrations"))
    if not (directory / "env.py").is_file():
        raise FileNotFoundError(f"{service_package} has no migrations/env.py (looked in {directory})")
    return directory


def alembic_config(service_package: str, url: str | URL, version_table: str) -> Config:
    """An Alembic Config for ``<service_package>/migrations`` against ``url``, built without an alembic.ini."""
    parsed = normalize_url(url)
    config = Config()
    config.set_main_option("script_location", str(_migrations_dir(service_package)))
    config.set_main_option("path_separator", "os")
    # Config goes through configparser interpolation, so a literal % (e.g. in a password) must be doubled.
    config.set_main_option("sqlalchemy.url", parsed.render_as_string(hide_password=False).replace("%", "%%"))
    config.attributes[_URL_ATTRIBUTE] = parsed
    config.attributes[_VERSION_TABLE_ATTRIBUTE] = version_table
    return config


def upgrade_to_head(service_package: str, url: str | URL, version_table: str) -> None:
    """Apply every pending migration of the service."""
    command.upgrade(alembic_config(service_package, url, version_table), "head")


def downgrade_to_base(service_package: str, url: str | URL, version_table: str) -> None:
    """Revert every migration of the service (drops its tables; other services' tables are untouched)."""
    command.downgrade(alembic_config(service_package, url, version_table), "base")


def head_revision(service_package: str) -> str | None:
    """The head revision of the service's migration history (None when it has no revisions)."""
    config = Config()
    config.set_main_option("script_location", str(_migrations_dir(service_package)))
    config.set_main_option("path_separator", "os")
    return ScriptDirectory.from_config(config).get_current_head()


def current_revision(url: str | URL, version_table: str) -> str | None:
    """The revision recorded in ``version_table`` (None for a database the service never migrated)."""
    engine = create_engine_for(url, pool_size=1, max_overflow=0)
    try:
        with engine.connect() as connection:
            migration = MigrationContext.configure(connection, opts={"version_table": version_table})
            return migration.get_current_revision()
    finally:
        engine.dispose()


def default_auto_upgrade(url: str | URL) -> bool:
    """Whether a service upgrades its schema at start-up by default: yes on SQLite (embedded, one replica),
    no on shared servers, where an operator decides when schema changes roll out."""
    return backend_of(url) == "sqlite"


def ensure_schema(service_package: str, url: str | URL, version_table: str, *, auto_upgrade: bool | None) -> None:
    """Start-up check: upgrade to head when ``auto_upgrade`` (None means ``default_auto_upgrade(url)``), otherwise
    raise SchemaNotCurrentError unless the database is already at head."""
    if auto_upgrade is None:
        auto_upgrade = default_auto_upgrade(url)
    if auto_upgrade:
        upgrade_to_head(service_package, url, version_table)
        return
    current, head = current_revision(url, version_table), head_revision(service_package)
    if current != head:
        raise SchemaNotCurrentError(
            f"{service_package}: database schema is at revision {current or '<empty>'}, this version needs {head}; "
            "upgrade it (automatic schema upgrade is off for this database)"
        )


def run_migrations_online(target_metadata: MetaData, version_table: str) -> None:
    """The whole body of a service's ``migrations/env.py``. With ``alembic --sql`` (offline mode) it renders SQL.

    Uses the URL from ``alembic_config`` (or ``sqlalchemy.url`` when run from the alembic CLI). Batch mode is
    always on so autogenerated migrations also work on SQLite, whose ALTER TABLE is limited.
    """
    config = context.config
    expected = config.attributes.get(_VERSION_TABLE_ATTRIBUTE)
    if expected is not None and expected != version_table:
        raise RuntimeError(f"env.py uses version table {version_table!r} but was invoked for {expected!r}")
    url = config.attributes.get(_URL_ATTRIBUTE) or normalize_url(config.get_main_option("sqlalchemy.url") or "")
    options: dict[str, Any] = {
        "target_metadata": target_metadata,
        "version_table": version_table,
        "render_as_batch": True,
        "compare_type": True,
    }
    if context.is_offline_mode():
        context.configure(url=url, literal_binds=True, dialect_opts={"paramstyle": "named"}, **options)
        with context.begin_transaction():
            context.run_migrations()
        return

    engine = create_engine_for(url, pool_size=1, max_overflow=0)
    try:
        with engine.connect() as connection:
            backend = backend_of(connection)
            if backend == "sqlite":
                # Batch migrations recreate tables; with foreign keys enforced, dropping a referenced table would
                # fail or cascade. The pragma is ignored inside a transaction, so it goes to the driver first.
                connection.connection.driver_connection.execute("PRAGMA foreign_keys = OFF")  # type: ignore[union-attr]
                # Our begin hook makes SQLite DDL transactional, so a failed upgrade rolls back completely.
                options["transactional_ddl"] = True
            with _migration_lock(connection, version_table):
                context.configure(connection=connection, **options)
                with context.begin_transaction():
                    context.run_migrations()
                    if backend == "sqlite":
                        violations = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                        if violations:
                            raise RuntimeError(f"migration left foreign key violations: {violations[:10]}")
    finally:
        engine.dispose()


@contextmanager
def _migration_lock(connection: Connection, version_table: str) -> Iterator[None]:
    """Serialise concurrent start-ups of several replicas migrating the same database (MySQL, PostgreSQL).

    Session-level locks, committed right away so Alembic finds no transaction already open on the connection.
    """
    backend = backend_of(connection)
    params: dict[str, Any]
    if backend == "sqlite":
        yield  # one replica only; SQLite serialises writers anyway
        return
    if backend == "postgresql":
        key = zlib.crc32(f"xsha-migrate:{version_table}".encode())  # advisory locks are per database already
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
        release, params = "SELECT pg_advisory_unlock(:key)", {"key": key}
    else:
        # GET_LOCK names are server-wide and at most 64 characters: hash database and table into one.
        database = connection.exec_driver_sql("SELECT DATABASE()").scalar()
        name = "xsha-migrate-" + hashlib.sha1(f"{database}:{version_table}".encode()).hexdigest()[:32]
        acquired = connection.execute(text("SELECT GET_LOCK(:name, 600)"), {"name": name}).scalar()
        if acquired != 1:
            raise RuntimeError(f"timed out waiting for the migration lock of {version_table}")
        release, params = "SELECT RELEASE_LOCK(:name)", {"name": name}
    connection.commit()
    try:
        yield
    finally:
        try:
            connection.rollback()  # a failed migration may leave an aborted transaction behind
            connection.execute(text(release), params)
            connection.commit()
        except sa_exc.DBAPIError:
            log.warning("could not release the migration lock; it goes away with the connection", exc_info=True)


def _redact(url: str | URL) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sa_exc.ArgumentError:
        return "<unparseable URL>"

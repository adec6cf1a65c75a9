"""xsha_common.db on SQLite, MariaDB and PostgreSQL (the latter two when their XSHA_TEST_* URLs are set)."""

from __future__ import annotations

import sqlite3
import textwrap
import threading
import uuid
from pathlib import Path

import psycopg
import pymysql  # type: ignore[import-untyped]
import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tests.harness.db_locks import bound_lock_wait
from xsha_common import db


def _on(*backends: db.Backend) -> pytest.MarkDecorator:
    """Run a db_url/db_engine test only on some backends (overrides the suite-wide parametrisation)."""
    return pytest.mark.parametrize(
        "db_backend", [pytest.param(b, id=b, marks=getattr(pytest.mark, b)) for b in backends]
    )


# ----------------------------------------------------------------------------------------------- URL handling


@pytest.mark.parametrize(
    ("given", "expected_driver"),
    [
        ("sqlite:////var/lib/xsha/sync.sqlite", "sqlite"),
        ("sqlite+pysqlite:///rel.sqlite", "sqlite"),
        ("mysql://u:p@db/xsha", "mysql+pymysql"),
        ("mariadb://u:p@db/xsha", "mysql+pymysql"),
        ("mysql+pymysql://u:p@db/xsha", "mysql+pymysql"),
        ("postgresql://u:p@db/xsha", "postgresql+psycopg"),
        ("postgres://u:p@db/xsha", "postgresql+psycopg"),
        ("postgresql+psycopg://u:p@db/xsha", "postgresql+psycopg"),
    ],
)
def test_normalize_url_maps_accepted_schemes_to_shipped_drivers(given: str, expected_driver: str) -> None:
    url = db.normalize_url(given)
    assert url.drivername == expected_driver
    if expected_driver == "mysql+pymysql":
        assert url.query["charset"] == "utf8mb4"
        assert url.password == "p"


@pytest.mark.parametrize(
    ("given", "complaint"),
    [
        ("oracle://u:p@db/xsha", "unsupported database URL scheme 'oracle'"),
        ("postgresql+psycopg2://u:p@db/xsha", "unsupported database URL scheme 'postgresql+psycopg2'"),
        ("mysql+mysqldb://u:p@db/xsha", "unsupported database URL scheme"),
        ("sqlite://", "in-memory SQLite is not supported"),
        ("sqlite:///:memory:", "in-memory SQLite is not supported"),
        ("mysql://u:p@db/xsha?charset=latin1", "utf8mb4"),
        ("not a url", "not a database URL"),
    ],
)
def test_unsupported_urls_are_refused_clearly(given: str, complaint: str) -> None:
    with pytest.raises(db.UnsupportedDatabaseURLError, match=complaint.replace("+", r"\+")) as raised:
        db.create_engine_for(given)
    assert ":p@" not in str(raised.value)  # the password never reaches the message


# ------------------------------------------------------------------------------------------------- engines


def test_engine_connects_and_reports_backend(db_backend: db.Backend, db_engine: Engine) -> None:
    assert db.backend_of(db_engine) == db_backend
    with db_engine.connect() as connection:
        assert connection.execute(sa.text("SELECT 1")).scalar() == 1


def test_sqlite_pragmas_in_effect_on_every_pooled_connection(tmp_path: Path) -> None:
    engine = db.create_engine_for(f"sqlite:///{tmp_path / 'p.sqlite'}", sqlite_busy_timeout_ms=1234)
    try:
        connections = [engine.connect() for _ in range(3)]  # distinct pooled connections
        for connection in connections:
            pragma = connection.exec_driver_sql
            assert pragma("PRAGMA journal_mode").scalar() == "wal"
            assert pragma("PRAGMA foreign_keys").scalar() == 1
            assert pragma("PRAGMA busy_timeout").scalar() == 1234
            assert pragma("PRAGMA synchronous").scalar() == 1  # NORMAL
        for connection in connections:
            connection.close()
    finally:
        engine.dispose()


@_on("mysql")
def test_mysql_engine_uses_utf8mb4_and_read_committed(db_engine: Engine) -> None:
    with db_engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT @@character_set_client").scalar() == "utf8mb4"
        assert connection.exec_driver_sql("SELECT @@tx_isolation").scalar() == "READ-COMMITTED"
        connection.exec_driver_sql("CREATE TABLE emoji (t VARCHAR(10))")
        connection.execute(sa.text("INSERT INTO emoji VALUES (:t)"), {"t": "vm-🚀"})
        assert connection.exec_driver_sql("SELECT t FROM emoji").scalar() == "vm-🚀"


def test_dead_server_fails_fast_and_is_transient() -> None:
    # Nothing listens on port 1; connect_timeout bounds the case where packets are dropped instead.
    for url in ("mysql+pymysql://root@127.0.0.1:1/x", "postgresql+psycopg://postgres@127.0.0.1:1/x"):
        engine = db.create_engine_for(url, connect_timeout=2)
        try:
            with pytest.raises(OperationalError) as raised, engine.connect():
                pass
            assert db.is_transient_db_error(raised.value)
        finally:
            engine.dispose()


# --------------------------------------------------------------------------------------- write transactions


class _Base(DeclarativeBase):
    metadata = db.make_metadata()


class _Counter(_Base):
    __tablename__ = "counter"
    id: Mapped[int] = mapped_column(primary_key=True)
    value: Mapped[int]


def test_metadata_names_constraints_by_convention() -> None:
    metadata = db.make_metadata()
    table = sa.Table(
        "hosts",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("pool_id", sa.ForeignKey("pools.id")),
        sa.Column("uuid", sa.String(36), unique=True),
        sa.Column("name", sa.String(10), index=True),
    )
    sa.Table("pools", metadata, sa.Column("id", sa.Integer, primary_key=True))
    names = {constraint.name for constraint in table.constraints} | {index.name for index in table.indexes}
    assert names == {"pk_hosts", "fk_hosts_pool_id_pools", "uq_hosts_uuid", "ix_hosts_name"}
    assert db.make_metadata() is not metadata  # each service gets its own


def test_write_transaction_commits_and_rolls_back(db_engine: Engine) -> None:
    _Base.metadata.create_all(db_engine)
    factory = db.make_sessionmaker(db_engine)
    with db.write_transaction(factory) as session:
        session.add(_Counter(id=1, value=1))
    with pytest.raises(RuntimeError), db.write_transaction(db_engine) as connection:
        connection.execute(sa.update(_Counter).values(value=99))
        raise RuntimeError("abort")
    with factory() as session:
        assert session.get_one(_Counter, 1).value == 1


@pytest.mark.parametrize("via", ["engine", "sessionmaker"])
def test_sqlite_write_transaction_takes_the_write_lock_up_front(tmp_path: Path, via: str) -> None:
    url = f"sqlite:///{tmp_path / 'lock.sqlite'}"
    holder = db.create_engine_for(url)
    contender = db.create_engine_for(url, sqlite_busy_timeout_ms=1)
    try:
        _Base.metadata.create_all(holder)
        # A deferred transaction that has not written yet leaves the database free for other writers ...
        with holder.begin() as connection:
            connection.execute(sa.select(_Counter)).all()
            with contender.begin() as other:
                other.execute(sa.insert(_Counter).values(id=1, value=0))
        # ... write_transaction holds the write lock from BEGIN, before any statement.
        cm = db.write_transaction(holder) if via == "engine" else db.write_transaction(db.make_sessionmaker(holder))
        with cm:
            with pytest.raises(OperationalError, match="database is locked") as raised, contender.begin() as other:
                other.execute(sa.update(_Counter).values(value=1))
            assert db.is_transient_db_error(raised.value)
    finally:
        holder.dispose()
        contender.dispose()


def test_concurrent_read_modify_write_on_sqlite_does_not_deadlock(tmp_path: Path) -> None:
    engine = db.create_engine_for(f"sqlite:///{tmp_path / 'rmw.sqlite'}", pool_size=4)
    _Base.metadata.create_all(engine)
    with db.write_transaction(engine) as connection:
        connection.execute(sa.insert(_Counter).values(id=1, value=0))
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(25):
                # Read then write: with deferred BEGIN two of these would deadlock on the lock upgrade.
                with db.write_transaction(engine) as connection:
                    value = connection.execute(sa.select(_Counter.value)).scalar_one()
                    connection.execute(sa.update(_Counter).values(value=value + 1))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        with engine.connect() as connection:
            assert connection.execute(sa.select(_Counter.value)).scalar_one() == 100
    finally:
        engine.dispose()


@pytest.mark.parametrize("via", ["engine", "sessionmaker"])
def test_sqlite_writers_of_one_process_queue_instead_of_timing_out(tmp_path: Path, via: str) -> None:
    # A busy_timeout far shorter than the wait for the lock: writers left to SQLite's busy handler would fail
    # with "database is locked"; writers queued in-process all get their turn.
    engine = db.create_engine_for(f"sqlite:///{tmp_path / 'queue.sqlite'}", pool_size=16, sqlite_busy_timeout_ms=1)
    _Base.metadata.create_all(engine)
    with db.write_transaction(engine) as connection:
        connection.execute(sa.insert(_Counter).values(id=1, value=0))
    factory = db.make_sessionmaker(engine)
    errors: list[BaseException] = []
    start = threading.Barrier(16)

    def work() -> None:
        start.wait()
        try:
            for _ in range(5):
                if via == "engine":
                    with db.write_transaction(engine) as connection:
                        value = connection.execute(sa.select(_Counter.value)).scalar_one()
                        connection.execute(sa.update(_Counter).values(value=value + 1))
                else:
                    with db.write_transaction(factory) as session:
                        session.get_one(_Counter, 1).value += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        with engine.connect() as connection:
            assert connection.execute(sa.select(_Counter.value)).scalar_one() == 80
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------------------- transient errors


def _wrap(orig: Exception) -> DBAPIError:
    wrapped = DBAPIError.instance("SELECT 1", {}, orig, Exception)
    assert isinstance(wrapped, DBAPIError)
    return wrapped


@pytest.mark.parametrize(
    ("orig", "transient"),
    [
        (pymysql.err.OperationalError(1213, "Deadlock found when trying to get lock"), True),
        (pymysql.err.OperationalError(1205, "Lock wait timeout exceeded"), True),
        (pymysql.err.OperationalError(2013, "Lost connection to MySQL server during query"), True),
        (pymysql.err.OperationalError(2006, "MySQL server has gone away"), True),
        (pymysql.err.InterfaceError(0, ""), True),
        (pymysql.err.IntegrityError(1062, "Duplicate entry"), False),
        (pymysql.err.ProgrammingError(1146, "Table doesn't exist"), False),
        (psycopg.errors.SerializationFailure("could not serialize access"), True),
        (psycopg.errors.DeadlockDetected("deadlock detected"), True),
        (psycopg.errors.LockNotAvailable("canceling statement due to lock timeout"), True),
        (psycopg.errors.AdminShutdown("terminating connection due to administrator command"), True),
        (psycopg.OperationalError("connection failed: Connection refused"), True),
        (psycopg.errors.UniqueViolation("duplicate key"), False),
        (psycopg.errors.UndefinedTable("relation does not exist"), False),
        (sqlite3.OperationalError("database is locked"), True),
        (sqlite3.OperationalError("no such table: x"), False),
        (sqlite3.IntegrityError("UNIQUE constraint failed"), False),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else str(value),
)
def test_error_classification(orig: Exception, transient: bool) -> None:
    assert db.is_transient_db_error(_wrap(orig)) is transient


def test_pool_timeout_and_other_errors_classification() -> None:
    assert db.is_transient_db_error(sa.exc.TimeoutError("QueuePool limit reached"))
    assert not db.is_transient_db_error(ValueError("not a database error"))


def test_retry_transient_retries_only_transient_errors_and_gives_up() -> None:
    pauses: list[float] = []
    calls = 0

    def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise _wrap(sqlite3.OperationalError("database is locked"))
        return "done"

    assert db.retry_transient(flaky, attempts=5, backoff=0.1, sleep=pauses.append) == "done"
    assert calls == 3 and len(pauses) == 2 and pauses[1] > pauses[0] / 2

    def permanent() -> None:
        raise _wrap(sqlite3.IntegrityError("UNIQUE constraint failed"))

    with pytest.raises(IntegrityError):
        db.retry_transient(permanent, sleep=pauses.append)
    assert len(pauses) == 2  # no retry of a permanent error

    def always_locked() -> None:
        raise _wrap(sqlite3.OperationalError("database is locked"))

    with pytest.raises(OperationalError):
        db.retry_transient(always_locked, attempts=3, sleep=pauses.append)
    assert len(pauses) == 4


def _session_id_and_killer(db_backend: db.Backend) -> tuple[str, str]:
    if db_backend == "mysql":
        return "SELECT CONNECTION_ID()", "KILL {}"
    return "SELECT pg_backend_pid()", "SELECT pg_terminate_backend({})"


@_on("mysql", "postgresql")  # SQLite has no server connection to kill
def test_killed_connection_is_transient_and_retry_recovers(db_backend: db.Backend, db_url: str) -> None:
    whoami, kill = _session_id_and_killer(db_backend)
    engine = db.create_engine_for(db_url, pool_size=1, max_overflow=0)
    admin = db.create_engine_for(db_url, pool_size=1, max_overflow=0)
    attempts: list[BaseException | None] = []

    def transaction() -> int:
        with engine.begin() as connection:
            session_id = connection.exec_driver_sql(whoami).scalar()
            if not attempts:
                with admin.begin() as other:  # the database "goes away" under the first attempt
                    other.exec_driver_sql(kill.format(session_id))
            try:
                value = connection.execute(sa.text("SELECT 41 + 1")).scalar_one()
            except DBAPIError as exc:
                attempts.append(exc)
                raise
            attempts.append(None)
            return int(value)

    try:
        assert db.retry_transient(transaction, backoff=0.01) == 42
        assert len(attempts) == 2 and isinstance(attempts[0], DBAPIError) and attempts[1] is None
        assert db.is_transient_db_error(attempts[0])
    finally:
        engine.dispose()
        admin.dispose()


@_on("mysql", "postgresql")  # SQLite: see the write-lock test
def test_lock_timeout_is_transient_on_servers(db_backend: db.Backend, db_engine: Engine) -> None:
    _Base.metadata.create_all(db_engine)
    with db_engine.begin() as connection:
        connection.execute(sa.insert(_Counter).values(id=1, value=0))
    short_wait = "SET innodb_lock_wait_timeout = 1" if db_backend == "mysql" else "SET lock_timeout = '200ms'"
    with db.write_transaction(db_engine) as holder:
        holder.execute(sa.update(_Counter).values(value=1))  # row lock held until the block ends
        with pytest.raises(OperationalError) as raised, db_engine.begin() as waiter:
            waiter.exec_driver_sql(short_wait)
            waiter.execute(sa.update(_Counter).values(value=2))
    assert db.is_transient_db_error(raised.value)
    with pytest.raises(IntegrityError) as duplicate, db_engine.begin() as connection:
        connection.execute(sa.insert(_Counter).values(id=1, value=0))
    assert not db.is_transient_db_error(duplicate.value)


# ------------------------------------------------------------------------------------------------- Alembic

_ENV_PY = """
from xsha_common.db import make_metadata, run_migrations_online

run_migrations_online(make_metadata(), {version_table!r})
"""


def _write_service(root: Path, version_table: str, revisions: dict[str, str]) -> str:
    """A throwaway importable service package with a migrations/ dir; returns its (unique) package name."""
    package = f"xsha_t_svc_{uuid.uuid4().hex[:10]}"
    versions = root / package / "migrations" / "versions"
    versions.mkdir(parents=True)
    (root / package / "__init__.py").write_text("")
    (root / package / "migrations" / "env.py").write_text(_ENV_PY.format(version_table=version_table))
    for filename, body in revisions.items():
        (versions / filename).write_text(textwrap.dedent(body))
    return package


_SERVICE_A_REVISIONS = {
    "a1_parents.py": """
        import sqlalchemy as sa
        from alembic import op

        revision = "a1"
        down_revision = None

        def upgrade():
            op.create_table("a_parent", sa.Column("id", sa.Integer, primary_key=True),
                            sa.PrimaryKeyConstraint("id", name=op.f("pk_a_parent")))
            op.create_table("a_child", sa.Column("id", sa.Integer),
                            sa.Column("parent_id", sa.Integer, nullable=False),
                            sa.PrimaryKeyConstraint("id", name=op.f("pk_a_child")),
                            sa.ForeignKeyConstraint(["parent_id"], ["a_parent.id"],
                                                    name=op.f("fk_a_child_parent_id_a_parent")))
            op.execute("INSERT INTO a_parent (id) VALUES (1)")
            op.execute("INSERT INTO a_child (id, parent_id) VALUES (1, 1)")

        def downgrade():
            op.drop_table("a_child")
            op.drop_table("a_parent")
    """,
    "a2_parent_name.py": """
        import sqlalchemy as sa
        from alembic import op

        revision = "a2"
        down_revision = "a1"

        # On SQLite this recreates a_parent while a_child rows reference it: needs foreign keys off meanwhile.
        def upgrade():
            with op.batch_alter_table("a_parent") as batch:
                batch.add_column(sa.Column("name", sa.String(40), nullable=False, server_default="p"))
                batch.create_unique_constraint(op.f("uq_a_parent_name"), ["name"])

        def downgrade():
            with op.batch_alter_table("a_parent") as batch:
                batch.drop_constraint(op.f("uq_a_parent_name"), type_="unique")
                batch.drop_column("name")
    """,
}

_SERVICE_B_REVISIONS = {
    "b1_things.py": """
        import sqlalchemy as sa
        from alembic import op

        revision = "b1"
        down_revision = None

        def upgrade():
            op.create_table("b_thing", sa.Column("id", sa.Integer),
                            sa.PrimaryKeyConstraint("id", name=op.f("pk_b_thing")))

        def downgrade():
            op.drop_table("b_thing")
    """,
}


def _tables(url: str) -> set[str]:
    engine = db.create_engine_for(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_two_services_share_one_database_through_separate_histories(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    service_a = _write_service(tmp_path, "alembic_version_a", _SERVICE_A_REVISIONS)
    service_b = _write_service(tmp_path, "alembic_version_b", _SERVICE_B_REVISIONS)
    assert db.current_revision(db_url, "alembic_version_a") is None
    assert db.head_revision(service_a) == "a2"

    db.upgrade_to_head(service_a, db_url, "alembic_version_a")
    db.upgrade_to_head(service_b, db_url, "alembic_version_b")
    assert _tables(db_url) == {"a_parent", "a_child", "alembic_version_a", "b_thing", "alembic_version_b"}
    assert db.current_revision(db_url, "alembic_version_a") == "a2"
    assert db.current_revision(db_url, "alembic_version_b") == "b1"

    engine = db.create_engine_for(db_url)
    try:
        inspector = sa.inspect(engine)
        assert {c["name"] for c in inspector.get_unique_constraints("a_parent")} == {"uq_a_parent_name"}
        assert [fk["name"] for fk in inspector.get_foreign_keys("a_child")] == ["fk_a_child_parent_id_a_parent"]
        with engine.connect() as connection:  # data survived the table rebuild, foreign keys enforced again
            assert connection.exec_driver_sql("SELECT name FROM a_parent").scalars().all() == ["p"]
            with pytest.raises(IntegrityError):
                connection.exec_driver_sql("INSERT INTO a_child (id, parent_id) VALUES (2, 999)")
    finally:
        engine.dispose()

    db.upgrade_to_head(service_a, db_url, "alembic_version_a")  # idempotent
    db.downgrade_to_base(service_a, db_url, "alembic_version_a")
    assert _tables(db_url) == {"alembic_version_a", "b_thing", "alembic_version_b"}
    assert db.current_revision(db_url, "alembic_version_a") is None
    assert db.current_revision(db_url, "alembic_version_b") == "b1"  # the other service is untouched

    db.downgrade_to_base(service_b, db_url, "alembic_version_b")
    assert db.current_revision(db_url, "alembic_version_b") is None
    assert _tables(db_url) <= {"alembic_version_a", "alembic_version_b"}


def test_ensure_schema_upgrades_by_default_only_on_sqlite(
    db_backend: db.Backend, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    service = _write_service(tmp_path, "alembic_version_b", _SERVICE_B_REVISIONS)
    assert db.default_auto_upgrade(db_url) is (db_backend == "sqlite")
    if db_backend != "sqlite":
        with pytest.raises(db.SchemaNotCurrentError, match="needs b1"):
            db.ensure_schema(service, db_url, "alembic_version_b", auto_upgrade=None)
    db.ensure_schema(service, db_url, "alembic_version_b", auto_upgrade=db_backend != "sqlite" or None)
    assert db.current_revision(db_url, "alembic_version_b") == "b1"
    db.ensure_schema(service, db_url, "alembic_version_b", auto_upgrade=False)  # at head: passes


def test_env_py_refuses_a_mismatched_version_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    service = _write_service(tmp_path, "alembic_version_b", _SERVICE_B_REVISIONS)
    with pytest.raises(RuntimeError, match="version table 'alembic_version_b'"):
        db.upgrade_to_head(service, f"sqlite:///{tmp_path / 'x.sqlite'}", "alembic_version_sync")


def test_missing_migrations_dir_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    package = f"xsha_t_empty_{uuid.uuid4().hex[:10]}"
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
    with pytest.raises(FileNotFoundError, match=r"has no migrations/env\.py"):
        db.alembic_config(package, f"sqlite:///{tmp_path / 'x.sqlite'}", "alembic_version_x")


def test_offline_mode_renders_sql_for_a_dba(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    service = _write_service(tmp_path, "alembic_version_b", _SERVICE_B_REVISIONS)
    # No server needed: `alembic upgrade --sql` only renders.
    command.upgrade(
        db.alembic_config(service, "postgresql://nobody@127.0.0.1:1/x", "alembic_version_b"), "head", sql=True
    )
    rendered = capsys.readouterr().out
    assert "CREATE TABLE b_thing" in rendered and "CREATE TABLE alembic_version_b" in rendered


@pytest.mark.parametrize("db_backend", [pytest.param("mysql", marks=pytest.mark.mysql), "postgresql"])
def test_a_transaction_left_waiting_on_its_client_is_ended_and_its_locks_freed(db_url: str) -> None:
    """A replica frozen inside a transaction (SIGSTOP, a paused VM) must not hold its row locks for as long as it
    sleeps: the server ends the session after `idle_transaction_timeout`, and the client's next statement fails
    with an error the retries treat as transient."""
    engine = db.create_engine_for(db_url, idle_transaction_timeout=1.0)
    other = db.create_engine_for(db_url)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE held (id INTEGER PRIMARY KEY, value INTEGER)")
            connection.exec_driver_sql("INSERT INTO held (id, value) VALUES (1, 0)")
        frozen = engine.connect()
        frozen.begin()
        frozen.exec_driver_sql("UPDATE held SET value = 1 WHERE id = 1")  # holds the row's lock
        # Another session waits for that lock; it gets it once the server has ended the idle transaction (and
        # gives up after 20 s, so the test fails rather than hangs when it is never ended).
        with other.connect() as connection:
            bound_lock_wait(connection, db.backend_of(connection), 20)
            connection.exec_driver_sql("UPDATE held SET value = 2 WHERE id = 1")
            connection.commit()
        with pytest.raises(DBAPIError) as raised:
            frozen.exec_driver_sql("UPDATE held SET value = 3 WHERE id = 1")
        assert db.is_transient_db_error(raised.value), raised.value
        frozen.close()
        with other.connect() as connection:
            assert connection.exec_driver_sql("SELECT value FROM held WHERE id = 1").scalar_one() == 2
    finally:
        engine.dispose()
        other.dispose()

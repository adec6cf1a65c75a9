"""sync_service's tables (prefixed `sync_`), with their own metadata and Alembic history (`alembic_version_sync`)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Double,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from xsha_common.db import make_metadata

VERSION_TABLE = "alembic_version_sync"
REVISION_COUNTER = "revision"
COMPACTED_THROUGH = "compacted_through"

# Lengths: cluster ids are validated to 64; uuids 36; refs "OpaqueRef:" + uuid = 46; URLs 2048.
_ID = 64
_UUID = 64
_REF = 128
_NAME = 255
_URL = 2048
# Up to 16 MiB on MySQL/MariaDB (plain TEXT stops at 64 KiB); TEXT elsewhere.
# Microsecond timestamps on MySQL/MariaDB (plain DATETIME drops fractions).
Timestamp = DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
LongText = Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")


class Base(DeclarativeBase):
    metadata = make_metadata()


class PoolRow(Base):
    __tablename__ = "sync_pools"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    cluster_id: Mapped[str] = mapped_column(String(_ID), unique=True)
    master_url: Mapped[str] = mapped_column(String(_URL))
    # Fernet token of the credentials; never leaves the process in any other form.
    credentials_encrypted: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    tls_ca_bundle_pem: Mapped[str] = mapped_column(LongText, default="")
    tls_fingerprint: Mapped[str] = mapped_column(String(128), default="")
    tls_insecure: Mapped[bool] = mapped_column(Boolean, default=False)
    register_request_id: Mapped[str] = mapped_column(String(_NAME), default="")
    # Bumped on each configuration change, so the watcher knows to reconnect.
    config_generation: Mapped[int] = mapped_column(Integer, default=1)
    # Facts mirrored from XAPI.
    pool_uuid: Mapped[str] = mapped_column(String(_UUID), default="")
    name: Mapped[str] = mapped_column(String(_NAME), default="")
    api_version_major: Mapped[int] = mapped_column(Integer, default=0)
    api_version_minor: Mapped[int] = mapped_column(Integer, default=0)
    product_brand: Mapped[str] = mapped_column(String(_NAME), default="")
    product_version: Mapped[str] = mapped_column(String(_NAME), default="")
    platform_version: Mapped[str] = mapped_column(String(_NAME), default="")
    build_number: Mapped[str] = mapped_column(String(_NAME), default="")
    ha_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    ha_host_failures_to_tolerate: Mapped[int] = mapped_column(BigInteger, default=0)
    ha_plan_exists_for: Mapped[int] = mapped_column(BigInteger, default=0)
    ha_allow_overcommit: Mapped[bool] = mapped_column(Boolean, default=False)
    ha_overcommitted: Mapped[bool] = mapped_column(Boolean, default=False)
    master_host_uuid: Mapped[str] = mapped_column(String(_UUID), default="")
    # Watch state, written in the same transaction as the batch it follows.
    event_token: Mapped[str] = mapped_column(String(_NAME), default="")
    # JSON: known host addresses, and the refs the watcher holds but does not mirror (for valid_ref_counts).
    host_addresses: Mapped[str] = mapped_column(LongText, default="[]")
    watch_state: Mapped[str] = mapped_column(LongText, default="{}")
    # Sync status.
    sync_state: Mapped[str] = mapped_column(String(32), default="IDLE")
    connected: Mapped[bool] = mapped_column(Boolean, default=False)
    wire_format: Mapped[str] = mapped_column(String(16), default="")
    connected_url: Mapped[str] = mapped_column(String(_URL), default="")
    last_event_time: Mapped[dt.datetime | None] = mapped_column(Timestamp, nullable=True)
    lag_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    last_full_sync_time: Mapped[dt.datetime | None] = mapped_column(Timestamp, nullable=True)
    events_applied: Mapped[int] = mapped_column(BigInteger, default=0)
    reconnects: Mapped[int] = mapped_column(BigInteger, default=0)
    last_error: Mapped[str] = mapped_column(Text, default="")
    last_error_time: Mapped[dt.datetime | None] = mapped_column(Timestamp, nullable=True)
    owner: Mapped[str] = mapped_column(String(_NAME), default="")
    revision: Mapped[int] = mapped_column(BigInteger, default=0)
    # Set to a new random value by every transaction that writes the pool's mirror rows, so a replica knows
    # whether its cached rows of the pool are still the database's (see store/row_cache.py).
    rows_stamp: Mapped[int] = mapped_column(BigInteger, default=0)
    create_time: Mapped[dt.datetime] = mapped_column(Timestamp)
    update_time: Mapped[dt.datetime] = mapped_column(Timestamp)


class HostRow(Base):
    __tablename__ = "sync_hosts"
    __table_args__ = (UniqueConstraint("cluster_id", "uuid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    cluster_id: Mapped[str] = mapped_column(String(_ID))
    uuid: Mapped[str] = mapped_column(String(_UUID), index=True)
    pool_uuid: Mapped[str] = mapped_column(String(_UUID), default="")
    name: Mapped[str] = mapped_column(String(_NAME), default="")
    address: Mapped[str] = mapped_column(String(_NAME), default="")
    live: Mapped[bool] = mapped_column(Boolean, default=False)
    enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    is_master: Mapped[bool] = mapped_column(Boolean, default=False)
    memory_total: Mapped[int] = mapped_column(BigInteger, default=0)
    memory_free: Mapped[int] = mapped_column(BigInteger, default=0)
    api_version_major: Mapped[int] = mapped_column(Integer, default=0)
    api_version_minor: Mapped[int] = mapped_column(Integer, default=0)
    product_brand: Mapped[str] = mapped_column(String(_NAME), default="")
    product_version: Mapped[str] = mapped_column(String(_NAME), default="")
    platform_version: Mapped[str] = mapped_column(String(_NAME), default="")
    build_number: Mapped[str] = mapped_column(String(_NAME), default="")
    removed: Mapped[bool] = mapped_column(Boolean, default=False)
    revision: Mapped[int] = mapped_column(BigInteger, default=0)
    update_time: Mapped[dt.datetime] = mapped_column(Timestamp)


class VmRow(Base):
    __tablename__ = "sync_vms"
    __table_args__ = (
        UniqueConstraint("cluster_id", "uuid"),
        Index("ix_sync_vms_cluster_id_name_label", "cluster_id", "name_label"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    cluster_id: Mapped[str] = mapped_column(String(_ID))
    uuid: Mapped[str] = mapped_column(String(_UUID), index=True)
    # XAPI ref, so a restarted watcher rebuilds its view from the mirror and resumes from the stored token.
    xapi_ref: Mapped[str] = mapped_column(String(_REF), default="")
    pool_uuid: Mapped[str] = mapped_column(String(_UUID), default="")
    name_label: Mapped[str] = mapped_column(String(_NAME), default="")
    xapi_power_state: Mapped[str] = mapped_column(String(16), default="")
    power_state: Mapped[str] = mapped_column(String(32), default="PowerUnknown")
    resident_host_uuid: Mapped[str] = mapped_column(String(_UUID), default="")
    ha_restart_priority: Mapped[str] = mapped_column(String(32), default="")
    ha_order: Mapped[int] = mapped_column(BigInteger, default=0)
    start_delay: Mapped[int] = mapped_column(BigInteger, default=0)
    ha_always_run: Mapped[bool] = mapped_column(Boolean, default=False)
    memory_static_max: Mapped[int] = mapped_column(BigInteger, default=0)
    power_state_update_time: Mapped[dt.datetime | None] = mapped_column(Timestamp, nullable=True)
    power_state_update_count: Mapped[int] = mapped_column(Integer, default=0)
    removed: Mapped[bool] = mapped_column(Boolean, default=False)
    revision: Mapped[int] = mapped_column(BigInteger, default=0)
    update_time: Mapped[dt.datetime] = mapped_column(Timestamp)


class ChangeRow(Base):
    """The change log: one row per change, in revision order, with the object's proto as of that revision."""

    __tablename__ = "sync_changes"
    # One cluster's changes in revision order, for a WatchChanges stream filtered by cluster.
    __table_args__ = (Index("ix_sync_changes_cluster_id_revision", "cluster_id", "revision"),)

    revision: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(16))
    change_type: Mapped[str] = mapped_column(String(16))
    cluster_id: Mapped[str] = mapped_column(String(_ID))
    object_key: Mapped[str] = mapped_column(String(_UUID), default="")
    commit_time: Mapped[dt.datetime] = mapped_column(Timestamp, index=True)
    # Serialized cloudstack.xsha.v1.Change, sent as it is by WatchChanges.
    payload: Mapped[bytes] = mapped_column(LargeBinary)


class CounterRow(Base):
    """Named counters: `revision` (the last allocated revision; its row lock orders commits) and
    `compacted_through` (changes up to this revision may have been deleted by retention)."""

    __tablename__ = "sync_counters"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


class RequestRow(Base):
    """Request ids of completed mutations, for idempotent retries."""

    __tablename__ = "sync_requests"

    request_id: Mapped[str] = mapped_column(String(_NAME), primary_key=True)
    method: Mapped[str] = mapped_column(String(64))
    cluster_id: Mapped[str] = mapped_column(String(_ID))
    create_time: Mapped[dt.datetime] = mapped_column(Timestamp, index=True)


class PoolLeaseRow(Base):
    """Which replica watches a pool: holder, fencing epoch (bumped on every takeover) and expiry, in epoch seconds
    of the database's clock. Every batch a watcher writes checks holder and epoch first (see sync_service.leases)."""

    __tablename__ = "sync_pool_leases"

    cluster_id: Mapped[str] = mapped_column(String(_ID), primary_key=True)
    owner: Mapped[str] = mapped_column(String(_NAME), default="")
    epoch: Mapped[int] = mapped_column(BigInteger, default=0)
    expire_time: Mapped[float] = mapped_column(Double, default=0.0)
    update_time: Mapped[float] = mapped_column(Double, default=0.0)


class ReplicaRow(Base):
    """Live sync_service replicas (heartbeat: expire_time, database clock), so each knows its fair share of pools."""

    __tablename__ = "sync_replicas"

    replica_id: Mapped[str] = mapped_column(String(_NAME), primary_key=True)
    address: Mapped[str] = mapped_column(String(_URL), default="")
    expire_time: Mapped[float] = mapped_column(Double, default=0.0)
    start_time: Mapped[float] = mapped_column(Double, default=0.0)

"""Initial schema: pools, hosts, VMs, change log, counters, request ids.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-25 21:57:13.546374
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0001_initial"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sync_changes",
        sa.Column("revision", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("change_type", sa.String(length=16), nullable=False),
        sa.Column("cluster_id", sa.String(length=64), nullable=False),
        sa.Column("object_key", sa.String(length=64), nullable=False),
        sa.Column(
            "commit_time",
            sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mariadb").with_variant(mysql.DATETIME(fsp=6), "mysql"),
            nullable=False,
        ),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("revision", name=op.f("pk_sync_changes")),
    )
    with op.batch_alter_table("sync_changes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sync_changes_cluster_id"), ["cluster_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_sync_changes_commit_time"), ["commit_time"], unique=False)

    counters = op.create_table(
        "sync_counters",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_sync_counters")),
    )
    # The revision counter row must exist before the first batch: its row lock orders commits.
    op.bulk_insert(counters, [{"name": "revision", "value": 0}, {"name": "compacted_through", "value": 0}])
    op.create_table(
        "sync_hosts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("cluster_id", sa.String(length=64), nullable=False),
        sa.Column("uuid", sa.String(length=64), nullable=False),
        sa.Column("pool_uuid", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("address", sa.String(length=255), nullable=False),
        sa.Column("live", sa.Boolean(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("is_master", sa.Boolean(), nullable=False),
        sa.Column("memory_total", sa.BigInteger(), nullable=False),
        sa.Column("memory_free", sa.BigInteger(), nullable=False),
        sa.Column("api_version_major", sa.Integer(), nullable=False),
        sa.Column("api_version_minor", sa.Integer(), nullable=False),
        sa.Column("product_brand", sa.String(length=255), nullable=False),
        sa.Column("product_version", sa.String(length=255), nullable=False),
        sa.Column("platform_version", sa.String(length=255), nullable=False),
        sa.Column("build_number", sa.String(length=255), nullable=False),
        sa.Column("removed", sa.Boolean(), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column(
            "update_time",
            sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mariadb").with_variant(mysql.DATETIME(fsp=6), "mysql"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_hosts")),
        sa.UniqueConstraint("cluster_id", "uuid", name=op.f("uq_sync_hosts_cluster_id_uuid")),
    )
    with op.batch_alter_table("sync_hosts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sync_hosts_uuid"), ["uuid"], unique=False)

    op.create_table(
        "sync_pools",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("cluster_id", sa.String(length=64), nullable=False),
        sa.Column("master_url", sa.String(length=2048), nullable=False),
        sa.Column("credentials_encrypted", sa.LargeBinary(), nullable=True),
        sa.Column(
            "tls_ca_bundle_pem",
            sa.Text().with_variant(mysql.MEDIUMTEXT(), "mariadb").with_variant(mysql.MEDIUMTEXT(), "mysql"),
            nullable=False,
        ),
        sa.Column("tls_fingerprint", sa.String(length=128), nullable=False),
        sa.Column("tls_insecure", sa.Boolean(), nullable=False),
        sa.Column("register_request_id", sa.String(length=255), nullable=False),
        sa.Column("config_generation", sa.Integer(), nullable=False),
        sa.Column("pool_uuid", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("api_version_major", sa.Integer(), nullable=False),
        sa.Column("api_version_minor", sa.Integer(), nullable=False),
        sa.Column("product_brand", sa.String(length=255), nullable=False),
        sa.Column("product_version", sa.String(length=255), nullable=False),
        sa.Column("platform_version", sa.String(length=255), nullable=False),
        sa.Column("build_number", sa.String(length=255), nullable=False),
        sa.Column("ha_enabled", sa.Boolean(), nullable=False),
        sa.Column("ha_host_failures_to_tolerate", sa.BigInteger(), nullable=False),
        sa.Column("ha_plan_exists_for", sa.BigInteger(), nullable=False),
        sa.Column("ha_allow_overcommit", sa.Boolean(), nullable=False),
        sa.Column("ha_overcommitted", sa.Boolean(), nullable=False),
        sa.Column("master_host_uuid", sa.String(length=64), nullable=False),
        sa.Column("event_token", sa.String(length=255), nullable=False),
        sa.Column(
            "host_addresses",
            sa.Text().with_variant(mysql.MEDIUMTEXT(), "mariadb").with_variant(mysql.MEDIUMTEXT(), "mysql"),
            nullable=False,
        ),
        sa.Column(
            "watch_state",
            sa.Text().with_variant(mysql.MEDIUMTEXT(), "mariadb").with_variant(mysql.MEDIUMTEXT(), "mysql"),
            nullable=False,
        ),
        sa.Column("sync_state", sa.String(length=32), nullable=False),
        sa.Column("connected", sa.Boolean(), nullable=False),
        sa.Column("wire_format", sa.String(length=16), nullable=False),
        sa.Column("connected_url", sa.String(length=2048), nullable=False),
        sa.Column(
            "last_event_time",
            sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mariadb").with_variant(mysql.DATETIME(fsp=6), "mysql"),
            nullable=True,
        ),
        sa.Column("lag_ms", sa.BigInteger(), nullable=False),
        sa.Column(
            "last_full_sync_time",
            sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mariadb").with_variant(mysql.DATETIME(fsp=6), "mysql"),
            nullable=True,
        ),
        sa.Column("events_applied", sa.BigInteger(), nullable=False),
        sa.Column("reconnects", sa.BigInteger(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column(
            "last_error_time",
            sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mariadb").with_variant(mysql.DATETIME(fsp=6), "mysql"),
            nullable=True,
        ),
        sa.Column("owner", sa.String(length=255), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column(
            "create_time",
            sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mariadb").with_variant(mysql.DATETIME(fsp=6), "mysql"),
            nullable=False,
        ),
        sa.Column(
            "update_time",
            sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mariadb").with_variant(mysql.DATETIME(fsp=6), "mysql"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_pools")),
        sa.UniqueConstraint("cluster_id", name=op.f("uq_sync_pools_cluster_id")),
    )
    op.create_table(
        "sync_requests",
        sa.Column("request_id", sa.String(length=255), nullable=False),
        sa.Column("method", sa.String(length=64), nullable=False),
        sa.Column("cluster_id", sa.String(length=64), nullable=False),
        sa.Column(
            "create_time",
            sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mariadb").with_variant(mysql.DATETIME(fsp=6), "mysql"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("request_id", name=op.f("pk_sync_requests")),
    )
    with op.batch_alter_table("sync_requests", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sync_requests_create_time"), ["create_time"], unique=False)

    op.create_table(
        "sync_vms",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("cluster_id", sa.String(length=64), nullable=False),
        sa.Column("uuid", sa.String(length=64), nullable=False),
        sa.Column("xapi_ref", sa.String(length=128), nullable=False),
        sa.Column("pool_uuid", sa.String(length=64), nullable=False),
        sa.Column("name_label", sa.String(length=255), nullable=False),
        sa.Column("xapi_power_state", sa.String(length=16), nullable=False),
        sa.Column("power_state", sa.String(length=32), nullable=False),
        sa.Column("resident_host_uuid", sa.String(length=64), nullable=False),
        sa.Column("ha_restart_priority", sa.String(length=32), nullable=False),
        sa.Column("ha_order", sa.BigInteger(), nullable=False),
        sa.Column("start_delay", sa.BigInteger(), nullable=False),
        sa.Column("ha_always_run", sa.Boolean(), nullable=False),
        sa.Column("memory_static_max", sa.BigInteger(), nullable=False),
        sa.Column(
            "power_state_update_time",
            sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mariadb").with_variant(mysql.DATETIME(fsp=6), "mysql"),
            nullable=True,
        ),
        sa.Column("power_state_update_count", sa.Integer(), nullable=False),
        sa.Column("removed", sa.Boolean(), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column(
            "update_time",
            sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mariadb").with_variant(mysql.DATETIME(fsp=6), "mysql"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_vms")),
        sa.UniqueConstraint("cluster_id", "uuid", name=op.f("uq_sync_vms_cluster_id_uuid")),
    )
    with op.batch_alter_table("sync_vms", schema=None) as batch_op:
        batch_op.create_index("ix_sync_vms_cluster_id_name_label", ["cluster_id", "name_label"], unique=False)
        batch_op.create_index(batch_op.f("ix_sync_vms_uuid"), ["uuid"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("sync_vms", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sync_vms_uuid"))
        batch_op.drop_index("ix_sync_vms_cluster_id_name_label")

    op.drop_table("sync_vms")
    with op.batch_alter_table("sync_requests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sync_requests_create_time"))

    op.drop_table("sync_requests")
    op.drop_table("sync_pools")
    with op.batch_alter_table("sync_hosts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sync_hosts_uuid"))

    op.drop_table("sync_hosts")
    op.drop_table("sync_counters")
    with op.batch_alter_table("sync_changes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sync_changes_commit_time"))
        batch_op.drop_index(batch_op.f("ix_sync_changes_cluster_id"))

    op.drop_table("sync_changes")

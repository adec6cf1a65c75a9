"""Scale-out: per-pool leases with fencing epochs, and the replica heartbeat table.

Revision ID: 0002_pool_leases
Revises: 0001_initial
Create Date: 2026-12-02 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_pool_leases"
down_revision: str | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sync_pool_leases",
        sa.Column("cluster_id", sa.String(length=64), nullable=False),
        sa.Column("owner", sa.String(length=255), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("expire_time", sa.Double(), nullable=False),
        sa.Column("update_time", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("cluster_id", name=op.f("pk_sync_pool_leases")),
    )
    op.create_table(
        "sync_replicas",
        sa.Column("replica_id", sa.String(length=255), nullable=False),
        sa.Column("address", sa.String(length=2048), nullable=False),
        sa.Column("expire_time", sa.Double(), nullable=False),
        sa.Column("start_time", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("replica_id", name=op.f("pk_sync_replicas")),
    )


def downgrade() -> None:
    op.drop_table("sync_replicas")
    op.drop_table("sync_pool_leases")

"""The pool row's rows_stamp: set to a new random value by every transaction that writes the pool's mirror rows,
so a replica can trust its cached rows of the pool without reading their versions while the stamp is the one its
own last commit wrote.

Revision ID: 0004_pools_rows_stamp
Revises: 0003_changes_cluster_revision
Create Date: 2026-11-28 16:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_pools_rows_stamp"
down_revision: str | None = "0003_changes_cluster_revision"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sync_pools") as batch:
        batch.add_column(sa.Column("rows_stamp", sa.BigInteger(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("sync_pools") as batch:
        batch.drop_column("rows_stamp")

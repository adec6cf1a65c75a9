"""The change log's cluster index ends with the revision, so a WatchChanges stream of one cluster reads its next
changes as one range of the index, in order. With the cluster alone, SQLite (no planner statistics) read every
retained change of the cluster and sorted them, on each wake of each such stream.

Revision ID: 0003_changes_cluster_revision
Revises: 0002_pool_leases
Create Date: 2026-11-28 12:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003_changes_cluster_revision"
down_revision: str | None = "0002_pool_leases"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_sync_changes_cluster_id_revision", "sync_changes", ["cluster_id", "revision"], unique=False)
    op.drop_index("ix_sync_changes_cluster_id", table_name="sync_changes")


def downgrade() -> None:
    op.create_index("ix_sync_changes_cluster_id", "sync_changes", ["cluster_id"], unique=False)
    op.drop_index("ix_sync_changes_cluster_id_revision", table_name="sync_changes")

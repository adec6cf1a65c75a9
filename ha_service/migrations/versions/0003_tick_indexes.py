"""Indexes for the controller's tick: down VMs, disconnected agents, rows awaiting protection, recent acks

Revision ID: 0003_tick_indexes
Revises: 0002_migration_tables
Create Date: 2026-11-26 10:45:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003_tick_indexes"
down_revision: str | None = "0002_migration_tables"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_ha_managed_vms_down_since", "ha_managed_vms", ["down_since"])
    op.create_index("ix_ha_managed_vms_agent_status", "ha_managed_vms", ["agent_status", "agent_status_time"])
    op.create_index(
        "ix_ha_managed_vms_present_protection", "ha_managed_vms", ["present", "protection_state", "config_confirmed"]
    )
    op.create_index("ix_ha_events_ack_time", "ha_events", ["ack_time"])


def downgrade() -> None:
    op.drop_index("ix_ha_events_ack_time", table_name="ha_events")
    op.drop_index("ix_ha_managed_vms_present_protection", table_name="ha_managed_vms")
    op.drop_index("ix_ha_managed_vms_agent_status", table_name="ha_managed_vms")
    op.drop_index("ix_ha_managed_vms_down_since", table_name="ha_managed_vms")

"""The HA events' category indexes end with the revision: ListHaActions reads a page of actions, all of them or
those in one state, as one range of an index, in order, and so does the redelivery of pending actions. SQLite (no
planner statistics) otherwise read every retained action of the category (or of the state) and sorted them, for
each page.

Revision ID: 0004_events_category_revision
Revises: 0003_tick_indexes
Create Date: 2026-11-28 13:30:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004_events_category_revision"
down_revision: str | None = "0003_tick_indexes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_ha_events_category_revision", "ha_events", ["category", "revision"])
    op.create_index("ix_ha_events_category_state_revision", "ha_events", ["category", "action_state", "revision"])
    op.drop_index("ix_ha_events_category_state", table_name="ha_events")


def downgrade() -> None:
    op.create_index("ix_ha_events_category_state", "ha_events", ["category", "action_state"])
    op.drop_index("ix_ha_events_category_state_revision", table_name="ha_events")
    op.drop_index("ix_ha_events_category_revision", table_name="ha_events")

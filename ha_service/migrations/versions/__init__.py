"""Alembic revisions of ha_service (a package so that they ship in the wheel)."""

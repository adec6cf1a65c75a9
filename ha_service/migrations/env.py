"""Alembic environment of ha_service (own history, version table alembic_version_ha)."""

from ha_service.store.models import VERSION_TABLE, Base
from xsha_common.db import run_migrations_online

run_migrations_online(Base.metadata, VERSION_TABLE)

"""Alembic environment of sync_service (version table `alembic_version_sync`)."""

from sync_service.store.models import VERSION_TABLE, Base
from xsha_common.db import run_migrations_online

run_migrations_online(Base.metadata, VERSION_TABLE)

"""ha_service's persistence: SQLAlchemy models (own metadata, tables prefixed ha_) and the repository."""

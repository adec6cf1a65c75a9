"""sync_service's tables and the repository that writes and reads them."""

"""xsha_demo: the one-command demo behind `make run` (xapi_sim + sync_service + ha_service, a failover end to end)."""

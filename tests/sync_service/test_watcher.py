"""The watcher's list + watch loop against a scripted XAPI: a valid_ref_counts mismatch means a missed deletion,
which a full re-list and diff repairs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from cryptography.fernet import Fernet

from sync_service.crypto import Credentials, CredentialsCipher
from sync_service.store.models import VERSION_TABLE
from sync_service.store.repository import Repository
from sync_service.testing import wait_for
from sync_service.watcher import PoolWatcher, WatcherSettings
from sync_service.xapi.client import EventBatch, XapiClient, XapiEndpoint, parse_event_batch
from xsha_common.db import create_engine_for, upgrade_to_head


def _vm(uuid: str) -> dict[str, Any]:
    return {
        "uuid": uuid,
        "name_label": uuid,
        "power_state": "Halted",
        "resident_on": "OpaqueRef:NULL",
        "is_a_template": False,
        "is_a_snapshot": False,
        "is_control_domain": False,
    }


POOL = {"uuid": "pool-1", "name_label": "p", "master": "OpaqueRef:NULL"}


class ScriptedClient(XapiClient):
    """Answers event.from from a script: the full list from `pool_vms`, then the scripted batches."""

    wire_format = "json"

    def __init__(self, script: list[dict[str, Any]], pool_vms: dict[str, str]) -> None:
        super().__init__(XapiEndpoint("http://scripted"), timeout=1)
        self.script = script
        self.pool_vms = pool_vms
        self.full_lists = 0

    def _request(self, method: str, params: Sequence[Any], timeout: float) -> Any:
        raise AssertionError("not used")

    def event_from(self, classes: Sequence[str], token: str, timeout: float) -> EventBatch:
        if token == "":
            self.full_lists += 1
            events = [{"class": "pool", "operation": "add", "ref": "OpaqueRef:p", "snapshot": POOL}]
            events += [
                {"class": "vm", "operation": "add", "ref": ref, "snapshot": _vm(uuid)}
                for ref, uuid in self.pool_vms.items()
            ]
            counts = {"vm": len(self.pool_vms), "pool": 1, "host": 0, "host_metrics": 0}
            return parse_event_batch({"events": events, "valid_ref_counts": counts, "token": f"list-{self.full_lists}"})
        if self.script:
            return parse_event_batch(self.script.pop(0))
        import time

        time.sleep(0.05)
        counts = {"vm": len(self.pool_vms), "pool": 1, "host": 0, "host_metrics": 0}
        return parse_event_batch({"events": [], "valid_ref_counts": counts, "token": token})

    def _abort_connection(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.mark.parametrize("db_backend", ["sqlite"])
def test_ref_count_mismatch_triggers_a_relist_that_marks_missed_deletions(db_url: str) -> None:
    upgrade_to_head("sync_service", db_url, VERSION_TABLE)
    engine = create_engine_for(db_url)
    repository = Repository(engine)
    cipher = CredentialsCipher(Fernet.generate_key().decode())
    repository.register_pool(
        cluster_id="c1",
        master_url="http://scripted",
        credentials_encrypted=cipher.encrypt(Credentials("root", "pw")),
        tls_ca_bundle_pem="",
        tls_fingerprint="",
        tls_insecure=False,
        request_id="",
    )
    pool_vms = {"OpaqueRef:a": "vm-a", "OpaqueRef:b": "vm-b"}
    # vm-b's deletion is missed: the next batch only says "vm: 1".
    script = [{"events": [], "valid_ref_counts": {"vm": 1, "pool": 1}, "token": "t2"}]
    client = ScriptedClient(script, pool_vms)
    config = repository.pool_config("c1")
    assert config is not None
    watcher = PoolWatcher(config, repository, cipher, WatcherSettings(event_timeout=0.1))
    watcher.open_client = lambda: client  # type: ignore[method-assign]
    watcher.start()
    try:
        wait_for(lambda: repository.get_vm(uuid="vm-b") is not None)
        del pool_vms["OpaqueRef:b"]
        wait_for(lambda: client.full_lists >= 2, what="the re-list after the ref count mismatch")
        gone = wait_for(lambda: vm if (vm := repository.get_vm(uuid="vm-b")) and vm.removed else None)
        assert gone.power_state.value == "PowerReportMissing"
        vm_a = repository.get_vm(uuid="vm-a")
        assert vm_a is not None and not vm_a.removed
    finally:
        watcher.stop()
        engine.dispose()

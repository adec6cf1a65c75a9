"""`python -m sync_service`: configuration, the embedded key file, serving, graceful shutdown."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

from sync_service.testing import spawn, wait_converged
from xsha_api.v1 import sync_service_pb2


def test_runs_as_a_process_with_the_embedded_defaults(tmp_path: Path, make_sim: Any) -> None:
    sim = make_sim()
    # The default database (./var/sync_service.sqlite) and key file (./var/sync_credentials.key), under cwd.
    service = spawn("sqlite:///var/sync_service.sqlite", cwd=str(tmp_path), extra_args=["--event-timeout-seconds", "2"])
    try:
        key_file = tmp_path / "var" / "sync_credentials.key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert any("generated a new credentials key file" in line for line in service.log_lines)
        service.stub.RegisterPool(
            sync_service_pb2.RegisterPoolRequest(
                cluster_id="c1",
                master_url=sim.master_url().rstrip("/"),
                credentials=sync_service_pb2.XapiCredentials(username="root", password="password"),
            )
        )

        class _Adapter:  # mirror_diff talks to a RunningSyncService-like object
            stub = service.stub
            metadata = ()

            def list_all_vms(self, **filters: Any) -> tuple[list[Any], int]:
                response = service.stub.ListVms(sync_service_pb2.ListVmsRequest(page_size=1000, **filters))
                return list(response.vms), response.revision

            def pool(self, cluster_id: str) -> Any:
                return service.stub.GetPool(sync_service_pb2.GetPoolRequest(cluster_id=cluster_id)).pool

        wait_converged(_Adapter(), sim.pool(), "c1")  # type: ignore[arg-type]
    finally:
        assert service.stop() == 0
    assert (tmp_path / "var" / "sync_service.sqlite").exists()
    assert any('"stopped"' in line for line in service.log_lines)


def test_refuses_a_bad_configuration(tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "sync_service", "--database-url", "oracle://x", "--auth-disabled",
         "--change-retention-count", "-1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "change_retention_count" in result.stderr

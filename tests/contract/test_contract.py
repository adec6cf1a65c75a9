"""The wire contract: lint-clean, backward compatible with the committed baseline, generated code current."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from xsha_common import protogen

ROOT = Path(__file__).resolve().parents[2]
BASELINE = ROOT / "protos" / "breaking-baseline.binpb"
BUF = str(Path(sys.executable).parent / "buf")


def run_buf(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BUF, *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=120)


def test_buf_lint_standard_is_clean() -> None:
    result = run_buf("lint")
    assert result.returncode == 0, result.stdout + result.stderr


def test_protos_are_compatible_with_the_committed_baseline() -> None:
    result = run_buf("breaking", "--against", str(BASELINE))
    assert result.returncode == 0, result.stdout + result.stderr


def _copy_of_the_module(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(ROOT / "protos" / "cloudstack", tmp_path / "protos" / "cloudstack")
    return tmp_path / "protos" / "cloudstack" / "xsha" / "v1"


@pytest.mark.parametrize(
    ("proto", "original", "broken", "expected_message"),
    [
        # A field changing type breaks every deployed client.
        ("sync_service.proto", "  int64 order = 9;", "  string order = 9;", 'changed type from "int64" to "string"'),
        # A removed RPC breaks the orchestrator calling it.
        (
            "ha_service.proto",
            "  rpc AckHaAction(AckHaActionRequest) returns (AckHaActionResponse);\n",
            "",
            'RPC "AckHaAction" on service "HaPolicyService" was deleted',
        ),
        # A renumbered enum value changes what is on the wire.
        (
            "common.proto",
            "  HA_MODE_NATIVE = 2;",
            "  HA_MODE_NATIVE = 3;",
            'enum value "2" on enum "HaMode" was deleted',
        ),
    ],
)
def test_a_breaking_change_fails_the_check(
    tmp_path: Path, proto: str, original: str, broken: str, expected_message: str
) -> None:
    package_dir = _copy_of_the_module(tmp_path)
    source = (package_dir / proto).read_text()
    assert original in source, "the test's edit no longer matches the proto; update the test"
    (package_dir / proto).write_text(source.replace(original, broken, 1))

    result = run_buf("breaking", "--against", str(BASELINE), cwd=tmp_path)

    assert result.returncode != 0
    assert expected_message in result.stdout + result.stderr


def test_an_unchanged_copy_passes_the_check(tmp_path: Path) -> None:
    _copy_of_the_module(tmp_path)
    result = run_buf("breaking", "--against", str(BASELINE), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_code_is_current() -> None:
    assert protogen.check() == [], "run `make gen` and commit xsha_api/"


def test_stale_generated_code_is_detected(tmp_path: Path) -> None:
    stale = tmp_path / "v1"
    protogen.generate(stale)
    (stale / "common_pb2.py").write_text((stale / "common_pb2.py").read_text() + "\n# edited by hand\n")
    (stale / "sync_service_pb2.pyi").unlink()

    problems = protogen.check(stale)

    assert "stale: common_pb2.py" in problems
    assert "missing: sync_service_pb2.pyi" in problems

"""The XAPI methods sync_service may call: everything else, VM power operations above all, is refused (rule R6).

Every request of both wire formats goes through `check_allowed` before it is sent, so no code path of sync_service
can start, stop, migrate or otherwise change a VM's power state, whatever a caller passes in.
"""

from __future__ import annotations

from typing import Final

ALLOWED_METHODS: Final[frozenset[str]] = frozenset(
    {
        # sessions
        "session.login_with_password",
        "session.logout",
        # the event stream (list + watch)
        "event.from",
        "event.inject",
        # reads
        "pool.get_all",
        "pool.get_all_records",
        "pool.get_record",
        "pool.get_master",
        "host.get_all_records",
        "host.get_record",
        "host.get_API_version_major",
        "host.get_API_version_minor",
        "host_metrics.get_all_records",
        "host_metrics.get_record",
        "VM.get_by_uuid",
        "VM.get_record",
        "VM.get_all_records",
        # the only writes: a VM's HA configuration, on ha_service's request
        "VM.set_ha_restart_priority",
        "VM.set_order",
        "VM.set_start_delay",
    }
)

# Named for the tests and for the error message; the allow-list above is what enforces the rule.
VM_POWER_OPERATIONS: Final[frozenset[str]] = frozenset(
    {
        "VM.start",
        "VM.start_on",
        "VM.clean_shutdown",
        "VM.hard_shutdown",
        "VM.shutdown",
        "VM.clean_reboot",
        "VM.hard_reboot",
        "VM.suspend",
        "VM.resume",
        "VM.resume_on",
        "VM.pause",
        "VM.unpause",
        "VM.pool_migrate",
        "VM.migrate_send",
        "VM.power_state_reset",
        "VM.destroy",
    }
)


class ForbiddenXapiMethodError(PermissionError):
    """sync_service tried to call an XAPI method outside its allow-list."""

    def __init__(self, method: str) -> None:
        kind = "a VM power operation" if canonical_method(method) in VM_POWER_OPERATIONS else "not allowed"
        super().__init__(f"XAPI method {method!r} is {kind}: sync_service only mirrors and writes VM HA config")
        self.method = method


def canonical_method(method: str) -> str:
    """`Class_method` spellings (accepted by xapi) mapped onto `Class.method`, so they cannot bypass the check."""
    if "." in method:
        return method
    head, sep, tail = method.partition("_")
    if not sep:
        return method
    # host_metrics_get_record: the class name itself contains an underscore.
    if head == "host" and tail.startswith("metrics_"):
        return "host_metrics." + tail[len("metrics_") :]
    return f"{head}.{tail}"


def check_allowed(method: str) -> str:
    """The canonical method name, or ForbiddenXapiMethodError when sync_service may not call it."""
    canonical = canonical_method(method)
    if canonical not in ALLOWED_METHODS:
        raise ForbiddenXapiMethodError(method)
    return canonical

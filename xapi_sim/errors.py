"""XAPI failures as raised by the simulator; each becomes a `Failure` envelope / JSON-RPC error on the wire."""

from __future__ import annotations


class XapiError(Exception):
    """An XAPI `Server_error`: an error code and its string parameters (the wire's ErrorDescription)."""

    def __init__(self, code: str, *params: object) -> None:
        super().__init__(code, *params)
        self.code = code
        self.params = [str(p) for p in params]

    @property
    def description(self) -> list[str]:
        return [self.code, *self.params]

    def __str__(self) -> str:
        return str(self.description)


class MalformedRequestError(Exception):
    """The HTTP body is not a valid request of its wire format: answered with HTTP 500, as xapi does."""


SESSION_INVALID = "SESSION_INVALID"
SESSION_AUTHENTICATION_FAILED = "SESSION_AUTHENTICATION_FAILED"
HOST_IS_SLAVE = "HOST_IS_SLAVE"
MESSAGE_METHOD_UNKNOWN = "MESSAGE_METHOD_UNKNOWN"
MESSAGE_PARAMETER_COUNT_MISMATCH = "MESSAGE_PARAMETER_COUNT_MISMATCH"
HANDLE_INVALID = "HANDLE_INVALID"
UUID_INVALID = "UUID_INVALID"
INVALID_VALUE = "INVALID_VALUE"
VM_BAD_POWER_STATE = "VM_BAD_POWER_STATE"
VM_IS_TEMPLATE = "VM_IS_TEMPLATE"
OPERATION_NOT_ALLOWED = "OPERATION_NOT_ALLOWED"
HOST_NOT_ENOUGH_FREE_MEMORY = "HOST_NOT_ENOUGH_FREE_MEMORY"
HOST_OFFLINE = "HOST_OFFLINE"
HA_IS_ENABLED = "HA_IS_ENABLED"
HA_NOT_ENABLED = "HA_NOT_ENABLED"
HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN = "HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN"
EVENT_FROM_TOKEN_PARSE_FAILURE = "EVENT_FROM_TOKEN_PARSE_FAILURE"
EVENT_SUBSCRIPTION_PARSE_FAILURE = "EVENT_SUBSCRIPTION_PARSE_FAILURE"
FIELD_TYPE_ERROR = "FIELD_TYPE_ERROR"
SIM_ERROR = "SIM_ERROR"

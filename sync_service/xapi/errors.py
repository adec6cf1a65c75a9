"""Errors raised by the XAPI client layer, the same for both wire formats."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

SESSION_INVALID: Final = "SESSION_INVALID"
HOST_IS_SLAVE: Final = "HOST_IS_SLAVE"
EVENT_FROM_TOKEN_PARSE_FAILURE: Final = "EVENT_FROM_TOKEN_PARSE_FAILURE"
SESSION_AUTHENTICATION_FAILED: Final = "SESSION_AUTHENTICATION_FAILED"
HANDLE_INVALID: Final = "HANDLE_INVALID"
UUID_INVALID: Final = "UUID_INVALID"
INVALID_VALUE: Final = "INVALID_VALUE"


class XapiError(Exception):
    """XAPI answered with a failure: `code` is the first element of ErrorDescription, `params` the rest."""

    def __init__(self, code: str, params: Sequence[str] = ()) -> None:
        self.code = str(code)
        self.params: tuple[str, ...] = tuple(str(param) for param in params)
        super().__init__(f"{self.code} {list(self.params)}" if self.params else self.code)

    @classmethod
    def from_description(cls, description: object) -> XapiError:
        if isinstance(description, list | tuple) and description:
            return cls(str(description[0]), [str(item) for item in description[1:]])
        return cls("UNKNOWN_XAPI_ERROR", [str(description)])


class XapiConnectionError(Exception):
    """The XAPI endpoint could not be reached, or the connection broke (timeouts and TLS failures included)."""


class XapiProtocolError(XapiConnectionError):
    """The endpoint answered something that is not a well-formed XAPI response."""


class JsonRpcUnavailableError(XapiConnectionError):
    """The host does not serve JSON-RPC on /jsonrpc (the caller falls back to XML-RPC)."""

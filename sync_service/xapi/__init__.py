"""The XAPI client layer: one interface over JSON-RPC and XML-RPC, restricted to an allow-list of methods."""

from sync_service.xapi.allowed import ALLOWED_METHODS, ForbiddenXapiMethodError, check_allowed
from sync_service.xapi.client import (
    EventBatch,
    XapiClient,
    XapiEndpoint,
    connect,
)
from sync_service.xapi.errors import XapiConnectionError, XapiError, XapiProtocolError
from sync_service.xapi.tls import TlsOptions

__all__ = [
    "ALLOWED_METHODS",
    "EventBatch",
    "ForbiddenXapiMethodError",
    "TlsOptions",
    "XapiClient",
    "XapiConnectionError",
    "XapiEndpoint",
    "XapiError",
    "XapiProtocolError",
    "check_allowed",
    "connect",
]

"""Bearer-token authentication: `authorization: Bearer <token>` metadata checked against the configured tokens.

The gRPC health service is exempt so load balancers and container health checks need no secret. Server reflection is
NOT exempt: it reveals the full API surface, so tooling (grpcurl, `xsha`) must send the token like any other client.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

import grpc
from grpc_health.v1 import health

from xsha_common.interceptors._handlers import (
    AsyncContinuation,
    AsyncServerInterceptorBase,
    Continuation,
    MethodHandler,
    ServerInterceptorBase,
    WrappedHandlers,
    aborting_handler,
    aborting_handler_async,
    metadata_value,
    split_method,
)

AUTHORIZATION_METADATA_KEY = "authorization"
AUTH_EXEMPT_SERVICES: frozenset[str] = frozenset({health.SERVICE_NAME})

MISSING_TOKEN_MESSAGE = (
    "Missing bearer token: send the metadata 'authorization: Bearer <token>' with one of the server's auth tokens."
)
INVALID_TOKEN_MESSAGE = (
    "Invalid bearer token: the token sent in 'authorization: Bearer <token>' is not one of the server's auth tokens; "
    "check the client's token against the server configuration."
)


def bearer_token_metadata(token: str) -> tuple[tuple[str, str]]:
    """Call metadata that authenticates a client: pass as `metadata=` on each call."""
    return ((AUTHORIZATION_METADATA_KEY, f"Bearer {token}"),)


class _TokenCheck:
    def __init__(self, tokens: Iterable[str], exempt_services: Iterable[str]) -> None:
        self._tokens = tuple(token.encode("utf-8") for token in tokens if token)
        if not self._tokens:
            raise ValueError("bearer token authentication needs at least one non-empty token")
        self._exempt_services = frozenset(exempt_services)

    def problem(self, handler_call_details: grpc.HandlerCallDetails) -> str | None:
        """Why the call is refused, or None when its service is exempt or it carries a valid token."""
        service, _ = split_method(handler_call_details.method)
        if service in self._exempt_services:
            return None
        return self._token_problem(handler_call_details.invocation_metadata)

    def _token_problem(self, metadata: object) -> str | None:
        header = metadata_value(metadata, AUTHORIZATION_METADATA_KEY)
        if header is None:
            return MISSING_TOKEN_MESSAGE
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return MISSING_TOKEN_MESSAGE
        presented = token.strip().encode("utf-8")
        # Compare against every token (no early exit) in constant time per token.
        matches = [hmac.compare_digest(presented, valid) for valid in self._tokens]
        return None if any(matches) else INVALID_TOKEN_MESSAGE


class BearerTokenAuthInterceptor(ServerInterceptorBase):
    """Refuses with UNAUTHENTICATED every call to a non-exempt service without a valid bearer token."""

    def __init__(self, tokens: Iterable[str], exempt_services: Iterable[str] = AUTH_EXEMPT_SERVICES) -> None:
        self._check = _TokenCheck(tokens, exempt_services)

    def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> MethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        problem = self._check.problem(handler_call_details)
        if problem is None:
            return handler
        return aborting_handler(handler, grpc.StatusCode.UNAUTHENTICATED, problem)


class AsyncBearerTokenAuthInterceptor(AsyncServerInterceptorBase):
    """`BearerTokenAuthInterceptor` for the asyncio server."""

    def __init__(self, tokens: Iterable[str], exempt_services: Iterable[str] = AUTH_EXEMPT_SERVICES) -> None:
        self._check = _TokenCheck(tokens, exempt_services)
        self._refusals: dict[tuple[str, str], WrappedHandlers] = {}

    async def intercept_service(
        self, continuation: AsyncContinuation, handler_call_details: grpc.HandlerCallDetails
    ) -> MethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        problem = self._check.problem(handler_call_details)
        if problem is None:
            return handler
        method = handler_call_details.method
        refusals = self._refusals.setdefault((method, problem), WrappedHandlers())
        return refusals.get(
            method, handler, lambda: aborting_handler_async(handler, grpc.StatusCode.UNAUTHENTICATED, problem)
        )

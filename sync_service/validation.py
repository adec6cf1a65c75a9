"""Request validation: every input checked up front, with INVALID_ARGUMENT messages that say how to fix it."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import ssl
from collections.abc import Sequence
from typing import Any, Final
from urllib.parse import urlsplit

import orjson

from sync_service.domain import HA_RESTART_PRIORITIES
from sync_service.xapi.tls import TlsOptions, normalize_fingerprint
from xsha_common.errors import FieldViolation, ServiceError, invalid_arguments

CLUSTER_ID_MAX: Final = 64
CLUSTER_ID_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
UUID_PATTERN: Final = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
DEFAULT_PAGE_SIZE: Final = 500
MAX_PAGE_SIZE: Final = 5000
MAX_URL: Final = 2048
MAX_REQUEST_ID: Final = 255
MAX_NAME: Final = 255
MAX_CREDENTIAL: Final = 1024
MAX_CA_BUNDLE: Final = 1024 * 1024


class Violations:
    """Collects every problem of a request, so the caller fixes them all in one go."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self.items.append(FieldViolation(field, description))

    def raise_if_any(self) -> None:
        if self.items:
            raise invalid_arguments(self.items)


def check_cluster_id(violations: Violations, field: str, value: str, *, required: bool = True) -> None:
    if not value:
        if required:
            violations.add(field, "is required: the CloudStack cluster id (e.g. its uuid)")
        return
    if len(value) > CLUSTER_ID_MAX:
        violations.add(field, f"is {len(value)} characters long; at most {CLUSTER_ID_MAX} are allowed")
    elif not CLUSTER_ID_PATTERN.match(value):
        violations.add(
            field, "may contain only letters, digits, '.', '_', ':' and '-', starting with a letter or digit"
        )


def check_uuid(violations: Violations, field: str, value: str, *, required: bool = True) -> None:
    if not value:
        if required:
            violations.add(field, "is required: a uuid like 3f2a...-....-....-....-............")
        return
    if not UUID_PATTERN.match(value):
        violations.add(field, f"{value[:80]!r} is not a uuid (8-4-4-4-12 hex digits)")


def check_master_url(violations: Violations, field: str, value: str) -> None:
    if not value:
        violations.add(field, "is required: http(s)://host[:port] of the pool master")
        return
    if len(value) > MAX_URL:
        violations.add(field, f"is longer than {MAX_URL} characters")
        return
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        violations.add(field, "is not a valid URL; use http(s)://host[:port]")
        return
    if parts.scheme not in ("http", "https"):
        violations.add(field, f"scheme must be http or https, not {parts.scheme or 'missing'!r}")
    elif not parts.hostname:
        violations.add(field, "has no host; use http(s)://host[:port]")
    elif parts.username or parts.password:
        violations.add(field, "must not carry credentials; pass them in credentials")
    elif parts.path not in ("", "/") or parts.query or parts.fragment:
        violations.add(field, "must be just scheme://host[:port], without a path, query or fragment")
    elif port == 0:
        violations.add(field, "port 0 is not valid")


def check_request_id(violations: Violations, field: str, value: str) -> None:
    if len(value) > MAX_REQUEST_ID:
        violations.add(field, f"is longer than {MAX_REQUEST_ID} characters")


def check_credentials(violations: Violations, field: str, username: str, password: str) -> None:
    if not username:
        violations.add(f"{field}.username", "is required")
    elif len(username) > MAX_CREDENTIAL:
        violations.add(f"{field}.username", f"is longer than {MAX_CREDENTIAL} characters")
    if len(password) > MAX_CREDENTIAL:
        violations.add(f"{field}.password", f"is longer than {MAX_CREDENTIAL} characters")


def check_tls(violations: Violations, field: str, tls: TlsOptions, master_url: str | None) -> TlsOptions:
    """Validated and normalised TLS options (the fingerprint as 64 lower-case hex digits)."""
    if tls.ca_bundle_pem:
        if len(tls.ca_bundle_pem) > MAX_CA_BUNDLE:
            violations.add(f"{field}.ca_bundle_pem", "is larger than 1 MiB")
        elif "-----BEGIN CERTIFICATE-----" not in tls.ca_bundle_pem:
            violations.add(f"{field}.ca_bundle_pem", "is not a PEM certificate bundle (-----BEGIN CERTIFICATE-----)")
        else:
            try:
                ssl.create_default_context(cadata=tls.ca_bundle_pem)
            except (ssl.SSLError, ValueError) as exc:
                violations.add(f"{field}.ca_bundle_pem", f"cannot be loaded as CA certificates: {exc}")
    if tls.certificate_sha256_fingerprint:
        try:
            tls = TlsOptions(certificate_sha256_fingerprint=normalize_fingerprint(tls.certificate_sha256_fingerprint))
        except ValueError as exc:
            violations.add(f"{field}.certificate_sha256_fingerprint", str(exc))
    if master_url and master_url.startswith("http://") and tls.mode != "system":
        violations.add(field, "TLS options apply to https:// master URLs only; use https or drop the TLS options")
    return tls


def page_size(violations: Violations, field: str, value: int) -> int:
    if value < 0:
        violations.add(field, f"must not be negative (0 means the default {DEFAULT_PAGE_SIZE})")
        return DEFAULT_PAGE_SIZE
    if value > MAX_PAGE_SIZE:
        violations.add(field, f"must be at most {MAX_PAGE_SIZE}")
        return MAX_PAGE_SIZE
    return value or DEFAULT_PAGE_SIZE


def check_ha_config(violations: Violations, priority: str, order: int | None, start_delay: int | None) -> None:
    if priority not in HA_RESTART_PRIORITIES:
        violations.add("ha_restart_priority", 'must be "restart", "best-effort" or "" (not protected)')
    if order is not None and order < 0:
        violations.add("order", "must not be negative")
    if start_delay is not None and start_delay < 0:
        violations.add("start_delay_seconds", "must not be negative")


# ------------------------------------------------------------------------------------------ page tokens


def fingerprint(parts: Sequence[Any]) -> str:
    return hashlib.sha256(orjson.dumps(list(parts))).hexdigest()[:16]


def encode_page_token(kind: str, after_id: int | None, revision: int, filter_fingerprint: str) -> str:
    """The token of the page after `after_id`; "" when there is none (the last page)."""
    if after_id is None:
        return ""
    raw = orjson.dumps({"k": kind, "a": after_id, "r": revision, "f": filter_fingerprint})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str, kind: str, filter_fingerprint: str) -> tuple[int | None, int | None]:
    """(after_id, revision) of a token this server issued for the same list and filter; (None, None) for ""."""
    if not token:
        return None, None
    try:
        data = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if data["k"] != kind:
            raise ValueError("kind")
        after_id, revision, issued_for = int(data["a"]), int(data["r"]), str(data["f"])
    except (ValueError, KeyError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise invalid_arguments(
            [FieldViolation("page_token", "is not a token this service issued; pass next_page_token as it came")]
        ) from None
    if issued_for != filter_fingerprint:
        raise invalid_arguments(
            [FieldViolation("page_token", "was issued for other filters; keep the filters while paging")]
        )
    return after_id, revision


__all__ = ["ServiceError", "Violations"]

"""R3 version gate: does a pool master qualify for native XenServer HA (XenServer 6.2 and later)?

Versions compare as integer lists, never as strings: "6.10" > "6.2", "10.0" > "9.9", "6.2" == "6.2.0".
"""

from __future__ import annotations

import re

from ha_service.domain.model import HaWarning, VersionFacts, VersionSupport, VersionVerdict, WarningCode

MIN_API_VERSION: tuple[int, int] = (2, 0)  # XenServer 6.2
MIN_XENSERVER_PRODUCT_VERSION: tuple[int, ...] = (6, 2, 0)
# Brands whose product_version is XenServer's numbering, so the 6.2.0 cross-check means something.
XENSERVER_BRANDS = frozenset({"xenserver", "citrix hypervisor", "citrix xenserver"})

_VERSION_RE = re.compile(r"[0-9]+(?:\.[0-9]+)*")
_INT_RE = re.compile(r"[0-9]+")


def parse_version(text: str | None) -> tuple[int, ...] | None:
    """ "6.2.0" -> (6, 2, 0); None for missing or garbage (only ASCII digits and dots, surrounding blanks ignored)."""
    if text is None:
        return None
    stripped = text.strip()
    if not _VERSION_RE.fullmatch(stripped):
        return None
    return tuple(int(part) for part in stripped.split("."))


def _normalised(version: tuple[int, ...]) -> tuple[int, ...]:
    # Trailing zeros carry no meaning: "6.2" and "6.2.0" are the same release.
    end = len(version)
    while end > 0 and version[end - 1] == 0:
        end -= 1
    return version[:end]


def compare_versions(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """-1, 0 or 1, comparing component by component as integers, missing components counting as 0."""
    left, right = _normalised(a), _normalised(b)
    return (left > right) - (left < right)


def version_at_least(version: tuple[int, ...], minimum: tuple[int, ...]) -> bool:
    return compare_versions(version, minimum) >= 0


def parse_api_component(value: int | str | None) -> int | None:
    """An API_version_major/minor as XAPI sends it (a string) or as an int; None for missing or garbage."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    stripped = value.strip()
    return int(stripped) if _INT_RE.fullmatch(stripped) else None


def is_xenserver_brand(product_brand: str | None) -> bool:
    return product_brand is not None and " ".join(product_brand.split()).lower() in XENSERVER_BRANDS


def native_ha_supported(facts: VersionFacts | None) -> VersionVerdict:
    """The R3 verdict for a pool master.

    - No readable API version (major and minor both needed) -> UNKNOWN: the caller answers FAILED_PRECONDITION.
    - API version < 2.0 -> UNSUPPORTED whatever the product says.
    - XenServer/Citrix brands: product_version must also be >= 6.2.0 (a cross-check). A missing or unreadable
      product_version skips the cross-check (SUPPORTED, with a warning): the API version is the robust gate and
      every XenServer with API >= 2.0 is 6.2 or later.
    - Any other brand (XCP-ng, unknown, missing): the API version alone decides, since their product_version
      uses a numbering of their own.
    """
    if facts is None:
        return VersionVerdict(VersionSupport.UNKNOWN, "The pool's version is unknown (pool not synced).")
    major = parse_api_component(facts.api_version_major)
    minor = parse_api_component(facts.api_version_minor)
    if major is None or minor is None:
        return VersionVerdict(
            VersionSupport.UNKNOWN,
            "The pool master's XAPI API version is unknown or unreadable "
            f"(major={facts.api_version_major!r}, minor={facts.api_version_minor!r}); "
            "wait for the pool to sync or give the version in the request.",
        )
    api = (major, minor)
    api_text = f"{major}.{minor}"
    if api < MIN_API_VERSION:
        return VersionVerdict(
            VersionSupport.UNSUPPORTED,
            f"XAPI API version {api_text} is older than 2.0 (XenServer 6.2): native HA needs XenServer 6.2 or later.",
            api,
        )
    brand = facts.product_brand
    if not is_xenserver_brand(brand):
        shown = brand.strip() if brand and brand.strip() else "unknown brand"
        return VersionVerdict(
            VersionSupport.SUPPORTED,
            f"XAPI API version {api_text} >= 2.0 ({shown}; its product_version is not XenServer's numbering).",
            api,
        )
    product = parse_version(facts.product_version)
    if product is None:
        return VersionVerdict(
            VersionSupport.SUPPORTED,
            f"XAPI API version {api_text} >= 2.0 ({brand}); product_version {facts.product_version!r} is "
            "missing or unreadable, so the 6.2.0 cross-check was skipped.",
            api,
            (
                HaWarning(
                    WarningCode.VERSION_CROSS_CHECK_SKIPPED,
                    f"product_version {facts.product_version!r} could not be read; relying on the API version.",
                ),
            ),
        )
    product_text = ".".join(str(p) for p in product)
    if not version_at_least(product, MIN_XENSERVER_PRODUCT_VERSION):
        return VersionVerdict(
            VersionSupport.UNSUPPORTED,
            f"{brand} {product_text} is older than 6.2.0: native HA needs XenServer 6.2 or later.",
            api,
        )
    return VersionVerdict(
        VersionSupport.SUPPORTED,
        f"{brand} {product_text} (XAPI API version {api_text}) is 6.2 or later.",
        api,
    )

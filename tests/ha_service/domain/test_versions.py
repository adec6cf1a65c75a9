"""R3: the version gate and the integer version comparator."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ha_service.domain.model import VersionFacts, VersionSupport, WarningCode
from ha_service.domain.versions import (
    compare_versions,
    is_xenserver_brand,
    native_ha_supported,
    parse_api_component,
    parse_version,
    version_at_least,
)

S, U, K = VersionSupport.SUPPORTED, VersionSupport.UNSUPPORTED, VersionSupport.UNKNOWN


@pytest.mark.parametrize(
    ("major", "minor", "brand", "product", "expected"),
    [
        # Real releases (reference/xapi.md), as XAPI sends them (strings).
        ("1", "9", "XenServer", "6.0.0", U),
        ("1", "10", "XenServer", "6.1.0", U),
        ("2", "0", "XenServer", "6.2.0", S),
        ("2", "3", "XenServer", "6.5.0", S),
        ("2", "5", "XenServer", "7.0.0", S),
        ("2", "6", "XenServer", "7.1.0", S),
        ("2", "15", "Citrix Hypervisor", "8.2.0", S),
        ("2", "15", "XCP-ng", "8.2.1", S),
        ("2", "21", "XCP-ng", "8.3.0", S),
        # ints as well as strings
        (2, 0, "XenServer", "6.2.0", S),
        (1, 10, "XenServer", "6.1.0", U),
        # brand spelling: case and blanks do not matter
        ("2", "0", "xenserver", "6.1.0", U),
        ("2", "0", "CITRIX XENSERVER", "6.1.0", U),
        ("2", "0", "  Citrix   Hypervisor ", "6.1.0", U),
        # XenServer brand with API >= 2.0 but product_version < 6.2.0: the cross-check fails
        ("2", "0", "XenServer", "6.1.99", U),
        ("2", "0", "XenServer", "6.10", S),  # "6.10" > "6.2" as integers
        ("2", "0", "XenServer", "6.2", S),  # "6.2" == "6.2.0"
        ("2", "0", "XenServer", "10.0", S),  # "10.0" > "9.9"
        # XCP-ng's own numbering is not XenServer's: API version alone decides
        ("2", "15", "XCP-ng", "1.0.0", S),
        ("1", "10", "XCP-ng", "8.3.0", U),
        ("1", "10", "XCP", "1.6.10", U),
        # missing product_version for a XenServer brand with API >= 2.0: qualifies (API is the robust gate)
        ("2", "0", "XenServer", None, S),
        ("2", "0", "XenServer", "", S),
        ("2", "0", "XenServer", "seven", S),
        ("1", "10", "XenServer", None, U),
        # missing or unknown brand: API version decides
        ("2", "0", None, None, S),
        ("2", "0", "", "1.0", S),
        ("1", "10", None, "9.9", U),
        # no API version (or unreadable): unknown, never a guess
        (None, None, "XenServer", "8.2.0", K),
        ("2", None, "XenServer", "8.2.0", K),
        (None, "0", "XenServer", "8.2.0", K),
        ("two", "0", "XenServer", "8.2.0", K),
        ("2", "x", "XCP-ng", "8.3.0", K),
        ("-2", "0", "XenServer", "6.2.0", K),
        (-2, 0, "XenServer", "6.2.0", K),
        ("2.0", "0", "XenServer", "6.2.0", K),
        ("", "", None, None, K),
        (True, 0, "XenServer", "6.2.0", K),
        # much newer versions
        ("3", "0", "XenServer", "9.0.0", S),
        ("10", "0", "XenServer", "10.0.0", S),
        (" 2 ", " 0 ", "XenServer", " 6.2.0 ", S),
    ],
)
def test_version_gate(major, minor, brand, product, expected):
    verdict = native_ha_supported(VersionFacts(major, minor, brand, product))
    assert verdict.support is expected, verdict.reason
    assert verdict.reason
    assert verdict.supported == (expected is S)
    assert verdict.unknown == (expected is K)
    if expected is not K:
        assert verdict.api_version == (parse_api_component(major), parse_api_component(minor))


def test_no_facts_is_unknown():
    verdict = native_ha_supported(None)
    assert verdict.unknown
    assert "not synced" in verdict.reason


@pytest.mark.parametrize("product", [None, "", "7.x", "abc"])
def test_skipped_cross_check_is_visible(product):
    verdict = native_ha_supported(VersionFacts("2", "6", "XenServer", product))
    assert verdict.supported
    assert [w.code for w in verdict.warnings] == [WarningCode.VERSION_CROSS_CHECK_SKIPPED]


def test_clean_verdict_has_no_warnings():
    assert native_ha_supported(VersionFacts("2", "6", "XenServer", "7.1.0")).warnings == ()


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("6.2.0", (6, 2, 0)),
        ("6.10", (6, 10)),
        ("10", (10,)),
        (" 8.2.1 ", (8, 2, 1)),
        ("007.1", (7, 1)),
        (None, None),
        ("", None),
        ("6..2", None),
        ("6.2.", None),
        (".6.2", None),
        ("6.2.0-beta", None),
        ("v6.2", None),
        ("6,2", None),
        ("-6.2", None),
        ("\uff16.\uff12", None),  # full-width digits are not ASCII digits
        ("6 .2", None),
    ],
)
def test_parse_version(text, parsed):
    assert parse_version(text) == parsed


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("6.10", "6.2", 1),
        ("6.2", "6.10", -1),
        ("6.2", "6.2.0", 0),
        ("6.2.0.0", "6.2", 0),
        ("10.0", "9.9", 1),
        ("9.9", "10.0", -1),
        ("6.2.1", "6.2", 1),
        ("6.1.99", "6.2.0", -1),
        ("0", "0.0.0", 0),
        ("1.0.1", "1.0.0.9", 1),
    ],
)
def test_compare_versions_traps(a, b, expected):
    pa, pb = parse_version(a), parse_version(b)
    assert pa is not None and pb is not None
    assert compare_versions(pa, pb) == expected
    assert version_at_least(pa, pb) == (expected >= 0)


@pytest.mark.parametrize(
    ("value", "parsed"),
    [(0, 0), (15, 15), ("15", 15), (" 2 ", 2), (None, None), (-1, None), ("", None), ("1.5", None), (False, None)],
)
def test_parse_api_component(value, parsed):
    assert parse_api_component(value) == parsed


@pytest.mark.parametrize(
    ("brand", "expected"),
    [
        ("XenServer", True),
        ("Citrix Hypervisor", True),
        ("Citrix XenServer", True),
        ("citrix  hypervisor", True),
        ("XCP-ng", False),
        ("XCP", False),
        ("XenServerX", False),
        ("", False),
        (None, False),
    ],
)
def test_xenserver_brands(brand, expected):
    assert is_xenserver_brand(brand) is expected


versions = st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=6).map(tuple)


def _trimmed(v: tuple[int, ...]) -> tuple[int, ...]:
    v = tuple(v)
    while v and v[-1] == 0:
        v = v[:-1]
    return v


@given(versions, versions)
def test_comparator_matches_integer_tuples_padded(a, b):
    width = max(len(a), len(b))
    pa, pb = a + (0,) * (width - len(a)), b + (0,) * (width - len(b))
    assert compare_versions(a, b) == (pa > pb) - (pa < pb)


@given(versions, versions)
def test_comparator_antisymmetric(a, b):
    assert compare_versions(a, b) == -compare_versions(b, a)
    assert (compare_versions(a, b) == 0) == (_trimmed(a) == _trimmed(b))


@given(versions, versions, versions)
def test_comparator_transitive(a, b, c):
    if compare_versions(a, b) <= 0 and compare_versions(b, c) <= 0:
        assert compare_versions(a, c) <= 0


@given(versions)
def test_parse_round_trips_dotted_text(v):
    assert parse_version(".".join(str(p) for p in v)) == v


@given(st.text(max_size=20))
def test_parse_version_never_raises(text):
    parsed = parse_version(text)
    assert parsed is None or all(p >= 0 for p in parsed)


@given(
    st.one_of(st.none(), st.integers(-5, 50), st.text(max_size=5)),
    st.one_of(st.none(), st.integers(-5, 50), st.text(max_size=5)),
    st.one_of(st.none(), st.sampled_from(["XenServer", "Citrix Hypervisor", "XCP-ng", "x"]), st.text(max_size=8)),
    st.one_of(st.none(), st.text(max_size=8), versions.map(lambda v: ".".join(map(str, v)))),
)
def test_gate_is_total_and_never_supports_old_api(major, minor, brand, product):
    verdict = native_ha_supported(VersionFacts(major, minor, brand, product))
    assert verdict.reason
    if verdict.supported:
        assert verdict.api_version is not None and verdict.api_version >= (2, 0)
        if is_xenserver_brand(brand) and (p := parse_version(product)) is not None:
            assert version_at_least(p, (6, 2, 0))
    if verdict.unknown:
        assert parse_api_component(major) is None or parse_api_component(minor) is None

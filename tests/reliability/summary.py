"""What the reliability tests report at the end of the test output (printed by tests/conftest.py, which also
collects it from pytest-xdist workers)."""

from __future__ import annotations

SECTIONS: dict[str, list[str]] = {}


def report(title: str, lines: list[str]) -> None:
    SECTIONS[title] = list(lines)

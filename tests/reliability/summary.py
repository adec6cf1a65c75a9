"""What the reliability tests report at the end of the test output (printed by tests/reliability/conftest.py)."""

from __future__ import annotations

SECTIONS: dict[str, list[str]] = {}


def report(title: str, lines: list[str]) -> None:
    SECTIONS[title] = list(lines)

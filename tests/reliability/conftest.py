"""Prints the fault run's and the bad-input run's summaries at the end of the test output."""

from __future__ import annotations

import pytest

from tests.reliability.summary import SECTIONS


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for title, lines in SECTIONS.items():
        terminalreporter.section(title)
        for line in lines:
            terminalreporter.write_line(line)

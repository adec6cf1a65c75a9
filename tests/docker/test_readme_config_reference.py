"""The README's configuration reference is the one the code generates from the services' ConfigSchemas."""

from __future__ import annotations

from pathlib import Path

import pytest

from xsha_cli import config_reference
from xsha_common.config import render_markdown_table

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.parametrize("program", sorted(config_reference.schemas()))
def test_readme_table_matches_the_schema(program: str) -> None:
    schema = config_reference.schemas()[program]
    text = README.read_text()
    embedded = config_reference.embedded(text, program)
    assert embedded is not None, f"README.md lacks the generated reference of {program}"
    assert embedded == config_reference.block(program, schema), (
        f"README.md's reference of {program} is stale: run python -m xsha_cli.config_reference --write"
    )
    for setting in schema.settings:
        row = next(line for line in embedded.splitlines() if line.startswith(f"| `{setting.name}` |"))
        assert f"`{setting.env_var(schema.env_prefix)}`" in row
    assert render_markdown_table(schema) in text


def test_check_mode_detects_a_stale_readme(tmp_path: Path) -> None:
    stale = tmp_path / "README.md"
    stale.write_text(README.read_text().replace("| `listen_address` |", "| `listen_addr` |", 1))
    assert config_reference.main(["--check", "--readme", str(stale)]) == 1
    assert config_reference.main(["--write", "--readme", str(stale)]) == 0
    assert config_reference.main(["--check", "--readme", str(stale)]) == 0
    assert stale.read_text() == README.read_text()

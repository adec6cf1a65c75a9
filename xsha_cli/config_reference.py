"""The README's configuration reference, generated from the services' ConfigSchemas.

python -m xsha_cli.config_reference            # print the tables
python -m xsha_cli.config_reference --write    # replace them in README.md (between the config markers)
python -m xsha_cli.config_reference --check    # exit 1 when README.md differs from the code
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from xsha_common.config import ConfigSchema, render_markdown_table

README = Path(__file__).resolve().parent.parent / "README.md"


def schemas() -> dict[str, ConfigSchema]:
    """The programs documented, by name. Imported here so the CLI itself does not load the services."""
    from ha_service.__main__ import SCHEMA as HA_SCHEMA
    from sync_service.settings import SCHEMA as SYNC_SCHEMA

    return {"sync_service": SYNC_SCHEMA, "ha_service": HA_SCHEMA}


def begin_marker(program: str) -> str:
    return f"<!-- BEGIN generated config reference: {program} (python -m xsha_cli.config_reference --write) -->"


def end_marker(program: str) -> str:
    return f"<!-- END generated config reference: {program} -->"


def block(program: str, schema: ConfigSchema) -> str:
    return f"{begin_marker(program)}\n{render_markdown_table(schema)}{end_marker(program)}"


def embedded(readme_text: str, program: str) -> str | None:
    """The block of `program` as the README holds it, or None when its markers are missing."""
    start = readme_text.find(begin_marker(program))
    end = readme_text.find(end_marker(program))
    if start < 0 or end < start:
        return None
    return readme_text[start : end + len(end_marker(program))]


def updated(readme_text: str) -> str:
    for program, schema in schemas().items():
        current = embedded(readme_text, program)
        if current is None:
            raise ValueError(
                f"README.md has no markers for {program}: add {begin_marker(program)} ... {end_marker(program)}"
            )
        readme_text = readme_text.replace(current, block(program, schema))
    return readme_text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xsha_cli.config_reference", description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", action="store_true", help="update README.md")
    action.add_argument("--check", action="store_true", help="exit 1 when README.md is stale")
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args(argv)
    if not (args.write or args.check):
        for program, schema in schemas().items():
            print(f"### {program}\n\n{render_markdown_table(schema)}")
        return 0
    text = args.readme.read_text(encoding="utf-8")
    fresh = updated(text)
    if args.check:
        if fresh != text:
            print(
                f"{args.readme}: the configuration reference is stale; run python -m xsha_cli.config_reference --write"
            )
            return 1
        return 0
    args.readme.write_text(fresh, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Renders a results file of `python -m bench` as the Markdown table the README and the release notes show.

`python -m bench.report bench-results.json` prints one row per figure (and per database / wire format).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _measured(figure: Mapping[str, Any]) -> str:
    if figure.get("error"):
        return f"failed: {figure['error']}"
    value = figure["value"]
    if not value:
        return "no value"
    text = f"{_number(value['median'])} {figure['unit']}".strip()
    if figure["repeats"] > 1:
        text += f" (min {_number(value['min'])}, max {_number(value['max'])}, n={figure['repeats']})"
    return text


def render(document: Mapping[str, Any]) -> str:
    machine = document["machine"]
    lines = [
        f"Measured {document['date']} with `{document['command']}` on {machine.get('cpu_model', '?')}, "
        f"{machine.get('cores', '?')} cores, Python {machine.get('python', '?')}"
        + (" (quick sizes)" if document.get("quick") else "")
        + ".",
        "",
        "| # | figure | db | wire | target | measured (median) | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for figure in document["figures"]:
        cells = [
            str(figure["figure"]),
            figure["name"],
            figure.get("db") or "-",
            figure.get("wire") or "-",
            figure["target"] or "-",
            _measured(figure),
            "yes" if figure["met"] else "**no**",
        ]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="?", default=Path("bench-results.json"))
    args = parser.parse_args(argv)
    print(render(json.loads(args.results.read_text())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Entry point of the `xsha` console script and `python -m xsha_cli`."""

from __future__ import annotations

from xsha_cli.app import app


def main() -> None:
    app(prog_name="xsha")


if __name__ == "__main__":
    main()

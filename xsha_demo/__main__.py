"""`python -m xsha_demo` (what `make run` runs)."""

from __future__ import annotations

import sys

from xsha_demo.demo import main

if __name__ == "__main__":
    sys.exit(main())

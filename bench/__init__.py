"""xsha's benchmarks: `python -m bench` (or `make bench`) prints one JSON document of figures; see bench/__main__.py."""

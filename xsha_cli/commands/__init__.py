"""The `xsha` command groups, one module each."""

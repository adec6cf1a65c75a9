"""xsha_cli: `xsha`, the operator CLI of xsha (typer + rich), and the containers' health check command."""

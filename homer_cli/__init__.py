"""The `homer` command-line interface (Typer + rich); see `homer_cli.main`."""

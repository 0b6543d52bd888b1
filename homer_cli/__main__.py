"""`python -m homer_cli`: the same as the `homer` command."""

from homer_cli.main import app

app(prog_name="homer")

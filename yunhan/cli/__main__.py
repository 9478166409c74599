"""`python -m yunhan.cli`: how the lab starts its server and agents (same interpreter)."""

from yunhan.cli.main import app

app()

"""CLI commands of stores (vectors)."""

import typer


def register(app: typer.Typer) -> None:
    """Add this package's commands to the streamrec CLI."""

"""The ``streamrec`` command.

Each package contributes its own subcommands through the ``streamrec.commands`` entry-point
group (see pyproject.toml): an entry names a ``register(app: typer.Typer) -> None`` function.
That keeps imports pointing one way: ``core`` never imports the packages above it.
"""

from __future__ import annotations

from importlib.metadata import entry_points, version
from typing import Annotated

import typer

app = typer.Typer(
    name="streamrec",
    help="An event-driven streaming recommender: Kafka in, Redis/Qdrant/SQL state, FastAPI out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="markdown",  # reflow docstring paragraphs instead of keeping line breaks
)


def _version(show: bool) -> None:
    if show:
        typer.echo(f"streamrec {version('streamrec')}")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """An event-driven streaming recommender: Kafka in, Redis/Qdrant/SQL state, FastAPI out.

    Every command's heavy imports (PyTorch, FastAPI, FastStream) load only when that command
    runs, so `--help` and the light commands start at once.
    """


def _register_plugins() -> None:
    for entry in sorted(entry_points(group="streamrec.commands"), key=lambda e: e.name):
        entry.load()(app)


def main() -> None:
    _register_plugins()
    app()

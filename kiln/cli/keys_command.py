"""`kiln keys create | list | delete`: the access keys a `kiln server --auth sigv4` accepts.

The commands edit `<data dir>/credentials` directly (no server needed); a running server picks up
the change at its next request.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kiln.access_keys import KeyFile
from kiln.config import default_data_dir
from kiln.errors import KilnError
from kiln.private_files import make_private_dir

keys_app = typer.Typer(help="Access keys for `kiln server --auth sigv4`.", no_args_is_help=True, rich_markup_mode=None)
console = Console()
err = Console(stderr=True)

DataDirOption = Annotated[Path | None, typer.Option(help="The server's data dir [default: $XDG_DATA_HOME/kiln].")]


def _key_file(data_dir: Path | None) -> KeyFile:
    directory = (data_dir or default_data_dir()).expanduser()
    make_private_dir(directory)
    keys = KeyFile(directory)
    keys.check_private()
    return keys


def _fail(exc: KilnError) -> typer.Exit:
    err.print(f"[red]error:[/red] {escape(exc.message)}", soft_wrap=True)
    return typer.Exit(2)


@keys_app.command()
def create(
    data_dir: DataDirOption = None,
    description: Annotated[str, typer.Option(help="A note to recognise the key by in `kiln keys list`.")] = "",
) -> None:
    """Create an access key pair and print it (the secret is shown only here)."""
    try:
        key = _key_file(data_dir).create(description)
    except KilnError as exc:
        raise _fail(exc) from None
    typer.echo(f"AWS_ACCESS_KEY_ID={key.access_key_id}")
    typer.echo(f"AWS_SECRET_ACCESS_KEY={key.secret_access_key}")


@keys_app.command("list")
def list_keys(data_dir: DataDirOption = None) -> None:
    """The access key ids (never the secrets), when each was created, and its description."""
    try:
        keys = _key_file(data_dir).keys()
    except KilnError as exc:
        raise _fail(exc) from None
    table = Table("access key id", "created", "description")
    for key in keys:
        table.add_row(key.access_key_id, key.created_at, escape(key.description))
    console.print(table)


@keys_app.command()
def delete(access_key_id: str, data_dir: DataDirOption = None) -> None:
    """Remove a key: requests signed with it are refused from the server's next request on."""
    try:
        found = _key_file(data_dir).delete(access_key_id)
    except KilnError as exc:
        raise _fail(exc) from None
    if not found:
        err.print(f"[red]error:[/red] no access key {escape(access_key_id)}", soft_wrap=True)
        raise typer.Exit(1)
    typer.echo(f"deleted {access_key_id}")

"""`kiln executor status | stop`: the attempt supervisor of a data dir (see docs/reliability.md).

Attempts outlive `kiln server` on purpose; these commands are how a person sees and ends them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from kiln.config import Settings, default_data_dir
from kiln.executors.supervised import connect, stop_supervisor

executor_app = typer.Typer(help="The attempt supervisor that runs a data dir's jobs.", no_args_is_help=True,
                           rich_markup_mode=None)  # fmt: skip
console = Console()

DataDirOption = Annotated[Path | None, typer.Option(help="The server's data dir [default: $XDG_DATA_HOME/kiln].")]


def _executor_dir(data_dir: Path | None) -> Path:
    return Settings(data_dir=(data_dir or default_data_dir()).expanduser()).executor_dir


@executor_app.command()
def status(data_dir: DataDirOption = None) -> None:
    """Say whether a supervisor runs for the data dir (exit code 1 when none does)."""
    directory = _executor_dir(data_dir)
    sock = connect(directory)
    if sock is None:
        console.print(f"no attempt supervisor runs for {directory}")
        raise typer.Exit(1)
    sock.close()
    console.print(f"an attempt supervisor runs for {directory} (log: {directory / 'supervisor.log'})")


@executor_app.command()
def stop(
    data_dir: DataDirOption = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the attempts to end.")] = 120.0,
) -> None:
    """Terminate every attempt of the data dir (SIGTERM, then SIGKILL after the grace) and stop the
    supervisor. Stop the server first: a running server would start a new supervisor."""
    directory = _executor_dir(data_dir)
    if connect(directory) is None:
        console.print(f"no attempt supervisor runs for {directory}")
        return
    if not stop_supervisor(directory, timeout=timeout):
        console.print(f"the supervisor for {directory} did not stop within {timeout:g} s")
        raise typer.Exit(1)
    console.print(f"stopped the attempt supervisor for {directory} and its attempts")

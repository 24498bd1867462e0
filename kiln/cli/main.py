"""`kiln server`, `kiln jobs`, `kiln describe`, `kiln logs`, `kiln render`, `kiln sample-scene`,
`kiln blender-addon`."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from botocore.exceptions import BotoCoreError, ClientError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kiln.cli import render_command
from kiln.cli.client import batch_client, default_endpoint, sign_request
from kiln.cli.executor_command import executor_app
from kiln.cli.keys_command import keys_app
from kiln.config import DEFAULT_PORT, load_settings
from kiln.errors import KilnError

app = typer.Typer(
    help="Kiln: an AWS Batch-compatible job scheduler that really runs jobs.",
    no_args_is_help=True,
    rich_markup_mode=None,  # help texts show "[default: ...]" literally
)
console = Console()
err = Console(stderr=True)
app.command("render")(render_command.render)
app.command("sample-scene")(render_command.sample_scene)
app.add_typer(keys_app, name="keys")
app.add_typer(executor_app, name="executor")

EndpointOption = Annotated[
    str | None,
    typer.Option("--endpoint-url", help="Kiln server URL [default: $AWS_ENDPOINT_URL_BATCH or http://127.0.0.1:8642]"),
]
STATUSES = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED")
STATUS_STYLE = {
    "SUCCEEDED": "green",
    "FAILED": "red",
    "RUNNING": "cyan",
    "RUNNABLE": "yellow",
    "STARTING": "cyan",
}


@app.command()
def server(
    host: Annotated[str | None, typer.Option(help="Address to bind [default: 127.0.0.1].")] = None,
    port: Annotated[int | None, typer.Option(help=f"Port to bind [default: {DEFAULT_PORT}].")] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="State, logs and kiln.toml [default: $XDG_DATA_HOME/kiln].")
    ] = None,
    database_url: Annotated[str | None, typer.Option(help="SQLAlchemy URL [default: SQLite in the data dir].")] = None,
    region: Annotated[str | None, typer.Option(help="Region shown in ARNs [default: us-east-1].")] = None,
    auth: Annotated[
        str | None, typer.Option(help="none, or sigv4: requests must be signed with a key from `kiln keys create`.")
    ] = None,
    insecure: Annotated[
        bool | None, typer.Option("--insecure", help="Allow a non-loopback --host without --auth sigv4.")
    ] = None,
    account_id: Annotated[str | None, typer.Option(help="Account shown in ARNs [default: 123456789012].")] = None,
    fsync: Annotated[
        bool | None, typer.Option("--fsync/--no-fsync", help="fsync every commit (power-loss safe).")
    ] = None,
    retention_days: Annotated[
        float | None, typer.Option(help="Keep finished jobs and logs this long [default: 7].")
    ] = None,
    min_timeout_seconds: Annotated[int | None, typer.Option(help="Testing: lower AWS's 60 s timeout floor.")] = None,
    termination_grace_seconds: Annotated[
        float | None, typer.Option(help="SIGTERM-to-SIGKILL grace [default: 30].")
    ] = None,
    min_state_time_limit_seconds: Annotated[
        int | None, typer.Option(help="Testing: lower AWS's 600 s jobStateTimeLimitActions floor.")
    ] = None,
    executor: Annotated[
        str | None,
        typer.Option(
            help="What runs jobs: local (processes), docker (containers) or ray (a Ray cluster) [default: local]."
        ),
    ] = None,
    docker_host: Annotated[
        str | None,
        typer.Option(help="Docker daemon for --executor docker [default: $DOCKER_HOST or the local socket]."),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(
            help="Ray cluster (GCS HOST:PORT) for --executor ray [default: join the local one, or start one]."
        ),
    ] = None,
    gpus: Annotated[
        int | None,
        typer.Option(min=0, help="GPUs the local executor hands out [default: those nvidia-smi lists]."),
    ] = None,
    job_user: Annotated[
        str | None,
        typer.Option(
            help="User that jobs run as on the local and Ray executors [default: a uid of each job's own "
            "(job_uids in kiln.toml) with nobody's group when the server runs as root, else the server's own user]."
        ),
    ] = None,
) -> None:
    """Run the Kiln server (AWS Batch API at /v1/*, health at /healthz)."""
    from kiln.server import serve

    try:
        settings = load_settings(
            data_dir, host=host, port=port, database_url=database_url, region=region, account_id=account_id, auth=auth,
            insecure=insecure,
            fsync=fsync, retention_days=retention_days, min_timeout_seconds=min_timeout_seconds,
            termination_grace_seconds=termination_grace_seconds,
            min_state_time_limit_seconds=min_state_time_limit_seconds, executor=executor, docker_host=docker_host,
            ray_address=ray_address, gpus=gpus, job_user=job_user,
        )  # fmt: skip
    except KilnError as exc:
        err.print(f"[red]error:[/red] {escape(exc.message)}", soft_wrap=True)
        raise typer.Exit(2) from None
    try:
        serve(settings)
    except KilnError as exc:
        err.print(f"[red]error:[/red] {escape(exc.message)}", soft_wrap=True)
        raise typer.Exit(2) from None


@app.command("blender-addon")
def blender_addon(
    output: Annotated[
        Path, typer.Option("--output", "-o", metavar="FILE", help="Where to write the add-on zip, e.g. kiln_addon.zip.")
    ],
) -> None:
    """Write the Kiln add-on for Blender 4.2+ as an installable zip (extension or legacy add-on).

    Install it in Blender: Edit > Preferences > Get Extensions > Install from Disk (or Add-ons >
    Install from Disk), then find the Kiln panel in Render Properties.
    """
    from kiln.blender_addon.build import AddonBuildError, build_addon

    try:
        build_addon(output)
    except (AddonBuildError, OSError) as exc:
        raise _fail(exc) from None
    console.print(f"wrote the Kiln add-on to {escape(str(output))}", soft_wrap=True)


def _fail(exc: Exception) -> typer.Exit:
    err.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
    return typer.Exit(1)


def _time(ms: int | None) -> str:
    return "" if ms is None else datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")


@app.command()
def jobs(
    queue: Annotated[
        list[str] | None, typer.Option("--queue", "-q", help="Queue name or ARN (repeatable) [default: all].")
    ] = None,
    status: Annotated[
        list[str] | None, typer.Option("--status", "-s", help="Status (repeatable) [default: all].")
    ] = None,
    endpoint_url: EndpointOption = None,
) -> None:
    """A table of jobs by queue and status."""
    client = batch_client(endpoint_url)
    wanted = [s.upper() for s in status] if status else list(STATUSES)
    unknown = sorted(set(wanted) - set(STATUSES))
    if unknown:
        raise _fail(ValueError(f"unknown status {', '.join(unknown)}; use one of {', '.join(STATUSES)}"))
    try:
        queues = queue or [q["jobQueueName"] for page in client.get_paginator("describe_job_queues").paginate()
                           for q in page["jobQueues"]]  # fmt: skip
        table = Table("queue", "job id", "name", "status", "created", "reason")
        for name in queues:
            for state in wanted:
                for page in client.get_paginator("list_jobs").paginate(jobQueue=name, jobStatus=state):
                    for job in page["jobSummaryList"]:
                        style = STATUS_STYLE.get(job["status"], "")
                        table.add_row(name, job["jobId"], job["jobName"], f"[{style}]{job['status']}[/]" if style else job["status"],
                                      _time(job.get("createdAt")), escape(job.get("statusReason") or ""))  # fmt: skip
    except (ClientError, BotoCoreError) as exc:
        raise _fail(exc) from None
    console.print(table)


@app.command()
def describe(job_id: str, endpoint_url: EndpointOption = None) -> None:
    """Everything Kiln knows about one job (DescribeJobs), as JSON."""
    try:
        found = batch_client(endpoint_url).describe_jobs(jobs=[job_id])["jobs"]
    except (ClientError, BotoCoreError) as exc:
        raise _fail(exc) from None
    if not found:
        raise _fail(LookupError(f"job {job_id} not found"))
    console.print_json(json.dumps(found[0]))


def _fetch_log(
    endpoint: str, job_id: str, attempt: int | None, offset: int, container: str | None = None
) -> dict[str, Any]:
    params: dict[str, Any] = {"offset": offset}
    if attempt is not None:
        params["attempt"] = attempt
    if container is not None:
        params["container"] = container
    path = job_id.replace("#", "%23")  # an MNP node `<job>#<i>`: '#' would start the URL's fragment
    request = sign_request(httpx.Request("GET", f"{endpoint.rstrip('/')}/kiln/v1/logs/{path}", params=params))
    with httpx.Client(timeout=30) as client:
        response = client.send(request)
    if response.status_code != 200:
        raise RuntimeError(response.json().get("message", response.text))
    return dict(response.json())


@app.command()
def logs(
    job_id: str,
    attempt: Annotated[int | None, typer.Option(help="Attempt number, 1-based [default: latest].")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the attempt ends.")] = False,
    container: Annotated[
        str | None,
        typer.Option(help="A container of an ecsProperties or eksProperties job [default: the attempt's own log]."),
    ] = None,
    endpoint_url: EndpointOption = None,
) -> None:
    """Print the output (stdout and stderr) of a job's attempt, or of one of its containers."""
    endpoint = endpoint_url or default_endpoint()
    offset = 0
    while True:
        try:
            chunk = _fetch_log(endpoint, job_id, attempt, offset, container)
        except (httpx.HTTPError, RuntimeError) as exc:
            raise _fail(exc) from None
        typer.echo(chunk["text"], nl=False)
        offset = chunk["nextOffset"]
        if not follow or chunk["finished"]:
            return
        if not chunk["text"]:
            time.sleep(0.5)

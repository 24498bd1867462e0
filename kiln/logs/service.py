"""CloudWatch Logs' view of job output: log group `/aws/batch/job`, one log stream per attempt.

AWS Batch jobs log to `/aws/batch/job`, stream `<definition>/default/<task id>`, which DescribeJobs
reports as `container.logStreamName`. Kiln names each attempt's output file the same way, so
`aws logs get-log-events --log-group-name /aws/batch/job --log-stream-name <that name>` reads it.
A stream exists once its attempt has started (as with the awslogs driver). Events, times and
positions are `events`'s business; this module maps the operations onto attempts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kiln.arns import Arns
from kiln.clock import now_ms
from kiln.config import Settings
from kiln.context import Context
from kiln.engine import multi_container
from kiln.engine.attempts import resolved_specs
from kiln.errors import NotFoundError, ValidationError
from kiln.logs import filter_patterns
from kiln.logs.events import MAX_PAGE_BYTES, Event, StreamFile
from kiln.pagination import encode_token, keyset_of
from kiln.store.database import Database
from kiln.store.records import Attempt, Stream
from kiln.store.repository import Repository

LOG_GROUP = "/aws/batch/job"
DEFAULT_EVENTS = 10_000  # GetLogEvents / FilterLogEvents without `limit`: as many as fit in 1 MB
DEFAULT_STREAMS = 50
FILTER_SCAN_BYTES = 32 * MAX_PAGE_BYTES  # FilterLogEvents reads at most this much per call, then pages
STREAMS_PER_QUERY = 100
Params = dict[str, Any]


def group_arn(arns: Arns) -> str:
    return f"arn:aws:logs:{arns.region}:{arns.account_id}:log-group:{LOG_GROUP}"


def require_group(ctx: Context, params: Params) -> None:
    """The request names `/aws/batch/job`, by name or by ARN; any other group does not exist."""
    name, identifier = params.get("logGroupName"), params.get("logGroupIdentifier")
    if name is not None and identifier is not None:
        raise ValidationError("logGroupName and logGroupIdentifier are mutually exclusive; give one")
    if name is None and identifier is None:
        raise ValidationError("Either logGroupName or logGroupIdentifier must be given")
    arn = group_arn(ctx.arns)
    if (name or identifier) not in {LOG_GROUP, arn, f"{arn}:*"}:
        raise NotFoundError("The specified log group does not exist.")


def open_stream(ctx: Context, name: str) -> StreamFile:
    task_id = name.rsplit("/", 1)[-1]
    attempt = ctx.repo.attempts.get(task_id)
    if attempt is None or (attempt.log_stream != name and name not in _container_streams(ctx, attempt)):
        raise NotFoundError("The specified log stream does not exist.")
    return _stream_of(ctx, attempt, name)


def _container_streams(ctx: Context, attempt: Attempt) -> list[str]:
    """The streams of an `ecsProperties` or `eksProperties` attempt's containers (none for other jobs)."""
    job = ctx.repo.jobs.get(attempt.job_id)
    if job is None or attempt.started_at is None:
        return []
    spec = resolved_specs(ctx.repo, [job], {})[job.id]
    return multi_container.container_streams(spec, attempt.task_id)


def _stream_of(ctx: Context, attempt: Attempt | Stream, name: str | None = None) -> StreamFile:
    """The attempt's own stream, or (`name`) one of its containers' streams."""
    name = name or attempt.log_stream
    path = ctx.settings.log_file(name)
    return StreamFile.open(name, path, attempt.started_at, attempt.stopped_at, ctx.now)


def in_window(start: int | None, end: int | None) -> Callable[[Event], bool]:
    """CloudWatch's time range: from `start` inclusive to `end` exclusive."""
    return lambda event: (start is None or event.timestamp >= start) and (end is None or event.timestamp < end)


# ------------------------------------------------------------------------------------ operations


def get_log_events(ctx: Context, params: Params) -> Params:
    """One page of a stream: from the head, the tail, or a token's position, either way."""
    require_group(ctx, params)
    stream = open_stream(ctx, params["logStreamName"])
    limit = params.get("limit", DEFAULT_EVENTS)
    accept = in_window(params.get("startTime"), params.get("endTime"))
    if params.get("nextToken") is not None:
        direction, position = stream.parse_token(params["nextToken"])
    else:
        direction, position = ("f", 0) if params.get("startFromHead") else ("b", stream.readable)
    if direction == "f":
        events, forward = stream.forward(position, limit, accept)
        backward = position
    else:
        events, backward = stream.backward(position, limit, accept)
        forward = position
    return {
        "events": [{"timestamp": e.timestamp, "message": e.message, "ingestionTime": e.timestamp} for e in events],
        "nextForwardToken": stream.token("f", forward),
        "nextBackwardToken": stream.token("b", backward),
    }


def describe_log_streams(ctx: Context, params: Params) -> Params:
    require_group(ctx, params)
    prefix, descending = params.get("logStreamNamePrefix"), bool(params.get("descending"))
    limit = params.get("limit", DEFAULT_STREAMS)
    keys: list[list[str | int | None]]  # each stream's position, for the next page's token
    if params.get("orderBy", "LogStreamName") == "LogStreamName":
        after = keyset_of(params.get("nextToken"), (str,))
        rows = ctx.repo.attempts.streams(
            limit=limit + 1, prefix=prefix, after=after[0] if after else None, descending=descending
        )
        keys = [[row.log_stream] for row in rows]
    else:
        if prefix is not None:
            raise ValidationError("Cannot order by LastEventTime with a logStreamNamePrefix.")
        position = keyset_of(params.get("nextToken"), (int, str))
        rows = ctx.repo.attempts.streams_by_stop(
            limit=limit + 1, after=(position[0], position[1]) if position else None, descending=descending
        )
        keys = [[row.last, row.log_stream] for row in rows]
    result: Params = {"logStreams": [_describe_stream(ctx, row) for row in rows[:limit]]}
    if len(rows) > limit:
        result["nextToken"] = encode_token(keys[limit - 1])
    return result


def _describe_stream(ctx: Context, attempt: Stream) -> Params:
    stream = _stream_of(ctx, attempt)
    timeline = stream.timeline
    written = stream.size > 0
    return {
        "logStreamName": stream.name,
        "creationTime": timeline.start_ms,
        "firstEventTimestamp": timeline.start_ms if written else None,  # estimated, like every event time
        "lastEventTimestamp": timeline.end_ms if written else None,
        "lastIngestionTime": timeline.end_ms if written else None,
        "arn": f"{group_arn(ctx.arns)}:log-stream:{stream.name}",
        "storedBytes": stream.size,
    }


def filter_log_events(ctx: Context, params: Params) -> Params:
    """Matching events of the group's streams, stream after stream in name order (not interleaved
    by time); a call reads at most FILTER_SCAN_BYTES and pages with a [stream, offset] token."""
    require_group(ctx, params)
    names, prefix = params.get("logStreamNames"), params.get("logStreamNamePrefix")
    if names is not None and prefix is not None:
        raise ValidationError("logStreamNames and logStreamNamePrefix are mutually exclusive; give one")
    pattern = filter_patterns.parse(params.get("filterPattern"))
    start, end = params.get("startTime"), params.get("endTime")
    window = in_window(start, end)
    limit = params.get("limit", DEFAULT_EVENTS)
    position = keyset_of(params.get("nextToken"), (str, int))
    events: list[Params] = []
    searched: list[Params] = []
    budget, used = FILTER_SCAN_BYTES, 0
    pending: list[Attempt | Stream] = []
    after: str | None = None
    offset = 0
    if position is not None:
        after, offset = position[0], position[1]
        resumed = ctx.repo.attempts.get(after.rsplit("/", 1)[-1])
        pending = [resumed] if resumed is not None and resumed.log_stream == after else []
        offset = offset if pending else 0  # that stream was purged meanwhile: go on with the next one
    while True:
        if not pending:
            pending += ctx.repo.attempts.streams(
                limit=STREAMS_PER_QUERY, prefix=prefix, names=names, after=after, since_ms=start, until_ms=end
            )
            if not pending:
                return {"events": events, "searchedLogStreams": searched}
        attempt = pending.pop(0)
        stream = _stream_of(ctx, attempt)
        found, stopped = stream.forward(
            offset, limit - len(events), lambda e: window(e) and pattern.matches(e.message), scan_bytes=budget
        )
        budget -= stopped - offset
        used += sum(len(e.message.encode()) for e in found)
        events += [_filtered(stream.name, attempt.task_id, e) for e in found]
        after, offset = stream.name, 0
        if stopped < stream.readable:  # limit, page size or scan budget reached inside this stream
            return {"events": events, "searchedLogStreams": searched, "nextToken": encode_token([after, stopped])}
        searched.append({"logStreamName": stream.name, "searchedCompletely": True})
        if len(events) >= limit or used >= MAX_PAGE_BYTES or budget <= 0:
            return {"events": events, "searchedLogStreams": searched, "nextToken": encode_token([after, stopped])}


def _filtered(stream: str, task_id: str, event: Event) -> Params:
    return {
        "logStreamName": stream,
        "timestamp": event.timestamp,
        "message": event.message,
        "ingestionTime": event.timestamp,
        "eventId": f"{task_id}-{event.start}",
    }


def describe_log_groups(ctx: Context, params: Params) -> Params:
    """The one group Kiln has, when the filters select it."""
    prefix, pattern = params.get("logGroupNamePrefix"), params.get("logGroupNamePattern")
    if prefix is not None and pattern is not None:
        raise ValidationError("logGroupNamePrefix and logGroupNamePattern are mutually exclusive; give one")
    arn = group_arn(ctx.arns)
    identifiers = params.get("logGroupIdentifiers")
    selected = (
        (prefix is None or LOG_GROUP.startswith(prefix))
        and (pattern is None or pattern.lower() in LOG_GROUP.lower())
        and (identifiers is None or bool({LOG_GROUP, arn, f"{arn}:*"} & set(identifiers)))
    )
    retention = ctx.settings.retention_days
    group = {
        "logGroupName": LOG_GROUP,
        "arn": f"{arn}:*",
        "logGroupArn": arn,
        "storedBytes": 0,
        "metricFilterCount": 0,
        "logGroupClass": "STANDARD",
        "retentionInDays": int(retention) if float(retention).is_integer() else None,
    }
    return {"logGroups": [group] if selected else []}


OPERATIONS: dict[str, Callable[[Context, Params], Params]] = {
    "GetLogEvents": get_log_events,
    "DescribeLogStreams": describe_log_streams,
    "FilterLogEvents": filter_log_events,
    "DescribeLogGroups": describe_log_groups,
}


class LogsService:
    """The CloudWatch Logs operations Kiln implements, each on one read transaction."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self.arns = Arns(settings.region, settings.account_id)

    def implements(self, operation: str) -> bool:
        return operation in OPERATIONS

    def call(self, operation: str, params: Params) -> Params:
        with self.db.read() as connection:
            ctx = Context(repo=Repository(connection), arns=self.arns, settings=self.settings, now=now_ms())
            return OPERATIONS[operation](ctx, params)

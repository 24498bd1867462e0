"""DescribeJobs, ListJobs, CancelJob(s), TerminateJob(s) and DeleteJobQueue's effect on jobs."""

from __future__ import annotations

from typing import Any

from kiln import pagination
from kiln.batch import multinode, views
from kiln.batch.definitions import get_definition_by_arn
from kiln.batch.environments import check_queue_deletable, get_job_queue
from kiln.context import Context
from kiln.engine import lifecycle
from kiln.engine.attempts import resolved_specs
from kiln.engine.lifecycle import Status
from kiln.errors import ValidationError
from kiln.store.records import Attempt, Document, Job

MAX_DESCRIBE_JOBS = 100
MAX_BULK = 50
MAX_REASON = 1024
DEFAULT_LIST_PAGE = 100
MAX_LIST_PAGE = 1000
FILTER_NAMES = ("JOB_NAME", "JOB_DEFINITION", "BEFORE_CREATED_AT", "AFTER_CREATED_AT", "SHARE_IDENTIFIER")


def _specs(ctx: Context, jobs: list[Job]) -> dict[str, Document]:
    """Each job's resolved spec (array children share their parent's; an MNP node overlays its
    job's with its own container); parents among `jobs` are not read again."""
    return resolved_specs(ctx.repo, jobs, {job.id: job.spec for job in jobs if job.parent_id is None})


def _attempts(ctx: Context, jobs: list[Job]) -> dict[str, list[Attempt]]:
    """Each job's attempts; an MNP job shows its main node's (AWS fills them from the main node)."""
    mains = {job.id: multinode.node_id(job.id, job.spec["nodeProperties"]["mainNode"])
             for job in jobs if job.num_nodes is not None}  # fmt: skip
    found = ctx.repo.attempts.of_jobs([job.id for job in jobs] + list(mains.values()))
    return {job.id: found[mains.get(job.id, job.id)] for job in jobs}


def describe_jobs(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    ids = params["jobs"]
    if len(ids) > MAX_DESCRIBE_JOBS:
        raise ValidationError("Error executing request, Exception : Maximum number of jobs supported is  100 .")
    found = {job.id: job for job in ctx.repo.jobs.get_many(ids)}
    jobs = [found[job_id] for job_id in dict.fromkeys(ids) if job_id in found]
    specs = _specs(ctx, jobs)
    attempts = _attempts(ctx, jobs)
    arrays = [job.id for job in jobs if job.array_size is not None]
    summaries = ctx.repo.jobs.array_summaries(arrays)
    details = [views.job_detail(ctx, job, specs[job.id], attempts[job.id], summaries.get(job.id)) for job in jobs]
    return {"jobs": details}


def _filter_query(ctx: Context, filters: list[Document]) -> dict[str, Any]:
    if len(filters) > 1:
        raise ValidationError("ListJobs accepts one filter at a time")
    if not filters:
        return {}
    name, values = filters[0].get("name"), filters[0].get("values") or []
    if name not in FILTER_NAMES:
        raise ValidationError(f"Invalid filter name {name!r}: must be one of {', '.join(FILTER_NAMES)}")
    if len(values) != 1:
        raise ValidationError(f"Filter {name} takes exactly one value")
    value = values[0]
    if name == "JOB_NAME":
        return {"name_prefix": value[:-1]} if value.endswith("*") else {"name_exact": value}
    if name == "JOB_DEFINITION":
        return {"definition_arns": _definition_arns(ctx, value)}
    if name == "SHARE_IDENTIFIER":
        return {"share_identifier": value}
    try:
        moment = int(value)
    except ValueError:
        moment = None
    if moment is None or abs(moment) > pagination.MAX_POSITION:  # SQL integers are 64-bit
        raise ValidationError(f"Filter {name} needs epoch milliseconds, got {value!r}")
    return {"created_before": moment} if name == "BEFORE_CREATED_AT" else {"created_after": moment}


def _definition_arns(ctx: Context, value: str) -> list[str]:
    """JOB_DEFINITION filter: `name`, `name*` (name prefix), `name:revision` or an ARN (no '*')."""
    if value.endswith("*") and ":" not in value:
        prefix = value[:-1]
        rows = ctx.repo.definitions.page(None, None, None, 0, 1_000_000)
        return [row.arn for row in rows if row.name.startswith(prefix)]
    if ":" in value or value.startswith("arn:"):
        definition = get_definition_by_arn(ctx, value) if value.startswith("arn:") else None
        if definition is None and not value.startswith("arn:"):
            name, _, revision = value.partition(":")
            row = ctx.repo.definitions.get(name, int(revision) if revision.isdigit() else -1)
            definition = None if row is None else row.doc
        return [definition["jobDefinitionArn"]] if definition else []
    rows = ctx.repo.definitions.page(value, None, None, 0, 100_000)
    return [row.arn for row in rows]


def list_jobs(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    scopes = [key for key in ("jobQueue", "arrayJobId", "multiNodeJobId") if params.get(key)]
    if len(scopes) != 1:
        raise ValidationError("ListJobs needs exactly one of jobQueue, arrayJobId or multiNodeJobId")
    filters = _filter_query(ctx, params.get("filters") or [])
    share = filters.pop("share_identifier", None)
    statuses = None if filters else [params.get("jobStatus") or Status.RUNNING.value]
    if share is not None:  # the one filter that combines with jobStatus (and so drops its default)
        statuses = [params["jobStatus"]] if params.get("jobStatus") else None
    limit = pagination.page_size(params.get("maxResults"), default=DEFAULT_LIST_PAGE, maximum=MAX_LIST_PAGE)
    # Tokens are [array_index] for an array's children, [created_at, id] for a queue (see below).
    # Tokens are [index] for an array's children or an MNP job's nodes, [created_at, id] for a queue.
    after = pagination.keyset_of(params.get("nextToken"), (int, str) if params.get("jobQueue") else (int,))
    queue_arn = parent_id = None
    if params.get("jobQueue"):
        queue_arn = get_job_queue(ctx, params["jobQueue"])["jobQueueArn"]
    else:
        parent_id = params.get("arrayJobId") or params["multiNodeJobId"]
    nodes = bool(params.get("multiNodeJobId"))
    rows = ctx.repo.jobs.page(queue_arn=queue_arn, parent_id=parent_id, statuses=statuses, after=after,
                              limit=limit + 1, share_identifier=share, nodes=nodes, **filters)  # fmt: skip
    page = rows[:limit]
    last_attempts = _attempts(ctx, page)
    token = None
    if len(rows) > limit:
        last = page[-1]
        index = last.node_index if nodes else last.array_index
        token = pagination.encode_token([index] if parent_id else [last.created_at, last.id])
    specs = _specs(ctx, page)
    summaries = [views.job_summary(ctx, job, next(reversed(last_attempts[job.id]), None), specs[job.id])
                 for job in page]  # fmt: skip
    return {"jobSummaryList": summaries, "nextToken": token}


def _check_stop(job_ids: list[str], reason: str) -> None:
    """AWS answers an empty jobId or reason with a ClientException (an unknown id is not an error)."""
    if any(job_id == "" for job_id in job_ids):
        raise ValidationError("jobId is required and cannot be an empty string")
    if reason == "":
        raise ValidationError("reason is required and cannot be an empty string")
    if len(reason) > MAX_REASON:
        raise ValidationError(f"reason must be at most {MAX_REASON} characters")


def _targets(ctx: Context, job_id: str) -> list[Job]:
    """The job named; for a node of an MNP job (`<job>#<i>`), the MNP job, which ends all its nodes."""
    node = multinode.split_node_id(job_id)
    job = ctx.repo.jobs.get(node[0] if node else job_id)
    if node and (job is None or job.num_nodes is None):
        job = ctx.repo.jobs.get(job_id)  # not a node after all
    return [] if job is None else [job]


def cancel(ctx: Context, job_ids: list[str], reason: str) -> None:
    """CancelJob: what it does to each job is the lifecycle's to decide (`lifecycle.cancel`)."""
    _check_stop(job_ids, reason)
    lifecycle.cancel(ctx.repo, [job for job_id in job_ids for job in _targets(ctx, job_id)], reason, ctx.now)


def terminate(ctx: Context, job_ids: list[str], reason: str) -> None:
    """TerminateJob: what it does to each job is the lifecycle's to decide (`lifecycle.terminate`)."""
    _check_stop(job_ids, reason)
    lifecycle.terminate(ctx.repo, [job for job_id in job_ids for job in _targets(ctx, job_id)], reason, ctx.now)


def bulk(ctx: Context, params: dict[str, Any], action: str) -> dict[str, Any]:
    ids = params["jobs"]
    if len(ids) > MAX_BULK:
        verb = "cancelled" if action == "cancel" else "terminated"
        raise ValidationError(f"At most {MAX_BULK} jobs can be {verb} at once (got {len(ids)})")
    (cancel if action == "cancel" else terminate)(ctx, ids, params["reason"])
    return {"successful": list(ids), "errors": []}


def delete_job_queue(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    """The queue goes at once; its unfinished jobs are terminated, as AWS eventually does."""
    doc = check_queue_deletable(ctx, params["jobQueue"])
    reason = f"Job queue {doc['jobQueueName']} was deleted"
    unfinished = [s.value for s in Status if s not in (Status.SUCCEEDED, Status.FAILED)]
    jobs = ctx.repo.jobs.page(queue_arn=doc["jobQueueArn"], parent_id=None, statuses=unfinished, limit=1_000_000)
    terminate(ctx, [job.id for job in jobs], reason)
    ctx.repo.queues.delete(doc["jobQueueName"])
    return {}

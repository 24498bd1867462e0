"""The engine in-process, without a server: the real store, the real operations and the real local
executor, with the scheduler's ticks driven by the test instead of its thread.

A test creates resources and submits jobs through `BatchService.call` (what the API would call),
then `run_until` ticks the scheduler until the jobs it names reach the states it waits for. Jobs
are real processes (`sh -c ...` on the `host` image, as the server's own user), so an exit code, a
timeout or a kill is the kernel's, not a stand-in's.
"""

from __future__ import annotations

import os
import pwd
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.batch.service import BatchService
from kiln.config import Settings
from kiln.engine.lifecycle import TERMINAL
from kiln.engine.scheduler import Scheduler
from kiln.executors.local import LocalExecutor
from kiln.store.database import Database
from kiln.store.records import Job
from kiln.store.repository import Repository

TICK_PAUSE_SECONDS = 0.02
DEFAULT_WAIT_SECONDS = 30.0


@dataclass
class Engine:
    """One engine: the operations, the scheduler (ticked by hand) and its executor."""

    service: BatchService
    scheduler: Scheduler
    executor: LocalExecutor
    settings: Settings

    def call(self, operation: str, **params: Any) -> dict[str, Any]:
        """A Batch operation, as the API would run it (one transaction, then the scheduler is told)."""
        return dict(self.service.call(operation, params))

    def queue(self, name: str = "q", *, max_vcpus: int = 4, priority: int = 1) -> str:
        """A MANAGED compute environment of `max_vcpus` and a queue on it; returns the queue's name."""
        self.call(
            "CreateComputeEnvironment", computeEnvironmentName=f"{name}-ce", type="MANAGED",
            computeResources={"type": "EC2", "instanceRole": "ecsInstanceRole", "maxvCpus": max_vcpus},
        )  # fmt: skip
        self.call(
            "CreateJobQueue", jobQueueName=name, priority=priority,
            computeEnvironmentOrder=[{"order": 1, "computeEnvironment": f"{name}-ce"}],
        )  # fmt: skip
        return name

    def definition(self, name: str, script: str, **container: Any) -> str:
        """A `host` job definition running `sh -c script` (1 vCPU, 64 MiB unless `container` says)."""
        properties = {"image": "host", "vcpus": 1, "memory": 64, "command": ["sh", "-c", script], **container}
        self.call("RegisterJobDefinition", jobDefinitionName=name, type="container", containerProperties=properties)
        return name

    def submit(self, definition: str, queue: str = "q", **params: Any) -> str:
        return str(
            self.call("SubmitJob", jobName=definition, jobQueue=queue, jobDefinition=definition, **params)["jobId"]
        )

    def jobs(self, job_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """DescribeJobs, by job id."""
        found = self.call("DescribeJobs", jobs=list(job_ids))["jobs"]
        return {job["jobId"]: job for job in found}

    def job(self, job_id: str) -> dict[str, Any]:
        return self.jobs([job_id])[job_id]

    def row(self, job_id: str) -> Job:
        """The stored job record (flags DescribeJobs does not show as such)."""
        with self.service.db.read() as connection:
            found = Repository(connection).jobs.get(job_id)
        assert found is not None, job_id
        return found

    def run_until(
        self, job_ids: Iterable[str], statuses: Iterable[str] = TERMINAL, timeout: float = DEFAULT_WAIT_SECONDS
    ) -> dict[str, dict[str, Any]]:
        """Tick until every job is in one of `statuses` (default: terminal); their DescribeJobs."""
        wanted, ids = {str(status) for status in statuses}, list(job_ids)
        deadline = time.monotonic() + timeout
        while True:
            moved = self.scheduler.tick()
            jobs = self.jobs(ids)
            if all(jobs[job_id]["status"] in wanted for job_id in ids):
                return jobs
            if time.monotonic() > deadline:
                shown = {job_id: (job["status"], job.get("statusReason")) for job_id, job in jobs.items()}
                raise AssertionError(f"not all in {sorted(wanted)} after {timeout} s: {shown}")
            if not moved:
                time.sleep(TICK_PAUSE_SECONDS)


@contextmanager
def engine(data_dir: Path, database_url: str | None = None, **settings: Any) -> Iterator[Engine]:
    """An engine over a fresh store in `data_dir` (SQLite unless `database_url`), jobs as this user."""
    own_user = pwd.getpwuid(os.geteuid()).pw_name
    config = Settings(
        data_dir=data_dir, database_url=database_url, termination_grace_seconds=1.0, min_timeout_seconds=1,
        job_user=own_user, **settings,
    )  # fmt: skip
    data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(config.resolved_database_url())
    executor = LocalExecutor(config)
    service = BatchService(db, config)
    scheduler = Scheduler(db, executor, config, service.arns)
    service.on_change = scheduler.notify_change
    try:
        yield Engine(service, scheduler, executor, config)
    finally:
        executor.shutdown(grace_seconds=0.5)
        db.close()

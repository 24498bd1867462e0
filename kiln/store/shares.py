"""Fair-share queues' side of the jobs: each job's share, the best candidates per share, and the
decayed usage per share (kiln/engine/share_queue.py weighs them)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Float, Integer, case, cast, func, or_, select

from kiln.store.queries import Queries, integer_bound
from kiln.store.records import Candidate, JobShare, ShareUsage
from kiln.store.schema import attempts, job_shares, jobs


class ShareStore(Queries):
    def insert(self, shares: Sequence[JobShare]) -> None:
        self._insert(job_shares, shares)

    def active_identifiers(self, queue_arn: str, finished: Sequence[str]) -> list[str]:
        """Share identifiers of a queue's top-level jobs in none of the `finished` statuses (AWS caps
        them at 500)."""
        query = (
            select(job_shares.c.share_identifier)
            .distinct()
            .join_from(job_shares, jobs, jobs.c.id == job_shares.c.job_id)
            .where(
                job_shares.c.queue_arn == queue_arn,
                jobs.c.parent_id.is_(None),
                jobs.c.status.notin_(list(finished)),
            )
        )
        return [row[0] for row in self.connection.execute(query)]

    def candidates(
        self, queue_arn: str, status: str, per_share: int, max_vcpus: float, max_memory_mib: int
    ) -> list[Candidate]:
        """A fair-share queue's jobs in `status` (the waiting one) that could fit, at most `per_share`
        of each share (its highest scheduling priority first), in FIFO order with share and priority."""
        rank = (
            func.row_number()
            .over(
                partition_by=job_shares.c.share_identifier,
                # created_at: jobs made RUNNABLE by the same sweep share runnable_at; submit order decides
                order_by=(job_shares.c.scheduling_priority.desc(), jobs.c.runnable_at, jobs.c.created_at, jobs.c.id),
            )
            .label("share_rank")
        )
        columns = (jobs.c.id, jobs.c.queue_arn, jobs.c.parent_id, jobs.c.vcpus, jobs.c.memory_mib, jobs.c.gpus,
                   jobs.c.status_reason, jobs.c.num_nodes, jobs.c.runnable_at, jobs.c.created_at,
                   job_shares.c.share_identifier, job_shares.c.scheduling_priority)  # fmt: skip
        ranked = (
            select(*columns, rank)
            .join_from(jobs, job_shares, job_shares.c.job_id == jobs.c.id)
            .where(
                jobs.c.queue_arn == queue_arn,
                jobs.c.status == status,
                jobs.c.vcpus <= max_vcpus,
                jobs.c.memory_mib <= integer_bound(max_memory_mib),
            )
            .subquery()
        )
        query = (
            select(*(ranked.c[c.name] for c in columns))
            .where(ranked.c.share_rank <= per_share)
            .order_by(ranked.c.runnable_at, ranked.c.created_at, ranked.c.id)
        )
        return self._all(query, Candidate)

    def usage(self, queue_arn: str, now_ms: int, window_ms: int, min_charge_seconds: float) -> list[ShareUsage]:
        """Per share of a fair-share queue: decayed vCPU-seconds (`usage`) and attempts holding
        capacity (`running`). The same formula as `kiln.engine.fair_share.decayed_usage`, summed in
        SQL so that a queue with thousands of recent attempts costs one row per share."""
        active = attempts.c.active.is_(True)
        end = case((active, now_ms), (attempts.c.stopped_at.is_(None), now_ms), else_=attempts.c.stopped_at)
        ran = case(
            (attempts.c.started_at.is_(None), 0.0),
            (end < attempts.c.started_at, 0.0),
            else_=(end - attempts.c.started_at) / 1000.0,
        )
        charge = attempts.c.vcpus * case((ran > min_charge_seconds, ran), else_=min_charge_seconds)
        left = 1.0 - (now_ms - end) / float(window_ms)
        fade = case((active, 1.0), (left <= 0.0, 0.0), (left >= 1.0, 1.0), else_=left)
        query = (
            select(
                job_shares.c.share_identifier,
                # PostgreSQL sums these as NUMERIC (Decimal); both stores return plain numbers.
                cast(func.sum(charge * fade), Float).label("usage"),
                cast(func.sum(case((active, 1), else_=0)), Integer).label("running"),
            )
            .join_from(job_shares, attempts, attempts.c.job_id == job_shares.c.job_id)
            .where(job_shares.c.queue_arn == queue_arn, or_(active, attempts.c.stopped_at >= now_ms - window_ms))
            .group_by(job_shares.c.share_identifier)
        )
        return self._all(query, ShareUsage)

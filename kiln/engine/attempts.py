"""What an attempt of a job is, for an executor: its `AttemptSpec` (command, resources, the
`AWS_BATCH_*` variables, the role's variables, timeout, volumes, a gang node's place) and its log
stream's name, built from the job's resolved spec.

A job's spec is its own, or for an array child its parent's overlaid by its own; parents' specs
are cached, since what an attempt needs of them never changes after submit.
"""

from __future__ import annotations

from collections.abc import Sequence

from kiln.config import Settings
from kiln.engine.containers import environment_of, volume_mounts
from kiln.executors.base import AttemptSpec, GangMember
from kiln.relay_access import RELAY_TOKEN_VARIABLE, RELAY_URL_VARIABLE, RelayKey, names_relay
from kiln.store.records import Document, Job
from kiln.store.repository import Repository

PARENT_SPEC_CACHE = 10_000
LOCAL_MAIN_NODE_ADDRESS = "127.0.0.1"  # every node of a gang on this one host


def log_stream_name(definition_name: str, task_id: str) -> str:
    """AWS's log stream name of an attempt: `<definition>/default/<task id>`."""
    return f"{definition_name[:200]}/default/{task_id}"


class AttemptBuilder:
    """Builds attempts for one server's settings; remembers array parents' specs."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._parent_specs: dict[str, Document] = {}
        self.relay_key = RelayKey(settings.data_dir / "relay.key")

    def specs(self, repo: Repository, jobs: Sequence[Job]) -> dict[str, Document]:
        """Each job's resolved spec (`resolved_specs`), parents' specs kept for the next call."""
        if len(self._parent_specs) > PARENT_SPEC_CACHE:
            self._parent_specs.clear()
        return resolved_specs(repo, jobs, self._parent_specs)

    def attempt_spec(self, job: Job, spec: Document, task_id: str, number: int, environment: str,
                     stream: str) -> AttemptSpec:  # fmt: skip
        """Attempt `number` of `job`, placed on compute environment `environment`."""
        container = spec["container"]
        variables = {
            "AWS_BATCH_JOB_ID": job.id,
            "AWS_BATCH_JOB_ATTEMPT": str(number),
            "AWS_BATCH_JQ_NAME": job.queue_arn.rsplit("/", 1)[-1],
            "AWS_BATCH_CE_NAME": environment,
        }
        gang = None
        if job.array_index is not None:
            variables["AWS_BATCH_JOB_ARRAY_INDEX"] = str(job.array_index)
            variables["AWS_BATCH_JOB_ARRAY_SIZE"] = str(spec["arrayProperties"]["size"])
        elif job.node_index is not None:
            nodes = spec["nodeProperties"]
            gang = GangMember(f"{job.parent_id}/{number}", job.node_index, nodes["numNodes"], nodes["mainNode"])
            variables.update(node_variables(gang))
        timeout = (spec.get("timeout") or {}).get("attemptDurationSeconds")
        # The role's variables (credentials meant for jobs) reach the attempt only, never the job's
        # stored spec, so DescribeJobs does not show them; the definition's own variables win.
        role = self.settings.job_roles.get(container.get("jobRoleArn") or "")
        variables = {**role, **environment_of(container, variables)} if role else environment_of(container, variables)
        if names_relay(container.get("command") or []):  # the same holds for its relay token (kiln/relay_access.py)
            variables[RELAY_URL_VARIABLE] = self.settings.relay_url
            variables[RELAY_TOKEN_VARIABLE] = self.relay_key.token_for(job.id)
        return AttemptSpec(
            attempt_id=task_id, job_id=job.id, image=container["image"], command=list(container.get("command") or []),
            environment=variables, vcpus=job.vcpus, memory_mib=job.memory_mib,
            gpus=job.gpus, log_path=self.settings.log_file(stream), workdir=self.settings.work_dir / task_id,
            timeout_seconds=timeout, cpu_hard_cap=environment in self.settings.cpu_hard_cap_environments,
            volumes=volume_mounts(container), gang=gang, user=container.get("user") or None,
        )  # fmt: skip


def resolved_specs(repo: Repository, jobs: Sequence[Job], parent_specs: dict[str, Document]) -> dict[str, Document]:
    """Each job's resolved spec: its own, or for an array child (or an MNP node) its parent's
    overlaid by its own. `parent_specs` holds parents' specs already known; those read now join it."""
    missing = sorted({job.parent_id for job in jobs if job.parent_id} - parent_specs.keys())
    parent_specs.update({parent.id: parent.spec for parent in repo.jobs.get_many(missing)})
    return {job.id: {**parent_specs[job.parent_id], **job.spec} if job.parent_id else job.spec for job in jobs}


def node_variables(gang: GangMember) -> dict[str, str]:
    """AWS's MNP variables; the main node's address only on the other nodes (executors on several
    hosts replace it with the main node's own)."""
    variables = {
        "AWS_BATCH_JOB_NODE_INDEX": str(gang.index),
        "AWS_BATCH_JOB_NUM_NODES": str(gang.size),
        "AWS_BATCH_JOB_MAIN_NODE_INDEX": str(gang.main),
    }
    if gang.index != gang.main:
        variables["AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS"] = LOCAL_MAIN_NODE_ADDRESS
    return variables

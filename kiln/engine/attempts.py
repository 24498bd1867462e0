"""What an attempt of a job is, for an executor: its `AttemptSpec` (command, resources, the
`AWS_BATCH_*` variables, the role's variables, timeout, volumes, a gang node's place) and its log
stream's name, built from the job's resolved spec.

A job's spec is its own, or for an array child its parent's overlaid by its own; parents' specs
are cached, since what an attempt needs of them never changes after submit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kiln.config import Settings
from kiln.engine import eks_pods, multi_container
from kiln.engine.containers import environment_of, requirement, volume_mounts
from kiln.executors.base import AttemptSpec, GangMember, TaskContainer, TaskMount
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
        if "ecsProperties" in spec or "eksProperties" in spec:
            return self._task_attempt(job, spec, task_id, variables, environment, stream, timeout)
        container = spec["container"]
        variables = self._container_environment(job, container, container.get("jobRoleArn"), variables)
        return AttemptSpec(
            attempt_id=task_id, job_id=job.id, image=container["image"], command=list(container.get("command") or []),
            environment=variables, vcpus=job.vcpus, memory_mib=job.memory_mib,
            gpus=job.gpus, log_path=self.settings.log_file(stream), workdir=self.settings.work_dir / task_id,
            timeout_seconds=timeout, cpu_hard_cap=environment in self.settings.cpu_hard_cap_environments,
            volumes=volume_mounts(container), gang=gang, user=container.get("user") or None,
        )  # fmt: skip

    def _container_environment(self, job: Job, container: Document, role_arn: str | None,
                               variables: dict[str, str]) -> dict[str, str]:  # fmt: skip
        """The container's variables: the role's (credentials meant for jobs reach the attempt only,
        never the job's stored spec, so DescribeJobs does not show them), the definition's, which win,
        the `AWS_BATCH_*` ones, which always win, and the relay's when its command names the relay."""
        role = self.settings.job_roles.get(role_arn or "")
        merged = {**role, **environment_of(container, variables)} if role else environment_of(container, variables)
        words = [*(container.get("entrypoint") or []), *(container.get("command") or [])]  # a pod's: both
        if names_relay(words):  # the same holds for its relay token (kiln/relay_access.py)
            merged[RELAY_URL_VARIABLE] = self.settings.relay_url
            merged[RELAY_TOKEN_VARIABLE] = self.relay_key.token_for(job.id)
        return merged

    def _task_attempt(self, job: Job, spec: Document, task_id: str, variables: dict[str, str], environment: str,
                      stream: str, timeout: int | None) -> AttemptSpec:  # fmt: skip
        """An `ecsProperties` or `eksProperties` job's attempt: its containers, each with its own
        variables and log stream (a pod's commands and args with their `$(NAME)` references expanded)."""
        task = multi_container.task_of(spec)
        assert task is not None
        pod = multi_container.is_pod(spec)
        definition = spec["jobDefinitionName"]
        role = task.get("taskRoleArn")
        task_containers = []
        for container in task["containers"]:
            env = self._container_environment(job, container, role, variables)
            command, entrypoint = list(container.get("command") or []), container.get("entrypoint")
            if pod:
                command, entrypoint = eks_pods.expand(command, env) or [], eks_pods.expand(entrypoint, env)
            task_containers.append(TaskContainer(
                name=container["name"], image=container["image"], command=command, environment=env,
                log_path=self.settings.log_file(multi_container.stream_name(definition, container["name"], task_id)),
                essential=bool(container.get("essential", True)),
                depends_on=tuple((item["containerName"], item["condition"]) for item in container.get("dependsOn") or []),
                stop_timeout=container.get("stopTimeout"), entrypoint=entrypoint,
                mounts=tuple(TaskMount(m["containerPath"], m["volume"], m["hostPath"], m["subPath"], m["readOnly"])
                             for m in container.get("mounts") or []),
                **_own_resources(container),
            ))  # fmt: skip
        first = next((container for container in task_containers if container.essential), task_containers[-1])
        user = next((c.get("user") for c in task["containers"] if c.get("user")), None)
        return AttemptSpec(
            attempt_id=task_id, job_id=job.id, image=first.image, command=list(first.command), environment=variables,
            vcpus=job.vcpus, memory_mib=job.memory_mib, gpus=job.gpus,
            log_path=self.settings.log_file(stream),
            workdir=self.settings.work_dir / task_id, timeout_seconds=timeout,
            cpu_hard_cap=environment in self.settings.cpu_hard_cap_environments, user=user,
            task=tuple(task_containers), pod=pod,
        )  # fmt: skip


def _own_resources(container: Document) -> dict[str, Any]:
    """A task container's own VCPU, MEMORY and GPU requirements (None where it gives none)."""
    memory = requirement(container, "MEMORY")
    return {
        "vcpus": requirement(container, "VCPU"),
        "memory_mib": None if memory is None else int(memory),
        "gpus": int(requirement(container, "GPU") or 0),
    }


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

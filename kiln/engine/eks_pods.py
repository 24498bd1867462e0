"""`eksProperties` jobs: AWS Batch's Kubernetes pod shape, as pure rules. No I/O.

A definition's `eksProperties.podProperties` lists up to ten `containers` and ten `initContainers`.
Kiln has no Kubernetes: it runs a pod the way it runs an `ecsProperties` task (kiln/engine/ecs_tasks.py,
kiln/executors/task_runner.py), as containers of one attempt, translated here into that task's
shape (`task_of`) with a pod's rules instead of ECS's:

- the init containers run one after the other, each once the one before exited with 0 (a
  `SUCCESS` dependency), and the containers start together once the last init container succeeded;
- no container's end stops the others (there is no `essential` flag in a pod): the pod ends when
  every container has, and it fails, with the first failing container's exit code, when any of
  them (init containers included) exits non-zero or never starts;
- `command` replaces the image's entrypoint and `args` its CMD, as in Kubernetes, and `$(NAME)`
  references in both (and in `env` values) expand from the container's environment (`expand`).

RegisterJobDefinition checks what AWS checks (the resource quantities of
https://docs.aws.amazon.com/batch/latest/userguide/memory-cpu-batch-eks.html, names, namespaces)
and refuses what Kiln cannot honour with a message saying so: service accounts, image pull secrets,
secret and persistentVolumeClaim volumes, `hostNetwork: false` (every Kiln job shares the host's
network). SubmitJob's `eksPropertiesOverride` overrides containers and init containers by name.
The job holds what Kubernetes would reserve for the pod: the larger of its containers' sum and
its largest init container (`pod_resources`).
"""

from __future__ import annotations

import copy
import re
from typing import Any

from kiln.engine import containers
from kiln.engine.containers import Resources
from kiln.errors import ValidationError
from kiln.store.records import Document

MAX_CONTAINERS = 10
SINGLE_CONTAINER_NAME = "default"  # a lone unnamed container, as Kubernetes shows it
CPU, MEMORY, GPU = "cpu", "memory", "nvidia.com/gpu"
RESOURCE_NAMES = (CPU, MEMORY, GPU)
MIN_JOB_MEMORY_MIB = 4
DNS_POLICIES = ("Default", "ClusterFirst", "ClusterFirstWithHostNet")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
EMPTY_DIR_MEDIA = ("", "Memory")
POD_NAME_PREFIX = "aws-batch."  # AWS names a job's pod `aws-batch.<uuid>`
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")  # an RFC 1123 label: container names, namespaces
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")  # volume names
_CPU = re.compile(r"^\d+(\.\d+)?$")
_MEMORY = re.compile(r"^(\d+)Mi$")
_GPU = re.compile(r"^\d+$")
_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
# Pod and volume fields Kiln cannot honour: refused, so that nothing is silently dropped.
REFUSED_POD = {
    "serviceAccountName": "Kiln has no Kubernetes service accounts (nor the IAM roles they carry); pass what "
    "the job needs in its containers' env",
    "imagePullSecrets": "Kiln reads no Kubernetes secrets; the Docker executor pulls with its daemon's own "
    "credentials (docker login)",
}
REFUSED_VOLUMES = {
    "secret": "Kiln reads no Kubernetes secrets; mount a hostPath volume or pass the values in env",
    "persistentVolumeClaim": "Kiln has no persistent volumes; mount a hostPath volume instead",
}


def _error(detail: str) -> ValidationError:
    return ValidationError(f"Error executing request, Exception : {detail}")


def pod_of(eks_properties: Document) -> Document:
    """The pod of an `eksProperties` (already checked)."""
    return dict(eks_properties.get("podProperties") or {})


def all_containers(pod: Document) -> list[Document]:
    """The init containers, in their order, then the containers."""
    return [*(pod.get("initContainers") or []), *(pod.get("containers") or [])]


def container_names(pod: Document) -> list[str]:
    """Every container's name, the init containers' first (a lone unnamed container: `default`)."""
    return [container.get("name") or SINGLE_CONTAINER_NAME for container in all_containers(pod)]


def pod_name(task_id: str) -> str:
    return POD_NAME_PREFIX + task_id


# -- registration ----------------------------------------------------------------------------------


def check_eks_properties(eks_properties: Document, platform: str) -> None:
    """RegisterJobDefinition's rules for `eksProperties` on a `container` definition."""
    if platform != "EC2":
        raise _error(f"eksProperties is not valid with platformCapabilities {platform}: AWS Batch runs jobs on "
                     "Amazon EKS on EC2 resources only.")  # fmt: skip
    pod = eks_properties.get("podProperties")
    if not pod:
        raise _error("eksProperties.podProperties is required.")
    check_pod(pod)


def check_pod(pod: Document) -> None:
    """A pod's rules, at registration and again after SubmitJob's overrides."""
    for key, why in REFUSED_POD.items():
        if pod.get(key):
            raise _error(f"podProperties.{key} is not supported: {why}.")
    if pod.get("hostNetwork") is False:
        raise _error("podProperties.hostNetwork false is not supported: Kiln runs every job on the host's network "
                     "(AWS Batch's default for pods, hostNetwork true); leave hostNetwork out or set it to true.")  # fmt: skip
    if pod.get("dnsPolicy") is not None and pod["dnsPolicy"] not in DNS_POLICIES:
        raise _error(f"podProperties.dnsPolicy must be one of {', '.join(DNS_POLICIES)} (got {pod['dnsPolicy']}).")
    _check_metadata(pod.get("metadata") or {}, "podProperties.metadata")
    listed, init = pod.get("containers") or [], pod.get("initContainers") or []
    if not listed:
        raise _error("podProperties.containers must have at least one container.")
    for key, found in (("containers", listed), ("initContainers", init)):
        if len(found) > MAX_CONTAINERS:
            raise _error(f"podProperties.{key} can have at most {MAX_CONTAINERS} containers (got {len(found)}).")
    volumes = _check_volumes(pod.get("volumes") or [])
    _check_names(init, listed)
    for key, found in (("initContainers", init), ("containers", listed)):
        for index, container in enumerate(found):
            _check_container(container, f"podProperties.{key}[{index}]", volumes)
    users = {run_as(container) for container in all_containers(pod)}
    if len(users) > 1:
        shown = ", ".join(sorted(str(user) for user in users))
        raise _error("Kiln runs every container of a pod as one user: the containers' securityContext runAsUser "
                     f"and runAsGroup must be the same (got {shown}).")  # fmt: skip
    pod_resources(pod)


def _check_metadata(metadata: Document, where: str) -> None:
    namespace = metadata.get("namespace")
    if namespace is not None:
        check_namespace(namespace, f"{where}.namespace")
    for key in ("labels", "annotations"):
        for name, value in (metadata.get(key) or {}).items():
            if not name or not isinstance(value, str):
                raise _error(f"{where}.{key}: keys must be non-empty and values strings (got {name!r}).")


def check_namespace(namespace: str, where: str) -> None:
    """AWS's rules for a Kubernetes namespace (a pod's, or a compute environment's)."""
    if not namespace or len(namespace) > 63 or not _LABEL.match(namespace):
        raise _error(f"{where} {namespace!r} is not valid: 1 to 63 lowercase letters, numbers and hyphens, "
                     "starting and ending with a letter or number.")  # fmt: skip
    if namespace == "default" or namespace.startswith("kube-"):
        raise _error(f"{where} {namespace!r} is not valid: it can't be default nor start with kube-.")


def _check_volumes(volumes: list[Document]) -> dict[str, Document]:
    """Each volume named (a DNS subdomain, unique) with exactly one source Kiln can provide."""
    found: dict[str, Document] = {}
    for index, volume in enumerate(volumes):
        where = f"podProperties.volumes[{index}]"
        name = volume.get("name") or ""
        if len(name) > 253 or not _SUBDOMAIN.match(name):
            raise _error(f"{where}.name {name!r} is not valid: a DNS subdomain name (lowercase letters, numbers, "
                         "hyphens and dots).")  # fmt: skip
        if name in found:
            raise _error(f"Volume names must be unique within a pod: {name} is used twice.")
        for key, why in REFUSED_VOLUMES.items():
            if volume.get(key) is not None:
                raise _error(f"{where}.{key} is not supported: {why}.")
        sources = [key for key in ("emptyDir", "hostPath") if volume.get(key) is not None]
        if len(sources) != 1:
            raise _error(f"{where} ({name}) must give exactly one of emptyDir and hostPath.")
        if volume.get("hostPath") is not None and not str(volume["hostPath"].get("path") or "").startswith("/"):
            raise _error(f"{where}.hostPath.path must be an absolute path on the host.")
        medium = (volume.get("emptyDir") or {}).get("medium")
        if medium is not None and medium not in EMPTY_DIR_MEDIA:
            raise _error(f'{where}.emptyDir.medium must be "" or Memory (got {medium}).')
        found[name] = volume
    return found


def _check_names(init: list[Document], listed: list[Document]) -> None:
    """Names are RFC 1123 labels, unique across the init containers and the containers; every
    container is named when the pod has several (overrides and log streams name them)."""
    total = len(init) + len(listed)
    seen: set[str] = set()
    for key, found in (("initContainers", init), ("containers", listed)):
        for index, container in enumerate(found):
            name = container.get("name")
            if name is None:
                if total > 1:
                    raise _error(f"podProperties.{key}[{index}].name is required when a pod has more than one "
                                 "container.")  # fmt: skip
                name = SINGLE_CONTAINER_NAME
            elif len(name) > 63 or not _LABEL.match(name):
                raise _error(f"podProperties.{key}[{index}].name {name!r} is not valid: up to 63 lowercase letters, "
                             "numbers and hyphens, starting and ending with a letter or number.")  # fmt: skip
            if name in seen:
                raise _error(f"Container names must be unique within a pod (containers and initContainers): {name} "
                             "is used twice.")  # fmt: skip
            seen.add(name)


def _check_container(container: Document, where: str, volumes: dict[str, Document]) -> None:
    if not container.get("image"):
        raise _error(f"{where}.image is required.")
    policy = container.get("imagePullPolicy")
    if policy is not None and policy not in PULL_POLICIES:
        raise _error(f"{where}.imagePullPolicy must be one of {', '.join(PULL_POLICIES)} (got {policy}).")
    containers.check_command(container.get("command"))
    containers.check_command(container.get("args"))
    containers.check_environment(container.get("env"))
    container_resources(container, where)
    paths: set[str] = set()
    for index, mount in enumerate(container.get("volumeMounts") or []):
        name, path = mount.get("name"), str(mount.get("mountPath") or "")
        if name not in volumes:
            raise _error(f"{where}.volumeMounts[{index}] names volume {name}, which is not in podProperties.volumes.")
        if not path.startswith("/"):
            raise _error(f"{where}.volumeMounts[{index}].mountPath must be an absolute path (got {path!r}).")
        if path.rstrip("/") in paths:
            raise _error(f"{where}.volumeMounts: mountPath {path} is used twice.")
        sub_path = mount.get("subPath")
        if sub_path and (sub_path.startswith("/") or ".." in sub_path.split("/")):
            raise _error(f"{where}.volumeMounts[{index}].subPath must be a relative path inside the volume.")
        paths.add(path.rstrip("/"))
    context = container.get("securityContext") or {}
    for key in ("runAsUser", "runAsGroup"):
        if context.get(key) is not None and context[key] < 0:
            raise _error(f"{where}.securityContext.{key} must be 0 or more (got {context[key]}).")
    if context.get("runAsGroup") is not None and context.get("runAsUser") is None:
        raise _error(f"{where}.securityContext.runAsGroup needs runAsUser on Kiln: it runs a job as one user, uid "
                     "and gid together (the image's user is unknown to the local executor).")  # fmt: skip
    if context.get("runAsNonRoot") and context.get("runAsUser") == 0:
        raise _error(f"{where}.securityContext: runAsNonRoot is true but runAsUser is 0 (root).")


def run_as(container: Document) -> str | None:
    """Who the container runs as, in a `user` field's form (`uid` or `uid:gid`); None: the default."""
    context = container.get("securityContext") or {}
    user, group = context.get("runAsUser"), context.get("runAsGroup")
    if user is None:
        return None
    return str(user) if group is None else f"{user}:{group}"


# -- resources -------------------------------------------------------------------------------------


def _quantity(name: str, value: Any, where: str) -> float:
    """One resource quantity in AWS Batch's forms: cpu a multiple of 0.25 (no milliCPU), memory
    whole MiB with the Mi suffix, GPUs a whole number."""
    text = str(value)
    if name == CPU:
        if text.endswith("m"):
            raise _error(f"{where} cpu {text!r}: vCPU values can't be specified in milliCPU form; give a number of "
                         "vCPUs in whole numbers or increments of 0.25 (e.g. 0.25, 1, 1.5).")  # fmt: skip
        number = float(text) if _CPU.match(text) else -1.0
        if number < 0.25 or (number * 4) != int(number * 4):
            raise _error(f"{where} cpu {text!r} is not valid: a number of vCPUs, at least 0.25, in whole numbers or "
                         "increments of 0.25.")  # fmt: skip
        return number
    if name == MEMORY:
        match = _MEMORY.match(text)
        if match is None or int(match[1]) < 1:
            raise _error(f"{where} memory {text!r} is not valid: memory values must be whole mebibytes with the Mi "
                         "suffix (e.g. 1024Mi).")  # fmt: skip
        return float(match[1])
    if not _GPU.match(text):
        raise _error(f"{where} {GPU} {text!r} is not valid: a whole number of GPUs.")
    return float(text)


def container_resources(container: Document, where: str = "container") -> dict[str, float]:
    """The container's cpu, memory (MiB) and GPUs after AWS's checks: what it requests (its limit
    where it requests nothing: AWS copies the limit to the request); memory is its limit, the hard
    one. Requests and limits must agree: memory and GPUs equal, cpu request at most its limit."""
    resources = container.get("resources") or {}
    limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
    for part, given in (("limits", limits), ("requests", requests)):
        for name in given:
            if name not in RESOURCE_NAMES:
                raise _error(
                    f"{where}.resources.{part}: {name} is not supported; Kiln takes {', '.join(RESOURCE_NAMES)}."
                )
    found: dict[str, float] = {}
    for name in RESOURCE_NAMES:
        limit = None if name not in limits else _quantity(name, limits[name], f"{where}.resources.limits")
        request = None if name not in requests else _quantity(name, requests[name], f"{where}.resources.requests")
        if limit is not None and request is not None:
            if name == CPU and request > limit:
                raise _error(f"{where}.resources: the cpu request ({requests[name]}) must be less than or equal to "
                             f"the cpu limit ({limits[name]}).")  # fmt: skip
            if name != CPU and request != limit:
                raise _error(f"{where}.resources: the {name} request ({requests[name]}) must equal its limit "
                             f"({limits[name]}).")  # fmt: skip
        value = request if request is not None else limit
        if value is not None:
            found[name] = limit if name == MEMORY and limit is not None else value
    return found


def pod_resources(pod: Document) -> Resources:
    """What the job holds, as Kubernetes reserves for a pod: for each resource, the larger of the
    containers' sum and the largest init container's (they run one at a time, before the rest).
    The pod needs some cpu and at least 4 MiB of memory in all."""
    totals = []
    for name in RESOURCE_NAMES:
        running = sum(container_resources(c).get(name, 0.0) for c in pod.get("containers") or [])
        first = max((container_resources(c).get(name, 0.0) for c in pod.get("initContainers") or []), default=0.0)
        totals.append(max(running, first))
    vcpus, memory, gpus = totals
    if vcpus <= 0:
        raise _error("At least one vCPU requests or limits value must be specified (resources cpu).")
    if memory < MIN_JOB_MEMORY_MIB:
        raise _error(f"At least one memory requests or limits value must be specified, with {MIN_JOB_MEMORY_MIB} MiB "
                     f"or more for the job (got {memory:g} MiB).")  # fmt: skip
    return Resources(vcpus=vcpus, memory_mib=int(memory), gpus=int(gpus))


# -- submit ----------------------------------------------------------------------------------------


def resolve(eks_properties: Document, override: Document | None, parameters: dict[str, str]) -> Document:
    """The job's `eksProperties`: the definition's pod with SubmitJob's `eksPropertiesOverride`
    applied container by container (image, command and args replaced, env merged by name,
    resources replaced as a whole), its metadata's labels and annotations merged (namespace
    replaced), names filled in and `Ref::` parameters substituted in commands and args."""
    pod = copy.deepcopy(pod_of(eks_properties))
    overrides = (override or {}).get("podProperties") or {}
    for key in ("initContainers", "containers"):
        listed = pod.get(key) or []
        for container in listed:  # named already when the pod has several (checked at registration)
            container["name"] = container.get("name") or SINGLE_CONTAINER_NAME
        for name, changes in _overrides_by_name(overrides.get(key), listed, key).items():
            _apply(next(c for c in listed if c["name"] == name), changes)
        for container in listed:
            for part in ("command", "args"):
                if container.get(part) is not None:
                    container[part] = containers.substitute(container[part], parameters)
    if overrides.get("metadata"):
        pod["metadata"] = _merged_metadata(pod.get("metadata") or {}, overrides["metadata"])
    check_pod(pod)
    return {"podProperties": pod}


def _overrides_by_name(entries: list[Document] | None, listed: list[Document], key: str) -> dict[str, Document]:
    """`eksPropertiesOverride.podProperties.<key>`, keyed by the container each names (a lone
    container may go unnamed)."""
    names = [container["name"] for container in listed]
    found: dict[str, Document] = {}
    for index, entry in enumerate(entries or []):
        name = entry.get("name")
        if name is None and len(names) == 1:
            name = names[0]
        if name is None:
            raise _error(f"eksPropertiesOverride {key}[{index}].name is required: the pod has several {key} "
                         f"({', '.join(names)}).")  # fmt: skip
        if name not in names:
            shown = ", ".join(names) or "none"
            raise _error(f"eksPropertiesOverride names {key[:-1]} {name}, which is not in the job definition "
                         f"({key}: {shown}).")  # fmt: skip
        if name in found:
            raise _error(f"eksPropertiesOverride overrides {key[:-1]} {name} twice.")
        found[name] = {k: v for k, v in entry.items() if k != "name"}
    return found


def _apply(container: Document, changes: Document) -> None:
    for key in ("image", "command", "args", "resources"):
        if changes.get(key) is not None:
            container[key] = copy.deepcopy(changes[key])
    if changes.get("env"):
        containers.check_environment(changes["env"])
        merged = {item["name"]: item.get("value", "") for item in container.get("env") or []}
        merged.update({item["name"]: item.get("value", "") for item in changes["env"]})
        container["env"] = [{"name": name, "value": value} for name, value in merged.items()]


def _merged_metadata(metadata: Document, changes: Document) -> Document:
    merged = copy.deepcopy(metadata)
    for key in ("labels", "annotations"):
        if changes.get(key):
            merged[key] = {**(merged.get(key) or {}), **changes[key]}
    if changes.get("namespace") is not None:
        merged["namespace"] = changes["namespace"]
    return merged


# -- running ---------------------------------------------------------------------------------------


def task_of(eks_properties: Document) -> Document:
    """The pod as the task the executors run (the shape kiln/engine/attempts.py reads for an
    `ecsProperties` task, plus `entrypoint`, `mounts` and `init`): no container essential, each
    init container depending on the one before with SUCCESS, the containers on the last one."""
    pod = pod_of(eks_properties)
    volumes = {volume["name"]: volume for volume in pod.get("volumes") or []}
    names = container_names(pod)
    init_count = len(pod.get("initContainers") or [])
    task_containers = []
    for index, (name, container) in enumerate(zip(names, all_containers(pod), strict=True)):
        before = None  # the first init container, or a container of a pod without any
        if 0 < index <= init_count:
            before = names[index - 1]  # the init container before, or (the first container) the last one
        elif index > init_count > 0:
            before = names[init_count - 1]
        task_containers.append({
            "name": name,
            "image": container["image"],
            "entrypoint": container.get("command"),  # None: the image's
            "command": list(container.get("args") or []),
            "environment": environment_of(container),
            "essential": False,
            "dependsOn": [] if before is None else [{"containerName": before, "condition": "SUCCESS"}],
            "resourceRequirements": _requirements(container_resources(container)),
            "user": run_as(container),
            "mounts": [_mount(mount, volumes[mount["name"]]) for mount in container.get("volumeMounts") or []],
            "init": index < init_count,
        })  # fmt: skip
    return {"containers": task_containers}


def _requirements(found: dict[str, float]) -> list[Document]:
    kinds = {CPU: "VCPU", MEMORY: "MEMORY", GPU: "GPU"}
    return [
        {"type": kinds[name], "value": f"{value:g}" if name == CPU else str(int(value))}
        for name, value in found.items()
    ]


def _mount(mount: Document, volume: Document) -> Document:
    host = (volume.get("hostPath") or {}).get("path")
    return {
        "containerPath": mount["mountPath"],
        "volume": volume["name"],
        "hostPath": host,  # None: an emptyDir, the attempt's own
        "subPath": mount.get("subPath") or None,
        "readOnly": bool(mount.get("readOnly", False)),
    }


def environment_of(container: Document) -> list[Document]:
    """The container's `env`, each value's `$(NAME)` references expanded from the variables
    listed before it, as Kubernetes does."""
    known: dict[str, str] = {}
    for item in container.get("env") or []:
        known[item["name"]] = expand_word(str(item.get("value") or ""), known)
    return [{"name": name, "value": value} for name, value in known.items()]


def expand_word(word: str, environment: dict[str, str]) -> str:
    """Kubernetes' expansion: `$(NAME)` becomes the variable's value (left as it is when there is
    no such variable), `$$` a single `$`."""

    def replace(match: re.Match[str]) -> str:
        if match[0] == "$$":
            return "$"
        return environment.get(match[1], match[0])

    return _REFERENCE.sub(replace, word)


def expand(words: list[str] | None, environment: dict[str, str]) -> list[str] | None:
    return None if words is None else [expand_word(word, environment) for word in words]

"""`eksProperties` job definitions, `eksPropertiesOverride` and EKS compute environments through
boto3 on a real `kiln server`: AWS's rules at registration, submit and creation (each refusal an
HTTP 400 ClientException saying what to fix), what Kiln cannot honour refused precisely, the
orchestration types of queues and jobs kept apart, and the shapes the reads return (checked member
by member against botocore's output shapes from the raw response). Nothing here runs:
tests/e2e/test_eks_pods.py runs pods."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.api.test_ecs_requests import TOO_BIG, raw_call
from tests.e2e.test_ecs_tasks import describe_checked
from tests.support import EKS_CLUSTER, make_queue, register_shell, unique

SMALL = {"requests": {"cpu": "0.25", "memory": "64Mi"}, "limits": {"memory": "64Mi"}}


def container(name: str | None, **extra: Any) -> dict[str, Any]:
    found = {"image": "host", "command": ["sh", "-c"], "args": ["true"], "resources": copy.deepcopy(SMALL), **extra}
    if name is not None:
        found["name"] = name
    return found


def pod() -> dict[str, Any]:
    """A valid pod: an init container, a sidecar and a main container sharing an emptyDir."""
    return {
        "podProperties": {
            "initContainers": [container("prepare", volumeMounts=[{"name": "scratch", "mountPath": "/data"}])],
            "containers": [
                container("sidecar"),
                container("main", command=["echo"], args=["Ref::greeting"], env=[{"name": "A", "value": "1"}],
                          volumeMounts=[{"name": "scratch", "mountPath": "/data", "readOnly": True}],
                          securityContext={"privileged": False, "readOnlyRootFilesystem": True}),
            ],
            "volumes": [{"name": "scratch", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}}],
            "metadata": {"labels": {"team": "render"}, "namespace": "render-jobs"},
            "dnsPolicy": "ClusterFirstWithHostNet",
            "shareProcessNamespace": True,
        }
    }  # fmt: skip


Change = Callable[[dict[str, Any]], None]


def changed(change: Change) -> dict[str, Any]:
    eks = pod()
    change(eks)
    return eks


def of_pod(**values: Any) -> Change:
    return lambda eks: eks["podProperties"].update(values)


def of_main(**values: Any) -> Change:
    return lambda eks: eks["podProperties"]["containers"][1].update(values)


def resources(limits: dict[str, str] | None = None, requests: dict[str, str] | None = None) -> Change:
    given = {key: value for key, value in (("limits", limits), ("requests", requests)) if value is not None}
    return of_main(resources=given)


REGISTER_CASES = [
    pytest.param(of_pod(serviceAccountName="render"), "podProperties.serviceAccountName is not supported: Kiln has "
                 "no Kubernetes service accounts", id="service-account"),
    pytest.param(of_pod(imagePullSecrets=[{"name": "registry"}]), "podProperties.imagePullSecrets is not supported: "
                 "Kiln reads no Kubernetes secrets", id="image-pull-secrets"),
    pytest.param(of_pod(volumes=[{"name": "scratch", "secret": {"secretName": "s"}}]),
                 "podProperties.volumes[0].secret is not supported: Kiln reads no Kubernetes secrets", id="secret"),
    pytest.param(of_pod(volumes=[{"name": "scratch", "persistentVolumeClaim": {"claimName": "c"}}]),
                 "persistentVolumeClaim is not supported: Kiln has no persistent volumes", id="pvc"),
    pytest.param(of_pod(volumes=[{"name": "scratch"}]), "must give exactly one of emptyDir and hostPath",
                 id="volume-without-source"),
    pytest.param(of_pod(volumes=[{"name": "scratch", "hostPath": {"path": "relative"}}]),
                 "hostPath.path must be an absolute path", id="relative-host-path"),
    pytest.param(of_pod(hostNetwork=False), "hostNetwork false is not supported: Kiln runs every job on the host's "
                 "network", id="pod-network"),
    pytest.param(of_pod(dnsPolicy="None"), "dnsPolicy must be one of Default, ClusterFirst, ClusterFirstWithHostNet",
                 id="dns-policy"),
    pytest.param(of_pod(metadata={"namespace": "kube-system"}), "can't be default nor start with kube-",
                 id="kube-namespace"),
    pytest.param(of_pod(metadata={"namespace": "Render"}), "metadata.namespace 'Render' is not valid",
                 id="bad-namespace"),
    pytest.param(of_pod(containers=[]), "podProperties.containers must have at least one container",
                 id="no-containers"),
    pytest.param(of_pod(containers=[container(f"c{i}") for i in range(11)]),
                 "podProperties.containers can have at most 10 containers (got 11)", id="eleven"),
    pytest.param(of_pod(containers=[container("prepare")]), "Container names must be unique within a pod "
                 "(containers and initContainers): prepare is used twice", id="duplicate-names"),
    pytest.param(of_pod(containers=[container(None), container("b")]),
                 "podProperties.containers[0].name is required when a pod has more than one container", id="unnamed"),
    pytest.param(of_pod(containers=[container("Main")]), "name 'Main' is not valid: up to 63 lowercase letters",
                 id="bad-name"),
    pytest.param(resources(requests={"cpu": "100m", "memory": "64Mi"}),
                 "vCPU values can't be specified in milliCPU form", id="millicpu"),
    pytest.param(resources(requests={"cpu": "0.3", "memory": "64Mi"}),
                 "cpu '0.3' is not valid: a number of vCPUs, at least 0.25, in whole numbers or increments of 0.25",
                 id="cpu-step"),
    pytest.param(resources(limits={"cpu": "1", "memory": "1Gi"}),
                 "memory '1Gi' is not valid: memory values must be whole mebibytes with the Mi suffix", id="gibibytes"),
    pytest.param(resources(limits={"cpu": "1", "memory": "1024"}), "memory '1024' is not valid", id="no-suffix"),
    pytest.param(resources(limits={"memory": "128Mi"}, requests={"cpu": "1", "memory": "64Mi"}),
                 "the memory request (64Mi) must equal its limit (128Mi)", id="memory-request-not-limit"),
    pytest.param(resources(limits={"cpu": "1", "memory": "64Mi"}, requests={"cpu": "2"}),
                 "the cpu request (2) must be less than or equal to the cpu limit (1)", id="cpu-request-over-limit"),
    pytest.param(resources(limits={"cpu": "1", "memory": "64Mi", "nvidia.com/gpu": "0.5"}),
                 "nvidia.com/gpu '0.5' is not valid: a whole number of GPUs", id="half-gpu"),
    pytest.param(resources(limits={"cpu": "1", "memory": "64Mi", "ephemeral-storage": "1Gi"}),
                 "ephemeral-storage is not supported; Kiln takes cpu, memory, nvidia.com/gpu", id="other-resource"),
    pytest.param(of_pod(containers=[container("a", resources={"limits": {"memory": "64Mi"}})], initContainers=[]),
                 "At least one vCPU requests or limits value must be specified", id="no-cpu"),
    pytest.param(of_pod(containers=[container("a", resources={"limits": {"cpu": "1", "memory": "2Mi"}})],
                        initContainers=[]), "with 4 MiB or more for the job (got 2 MiB)", id="too-little-memory"),
    pytest.param(of_main(env=[{"name": "AWS_BATCH_JOB_ID", "value": "x"}]),
                 "names starting with AWS_BATCH are reserved", id="reserved-env"),
    pytest.param(of_main(volumeMounts=[{"name": "ghost", "mountPath": "/x"}]),
                 "names volume ghost, which is not in podProperties.volumes", id="unknown-volume"),
    pytest.param(of_main(volumeMounts=[{"name": "scratch", "mountPath": "data"}]),
                 "mountPath must be an absolute path (got 'data')", id="relative-mount"),
    pytest.param(of_main(imagePullPolicy="Sometimes"), "imagePullPolicy must be one of Always, IfNotPresent, Never",
                 id="pull-policy"),
    pytest.param(of_main(securityContext={"runAsUser": 1000}),
                 "Kiln runs every container of a pod as one user", id="two-users"),
    pytest.param(of_main(securityContext={"runAsGroup": 1000}), "runAsGroup needs runAsUser on Kiln",
                 id="group-without-user"),
    pytest.param(of_main(securityContext={"runAsUser": 0, "runAsNonRoot": True}),
                 "runAsNonRoot is true but runAsUser is 0", id="non-root-root"),
    pytest.param(of_main(image=""), "podProperties.containers[1].image is required", id="no-image"),
]  # fmt: skip


@pytest.mark.parametrize(("change", "fragment"), REGISTER_CASES)
def test_register_rejected(batch: Any, change: Change, fragment: str) -> None:
    with pytest.raises(batch.exceptions.ClientException) as caught:
        batch.register_job_definition(jobDefinitionName=unique("jd"), type="container", eksProperties=changed(change))
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert fragment in caught.value.response["Error"]["Message"]


OTHER_REGISTER_CASES = [
    pytest.param({"type": "container", "eksProperties": pod(), "platformCapabilities": ["FARGATE"]},
                 "eksProperties is not valid with platformCapabilities FARGATE", id="fargate"),
    pytest.param({"type": "container", "eksProperties": pod(), "containerProperties": {"image": "host", "vcpus": 1,
                                                                           "memory": 64}},
                 "not containerProperties and eksProperties", id="both-shapes"),
    pytest.param({"type": "container", "eksProperties": {}}, "needs containerProperties, ecsProperties or "
                 "eksProperties", id="empty"),
    pytest.param({"type": "multinode", "eksProperties": pod()}, "eksProperties is only valid for type container",
                 id="multinode-top-level"),
    pytest.param({"type": "multinode", "nodeProperties": {"numNodes": 1, "mainNode": 0, "nodeRangeProperties": [
                     {"targetNodes": "0", "eksProperties": pod()}]}},
                 "nodeRangeProperties[0].eksProperties is not supported yet", id="node-range-eks"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "fragment"), OTHER_REGISTER_CASES)
def test_register_other_shapes_rejected(batch: Any, body: dict[str, Any], fragment: str) -> None:
    with pytest.raises(batch.exceptions.ClientException) as caught:
        batch.register_job_definition(jobDefinitionName=unique("jd"), **body)
    assert fragment in caught.value.response["Error"]["Message"]


@pytest.fixture(scope="module")
def eks_definition(batch: Any) -> str:
    name = unique("eks")
    batch.register_job_definition(jobDefinitionName=name, type="container", eksProperties=pod(),
                                  parameters={"greeting": "hello"})  # fmt: skip
    return name


@pytest.fixture(scope="module")
def parked(batch: Any) -> str:
    """An EKS queue whose only CE is DISABLED: its jobs stay RUNNABLE and never run."""
    queue = make_queue(batch, eks=True)
    ce = batch.describe_job_queues(jobQueues=[queue])["jobQueues"][0]["computeEnvironmentOrder"][0]
    batch.update_compute_environment(computeEnvironment=ce["computeEnvironment"], state="DISABLED")
    return queue


def test_describe_job_definitions_returns_eks_properties_as_registered(batch: Any, eks_definition: str) -> None:
    [definition] = raw_call(batch, "DescribeJobDefinitions", jobDefinitionName=eks_definition)["jobDefinitions"]
    assert definition["eksProperties"] == pod()
    assert "containerProperties" not in definition and "ecsProperties" not in definition
    assert definition["containerOrchestrationType"] == "EKS"
    assert definition["platformCapabilities"] == ["EC2"]


def override(key: str = "containers", *entries: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"podProperties": {key: list(entries), **extra}}


SUBMIT_CASES = [
    pytest.param({"eksPropertiesOverride": override("containers", {"name": "ghost", "args": ["x"]})},
                 "eksPropertiesOverride names container ghost, which is not in the job definition (containers: "
                 "sidecar, main)", id="unknown-container"),
    pytest.param({"eksPropertiesOverride": override("initContainers", {"name": "main"})},
                 "eksPropertiesOverride names initContainer main, which is not in the job definition "
                 "(initContainers: prepare)", id="init-by-a-container-name"),
    pytest.param({"eksPropertiesOverride": override("containers", {"name": "main"}, {"name": "main"})},
                 "eksPropertiesOverride overrides container main twice", id="twice"),
    pytest.param({"eksPropertiesOverride": override("containers", {"args": ["x"]})},
                 "eksPropertiesOverride containers[0].name is required", id="unnamed"),
    pytest.param({"eksPropertiesOverride": override("containers", {"name": "main", "resources": {
                     "limits": {"cpu": "1", "memory": "lots"}}})}, "memory 'lots' is not valid", id="bad-memory"),
    pytest.param({"eksPropertiesOverride": override("containers", {"name": "main", "env": [
                     {"name": "AWS_BATCH_X", "value": "1"}]})}, "names starting with AWS_BATCH are reserved",
                 id="reserved-env"),
    pytest.param({"eksPropertiesOverride": override("containers", metadata={"namespace": "default"})},
                 "can't be default nor start with kube-", id="default-namespace"),
    pytest.param({"containerOverrides": {"command": ["true"]}},
                 "containerOverrides is not valid for a job definition with eksProperties", id="container-overrides"),
    pytest.param({"ecsPropertiesOverride": {"taskProperties": [{"containers": [{"name": "main"}]}]}},
                 "ecsPropertiesOverride is only valid for a job definition with ecsProperties", id="ecs-override"),
]  # fmt: skip


@pytest.mark.parametrize(("extra", "fragment"), SUBMIT_CASES)
def test_submit_rejected(batch: Any, parked: str, eks_definition: str, extra: dict[str, Any], fragment: str) -> None:
    with pytest.raises(batch.exceptions.ClientException) as caught:
        batch.submit_job(jobName=unique("job"), jobQueue=parked, jobDefinition=eks_definition, **extra)
    assert fragment in caught.value.response["Error"]["Message"]


def test_submit_with_overrides_and_describe(batch: Any, parked: str, eks_definition: str) -> None:
    changes = override(
        "containers",
        {"name": "main", "env": [{"name": "B", "value": "2"}], "args": ["Ref::greeting", "again"]},
        {"name": "sidecar", "image": "kiln/render", "command": ["sleep"], "args": ["1"],
         "resources": {"limits": {"cpu": "0.5", "memory": "32Mi"}}},
        metadata={"labels": {"run": "nightly"}},
    )  # fmt: skip
    job_id = batch.submit_job(jobName=unique("job"), jobQueue=parked, jobDefinition=eks_definition,
                              parameters={"greeting": "hi"}, eksPropertiesOverride=changes)["jobId"]  # fmt: skip
    job = describe_checked(batch, job_id)
    assert "container" not in job and job["attempts"] == [] and job["eksAttempts"] == []
    described = job["eksProperties"]["podProperties"]
    listed = {item["name"]: item for item in described["containers"]}
    assert listed["main"]["args"] == ["hi", "again"]  # Ref:: substituted (whole words, as in commands)
    assert {e["name"]: e["value"] for e in listed["main"]["env"]} == {"A": "1", "B": "2"}
    assert listed["sidecar"]["image"] == "kiln/render" and listed["sidecar"]["command"] == ["sleep"]
    assert listed["sidecar"]["resources"] == {"limits": {"cpu": "0.5", "memory": "32Mi"}}
    assert described["metadata"] == {"labels": {"team": "render", "run": "nightly"}, "namespace": "render-jobs"}
    assert "podName" not in described and "exitCode" not in listed["main"]  # not started
    summaries = raw_call(batch, "ListJobs", jobQueue=parked, jobStatus="RUNNABLE")["jobSummaryList"]
    assert job_id in {summary["jobId"] for summary in summaries}


def test_the_job_holds_what_kubernetes_reserves_for_the_pod(batch: Any) -> None:
    """The larger of the containers' sum and the largest init container (they run alone): 0.5
    vCPU of containers fits a 1-vCPU environment, the 1.5-vCPU init container does not."""
    name = unique("eks")
    batch.register_job_definition(jobDefinitionName=name, type="container", eksProperties={"podProperties": {
        "initContainers": [container("setup", resources={"limits": {"cpu": "1.5", "memory": "64Mi"}})],
        "containers": [container("a"), container("b")],
    }})  # fmt: skip
    job_id = batch.submit_job(jobName=unique("job"), jobQueue=make_queue(batch, max_vcpus=1, eks=True),
                              jobDefinition=name)["jobId"]  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        job = batch.describe_jobs(jobs=[job_id])["jobs"][0]
        if (job.get("statusReason") or "").startswith(TOO_BIG):
            break
        time.sleep(0.1)
    assert job["status"] == "RUNNABLE" and (job.get("statusReason") or "").startswith(TOO_BIG), job
    batch.cancel_job(jobId=job_id, reason="too big")


def test_eks_compute_environment_is_described_as_eks_and_its_access_entry_updates(batch: Any) -> None:
    name = unique("ce-eks")
    eks = {"eksClusterArn": EKS_CLUSTER, "kubernetesNamespace": "kiln-batch"}
    batch.create_compute_environment(computeEnvironmentName=name, type="MANAGED", eksConfiguration=eks,
                                     computeResources={"type": "EC2", "instanceRole": "eksInstanceRole",
                                                       "maxvCpus": 2})  # fmt: skip
    [detail] = raw_call(batch, "DescribeComputeEnvironments", computeEnvironments=[name])["computeEnvironments"]
    assert detail["containerOrchestrationType"] == "EKS"
    assert detail["eksConfiguration"] == eks
    assert "ecsClusterArn" not in detail
    batch.update_compute_environment(computeEnvironment=name,
                                     eksConfiguration={"accessEntry": {"desiredState": "ENABLED"}})  # fmt: skip
    [detail] = batch.describe_compute_environments(computeEnvironments=[name])["computeEnvironments"]
    assert detail["eksConfiguration"] == {**eks, "accessEntry": {"desiredState": "ENABLED"}}
    queue = unique("q-eks")
    batch.create_job_queue(jobQueueName=queue, priority=1, computeEnvironmentOrder=[{"order": 1,
                                                                                     "computeEnvironment": name}])  # fmt: skip
    assert batch.describe_job_queues(jobQueues=[queue])["jobQueues"][0]["jobQueueType"] == "EKS"


CE_CASES = [
    pytest.param({"eksClusterArn": "arn:aws:ecs:us-east-1:123456789012:cluster/x", "kubernetesNamespace": "batch"},
                 {}, "is not an Amazon EKS cluster ARN", id="not-an-eks-arn"),
    pytest.param({"eksClusterArn": EKS_CLUSTER, "kubernetesNamespace": "default"}, {},
                 "kubernetesNamespace 'default' is not valid: it can't be default nor start with kube-",
                 id="default-namespace"),
    pytest.param({"eksClusterArn": EKS_CLUSTER, "kubernetesNamespace": "a" * 64}, {},
                 "1 to 63 lowercase letters", id="long-namespace"),
    pytest.param({"eksClusterArn": EKS_CLUSTER, "kubernetesNamespace": "batch"},
                 {"type": "FARGATE", "maxvCpus": 2, "subnets": ["subnet-1"], "securityGroupIds": ["sg-1"]},
                 "computeResources.type FARGATE is not supported with eksConfiguration", id="fargate"),
]  # fmt: skip


@pytest.mark.parametrize(("eks", "resources", "fragment"), CE_CASES)
def test_eks_compute_environment_rejected(batch: Any, eks: dict[str, Any], resources: dict[str, Any],
                                          fragment: str) -> None:  # fmt: skip
    resources = resources or {"type": "EC2", "instanceRole": "eksInstanceRole", "maxvCpus": 2}
    with pytest.raises(batch.exceptions.ClientException) as caught:
        batch.create_compute_environment(computeEnvironmentName=unique("ce"), type="MANAGED", eksConfiguration=eks,
                                         computeResources=resources)  # fmt: skip
    assert fragment in caught.value.response["Error"]["Message"]


def _environment_of(batch: Any, queue: str) -> str:
    return str(batch.describe_job_queues(jobQueues=[queue])["jobQueues"][0]["computeEnvironmentOrder"][0][
        "computeEnvironment"])  # fmt: skip


def test_queues_and_jobs_keep_eks_and_ecs_apart(batch: Any, eks_definition: str) -> None:
    eks_queue, ecs_queue = make_queue(batch, eks=True), make_queue(batch)
    mixed = [{"order": 1, "computeEnvironment": _environment_of(batch, eks_queue)},
             {"order": 2, "computeEnvironment": _environment_of(batch, ecs_queue)}]  # fmt: skip
    with pytest.raises(batch.exceptions.ClientException, match="cannot mix Amazon EKS and Amazon ECS compute"):
        batch.create_job_queue(jobQueueName=unique("q"), priority=1, computeEnvironmentOrder=mixed)
    with pytest.raises(batch.exceptions.ClientException, match="cannot mix Amazon EKS and Amazon ECS compute"):
        batch.update_job_queue(jobQueue=eks_queue, computeEnvironmentOrder=mixed)
    with pytest.raises(batch.exceptions.ClientException) as caught:
        batch.submit_job(jobName=unique("job"), jobQueue=ecs_queue, jobDefinition=eks_definition)
    assert f"JobQueue {ecs_queue} is attached to Amazon ECS compute environments, which can not run job definition " \
           f"{eks_definition} with eksProperties" in caught.value.response["Error"]["Message"]  # fmt: skip
    plain = register_shell(batch, "true")
    with pytest.raises(batch.exceptions.ClientException) as caught:
        batch.submit_job(jobName=unique("job"), jobQueue=eks_queue, jobDefinition=plain)
    assert f"JobQueue {eks_queue} is attached to Amazon EKS compute environments, which run only job definitions " \
           "with eksProperties" in caught.value.response["Error"]["Message"]  # fmt: skip

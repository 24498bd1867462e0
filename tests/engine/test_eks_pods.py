"""The pure rules of `eksProperties` pods (kiln/engine/eks_pods.py): what a pod reserves, how
`$(NAME)` references expand, and the task a pod becomes for the executors."""

from __future__ import annotations

from typing import Any

import pytest

from kiln.engine import eks_pods
from kiln.errors import ValidationError


def container(name: str, cpu: str = "0.25", memory: str = "64Mi", **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": "host", "resources": {"requests": {"cpu": cpu, "memory": memory}}, **extra}


def test_a_pod_reserves_the_larger_of_its_containers_and_its_largest_init_container() -> None:
    pod = {
        "initContainers": [container("i1", "2", "64Mi"), container("i2", "0.5", "1024Mi")],
        "containers": [container("a", "0.5", "256Mi"), container("b", "1", "256Mi", resources={
            "limits": {"cpu": "1", "memory": "256Mi", "nvidia.com/gpu": "1"}})],
    }  # fmt: skip
    held = eks_pods.pod_resources(pod)
    assert (held.vcpus, held.memory_mib, held.gpus) == (2.0, 1024, 1)


def test_a_limit_stands_for_a_missing_request_and_memory_is_the_limit() -> None:
    only_limits = {"name": "a", "image": "host", "resources": {"limits": {"cpu": "1.5", "memory": "128Mi"}}}
    assert eks_pods.container_resources(only_limits) == {"cpu": 1.5, "memory": 128.0}
    soft = {"name": "a", "image": "host", "resources": {"requests": {"cpu": "0.5"}, "limits": {"cpu": "2"}}}
    assert eks_pods.container_resources(soft) == {"cpu": 0.5}


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("$(A)", "1"),
        ("x$(A)y$(B)", "x1y2"),
        ("$(MISSING)", "$(MISSING)"),  # left as it is, as Kubernetes does
        ("$$(A)", "$(A)"),  # escaped
        ("$A and ${A}", "$A and ${A}"),  # a shell's business, not Kubernetes'
    ],
)
def test_references_expand_as_kubernetes_expands_them(word: str, expected: str) -> None:
    assert eks_pods.expand_word(word, {"A": "1", "B": "2"}) == expected


def test_env_values_see_the_variables_listed_before_them() -> None:
    env = [{"name": "A", "value": "1"}, {"name": "B", "value": "$(A)-$(C)"}, {"name": "C", "value": "3"}]
    assert eks_pods.environment_of({"env": env}) == [
        {"name": "A", "value": "1"},
        {"name": "B", "value": "1-$(C)"},
        {"name": "C", "value": "3"},
    ]


def test_the_task_of_a_pod_chains_its_init_containers_then_starts_its_containers() -> None:
    pod = {
        "initContainers": [container("first", command=["prep"]), container("second")],
        "containers": [container("a", args=["x"], volumeMounts=[{"name": "v", "mountPath": "/data", "subPath": "s"}]),
                       container("b")],
        "volumes": [{"name": "v", "emptyDir": {}}],
    }  # fmt: skip
    task = eks_pods.task_of({"podProperties": pod})
    by_name = {item["name"]: item for item in task["containers"]}
    assert [item["name"] for item in task["containers"]] == ["first", "second", "a", "b"]
    assert by_name["first"]["dependsOn"] == []
    assert by_name["second"]["dependsOn"] == [{"containerName": "first", "condition": "SUCCESS"}]
    assert (
        by_name["a"]["dependsOn"] == by_name["b"]["dependsOn"] == [{"containerName": "second", "condition": "SUCCESS"}]
    )
    assert not any(item["essential"] for item in task["containers"])
    assert by_name["first"]["entrypoint"] == ["prep"] and by_name["first"]["command"] == []
    assert by_name["a"]["entrypoint"] is None and by_name["a"]["command"] == ["x"]
    assert by_name["a"]["mounts"] == [
        {"containerPath": "/data", "volume": "v", "hostPath": None, "subPath": "s", "readOnly": False}
    ]


def test_a_pod_without_init_containers_starts_everything_at_once() -> None:
    task = eks_pods.task_of({"podProperties": {"containers": [container("a"), container("b")]}})
    assert [item["dependsOn"] for item in task["containers"]] == [[], []]


def test_a_lone_unnamed_container_is_named_default() -> None:
    pod = {"containers": [{"image": "host", "resources": {"limits": {"cpu": "1", "memory": "64Mi"}}}]}
    resolved = eks_pods.resolve({"podProperties": pod}, {"podProperties": {"containers": [{"args": ["x"]}]}}, {})
    assert resolved["podProperties"]["containers"][0]["name"] == "default"
    assert resolved["podProperties"]["containers"][0]["args"] == ["x"]


def test_an_override_that_breaks_a_rule_is_refused() -> None:
    pod = {"containers": [container("a")]}
    with pytest.raises(ValidationError, match="memory '2Gi' is not valid"):
        eks_pods.resolve({"podProperties": pod}, {"podProperties": {"containers": [
            {"name": "a", "resources": {"limits": {"memory": "2Gi"}}}]}}, {})  # fmt: skip

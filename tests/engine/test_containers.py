"""Resolving what a job runs (https://docs.aws.amazon.com/batch/latest/userguide/job_definition_parameters.html): resources, overrides, Ref::, environment."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiln.engine.containers import (
    DEPRECATED_KEY_CONFLICT,
    Resources,
    apply_overrides,
    check_container,
    environment_of,
    resources_of,
    substitute,
)
from kiln.errors import ValidationError


def requirements(**values: str) -> list[dict[str, str]]:
    return [{"type": kind, "value": value} for kind, value in values.items()]


def container(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "image": "busybox",
        "command": ["echo", "hi"],
        "resourceRequirements": requirements(VCPU="2", MEMORY="2048"),
    }
    base.update(extra)
    return base


# -- resources_of ---------------------------------------------------------------------------------


def test_resources_from_resource_requirements() -> None:
    assert resources_of(container()) == Resources(vcpus=2.0, memory_mib=2048, gpus=0)


def test_resources_from_deprecated_keys() -> None:
    assert resources_of({"vcpus": 4, "memory": 512}) == Resources(vcpus=4.0, memory_mib=512, gpus=0)


def test_resource_requirements_win_over_deprecated_keys() -> None:
    doc = {"vcpus": 4, "memory": 512, "resourceRequirements": requirements(VCPU="1", MEMORY="256")}
    assert resources_of(doc) == Resources(vcpus=1.0, memory_mib=256, gpus=0)


def test_mixed_sources() -> None:
    doc = {"vcpus": 3, "resourceRequirements": requirements(MEMORY="1024")}
    assert resources_of(doc) == Resources(vcpus=3.0, memory_mib=1024, gpus=0)


def test_gpus_and_fractional_vcpus() -> None:
    doc = {"resourceRequirements": requirements(VCPU="0.5", MEMORY="4", GPU="2")}
    assert resources_of(doc) == Resources(vcpus=0.5, memory_mib=4, gpus=2)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"memory": 512}, "vCPU is not provided"),
        ({"vcpus": 1}, "Memory is not provided"),
        ({"vcpus": 0, "memory": 512}, "vCPU must be greater than 0"),
        ({"vcpus": 1, "memory": 3}, "Memory must be at least 4 MiB"),
        ({"resourceRequirements": requirements(VCPU="two", MEMORY="512")}, "VCPU value 'two' is not a number"),
        ({"resourceRequirements": requirements(VCPU="1", MEMORY="512", GPU="x")}, "GPU value 'x' is not a number"),
    ],
)
def test_resource_errors(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message) as caught:
        resources_of(doc)
    assert caught.value.message.startswith("Error executing request, Exception : ")


# -- apply_overrides ------------------------------------------------------------------------------


def test_no_overrides_returns_an_independent_copy() -> None:
    original = container(environment=[{"name": "A", "value": "1"}])
    result = apply_overrides(original, None)
    assert result == original
    result["environment"].append({"name": "B", "value": "2"})
    result["command"].append("more")
    assert original == container(environment=[{"name": "A", "value": "1"}])
    assert apply_overrides(original, {}) == original


def test_command_override_replaces_the_whole_command() -> None:
    result = apply_overrides(container(), {"command": ["sleep", "1"]})
    assert result["command"] == ["sleep", "1"]


def test_command_override_rejects_empty_strings() -> None:
    with pytest.raises(ValidationError, match="Command field cannot have empty strings"):
        apply_overrides(container(), {"command": ["echo", ""]})


def test_environment_override_merges_by_name() -> None:
    original = container(environment=[{"name": "A", "value": "1"}, {"name": "B", "value": "2"}])
    result = apply_overrides(original, {"environment": [{"name": "B", "value": "20"}, {"name": "C", "value": "3"}]})
    assert result["environment"] == [
        {"name": "A", "value": "1"},
        {"name": "B", "value": "20"},
        {"name": "C", "value": "3"},
    ]


def test_environment_override_on_a_container_without_environment() -> None:
    result = apply_overrides(container(), {"environment": [{"name": "X", "value": "y"}]})
    assert result["environment"] == [{"name": "X", "value": "y"}]


def test_environment_override_cannot_set_reserved_names() -> None:
    with pytest.raises(ValidationError, match="reserved"):
        apply_overrides(container(), {"environment": [{"name": "AWS_BATCH_JOB_ID", "value": "x"}]})


def test_resource_requirements_override_per_type() -> None:
    original = container(resourceRequirements=requirements(VCPU="2", MEMORY="2048", GPU="1"))
    result = apply_overrides(original, {"resourceRequirements": requirements(MEMORY="4096")})
    assert resources_of(result) == Resources(vcpus=2.0, memory_mib=4096, gpus=1)
    assert sorted(item["type"] for item in result["resourceRequirements"]) == ["GPU", "MEMORY", "VCPU"]


def test_resource_requirements_override_replaces_deprecated_keys() -> None:
    original = {"image": "busybox", "vcpus": 1, "memory": 512}
    result = apply_overrides(original, {"resourceRequirements": requirements(VCPU="4")})
    assert "vcpus" not in result
    assert resources_of(result) == Resources(vcpus=4.0, memory_mib=512, gpus=0)
    check_container(result)


def test_deprecated_override_of_deprecated_keys() -> None:
    original = {"image": "busybox", "vcpus": 1, "memory": 512}
    result = apply_overrides(original, {"vcpus": 2, "memory": 1024})
    assert resources_of(result) == Resources(vcpus=2.0, memory_mib=1024, gpus=0)


@pytest.mark.parametrize("key", ["vcpus", "memory"])
def test_deprecated_override_against_resource_requirements_is_refused(key: str) -> None:
    with pytest.raises(ValidationError) as caught:
        apply_overrides(container(), {key: 8})
    assert caught.value.message == (
        "This value was submitted in a deprecated key and may conflict with the value provided "
        "by the job definition's resource requirements."
    )
    assert caught.value.message == DEPRECATED_KEY_CONFLICT


def test_deprecated_override_of_the_other_resource_is_allowed() -> None:
    original = {"image": "busybox", "vcpus": 1, "resourceRequirements": requirements(MEMORY="256")}
    result = apply_overrides(original, {"vcpus": 2})
    assert resources_of(result) == Resources(vcpus=2.0, memory_mib=256, gpus=0)


def test_instance_type_override() -> None:
    assert apply_overrides(container(), {"instanceType": "p3.2xlarge"})["instanceType"] == "p3.2xlarge"


# -- substitute -----------------------------------------------------------------------------------


def test_ref_elements_are_replaced_whole() -> None:
    command = ["Ref::action", "-i", "Ref::inputUri", "-f", "Ref::framesPerJob"]
    parameters = {"action": "render", "inputUri": "s3://b/scene.blend", "framesPerJob": "2"}
    assert substitute(command, parameters) == ["render", "-i", "s3://b/scene.blend", "-f", "2"]


def test_unknown_placeholder_stays_verbatim() -> None:
    assert substitute(["echo", "Ref::missing"], {"other": "x"}) == ["echo", "Ref::missing"]


def test_strings_that_are_not_whole_refs_are_untouched() -> None:
    parameters = {"x": "value", "Ref::x": "nope"}
    assert substitute(["s3://b/Ref::x", "ref::x", " Ref::x", "x"], parameters) == [
        "s3://b/Ref::x",
        "ref::x",
        " Ref::x",
        "x",
    ]


def test_substituted_values_are_not_substituted_again() -> None:
    assert substitute(["Ref::a"], {"a": "Ref::b", "b": "no"}) == ["Ref::b"]


@settings(max_examples=100, deadline=None)
@given(
    command=st.lists(st.one_of(st.text(max_size=6), st.text(max_size=4).map(lambda s: "Ref::" + s)), max_size=8),
    parameters=st.dictionaries(st.text(max_size=4), st.text(max_size=6), max_size=4),
)
def test_substitution_is_element_wise(command: list[str], parameters: dict[str, str]) -> None:
    result = substitute(command, parameters)
    assert len(result) == len(command)
    for before, after in zip(command, result, strict=True):
        name = before.removeprefix("Ref::")
        if before.startswith("Ref::") and name in parameters:
            assert after == parameters[name]
        else:
            assert after == before


# -- environment_of -------------------------------------------------------------------------------


def test_batch_variables_win_over_the_container_environment() -> None:
    doc = container(environment=[{"name": "AWS_BATCH_JOB_ID", "value": "fake"}, {"name": "A", "value": "1"}])
    env = environment_of(doc, {"AWS_BATCH_JOB_ID": "real", "AWS_BATCH_JOB_ATTEMPT": "1"})
    assert env == {"AWS_BATCH_JOB_ID": "real", "A": "1", "AWS_BATCH_JOB_ATTEMPT": "1"}


def test_environment_without_value_is_empty() -> None:
    assert environment_of({"environment": [{"name": "EMPTY"}]}, {}) == {"EMPTY": ""}
    assert environment_of({}, {"AWS_BATCH_JQ_NAME": "q"}) == {"AWS_BATCH_JQ_NAME": "q"}


# -- check_container ------------------------------------------------------------------------------


def test_valid_container() -> None:
    check_container(container())
    check_container({"image": "busybox", "vcpus": 1, "memory": 4})


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"image": ""}, "containerProperties.image is required"),
        ({"image": None}, "containerProperties.image is required"),
        ({"vcpus": 1}, "vcpus and resourceRequirements VCPU cannot both be set"),
        ({"memory": 512}, "memory and resourceRequirements MEMORY cannot both be set"),
        ({"command": ["a", ""]}, "Command field cannot have empty strings"),
        ({"environment": [{"name": "", "value": "x"}]}, "names cannot be empty"),
        ({"environment": [{"value": "x"}]}, "names cannot be empty"),
        ({"environment": [{"name": "AWS_BATCH_X", "value": "x"}]}, "AWS_BATCH are reserved"),
        ({"resourceRequirements": requirements(VCPU="1")}, "Memory is not provided"),
        ({"resourceRequirements": requirements(MEMORY="512")}, "vCPU is not provided"),
    ],
)
def test_invalid_containers(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message) as caught:
        check_container(container(**doc))
    assert caught.value.message.startswith("Error executing request, Exception : ")


def test_check_container_names_where_the_problem_is() -> None:
    with pytest.raises(ValidationError, match=r"nodeRangeProperties\[0\]\.container\.image is required"):
        check_container({"vcpus": 1, "memory": 4}, where="nodeRangeProperties[0].container")

"""The local engine's GPUs: a configured count, devices per attempt, freed at exit, never shared."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from kiln.config import Settings
from kiln.executors.base import TASK_FAILED_TO_START
from kiln.executors.gpu_devices import detect_gpus
from kiln.executors.local import LocalExecutor

from .helpers import SpecFactory, exited, wait_for_exit, wait_for_log

SHOW = 'echo "cuda=[$CUDA_VISIBLE_DEVICES] nvidia=[$NVIDIA_VISIBLE_DEVICES] order=[$CUDA_DEVICE_ORDER]"'


@pytest.fixture
def gpu_engine(settings: Settings) -> Iterator[LocalExecutor]:
    engine = LocalExecutor(replace(settings, gpus=2), use_cgroups=False)
    yield engine
    engine.shutdown(grace_seconds=0.2)


def test_each_attempt_gets_free_devices_of_its_own(gpu_engine: LocalExecutor, make_spec: SpecFactory) -> None:
    assert gpu_engine.capacity().gpus == 2
    assert "gpus: 2 configured" in " ".join(gpu_engine.describe())
    holder = make_spec(["sh", "-c", f"{SHOW}; sleep 30"], gpus=1)
    gpu_engine.start(holder)
    wait_for_log(holder.log_path, r"cuda=\[0\] nvidia=\[0\] order=\[PCI_BUS_ID\]")

    # The job's own variables cannot widen its assignment: Kiln's come last.
    pair = make_spec(["sh", "-c", SHOW], gpus=1, environment={"CUDA_VISIBLE_DEVICES": "0,1"})
    gpu_engine.start(pair)
    wait_for_exit(gpu_engine, pair.attempt_id)
    assert "cuda=[1] nvidia=[1]" in pair.log_path.read_text()

    none = make_spec(["sh", "-c", SHOW])
    gpu_engine.start(none)
    wait_for_exit(gpu_engine, none.attempt_id)
    assert "cuda=[] nvidia=[none] order=[]" in none.log_path.read_text()

    # Device 1 came back with the exit; device 0 is still held: two GPUs do not fit.
    assert gpu_engine.gpu_holders() == {holder.attempt_id: ("0",)}
    greedy = make_spec(["sh", "-c", SHOW], gpus=2)
    gpu_engine.start(greedy)
    event = exited(wait_for_exit(gpu_engine, greedy.attempt_id))
    assert (event.started, event.status_reason) == (False, TASK_FAILED_TO_START)
    assert event.reason == "CannotStartContainerError: the job needs 2 GPU(s) but 1 of this host's 2 are free"

    gpu_engine.terminate(holder.attempt_id, "test over")
    wait_for_exit(gpu_engine, holder.attempt_id)
    assert gpu_engine.gpu_holders() == {}


def test_a_failed_start_gives_its_devices_back(gpu_engine: LocalExecutor, make_spec: SpecFactory) -> None:
    missing = make_spec(["kiln-no-such-program"], gpus=2)
    gpu_engine.start(missing)
    assert exited(wait_for_exit(gpu_engine, missing.attempt_id)).started is False
    assert gpu_engine.gpu_holders() == {}


def test_without_gpus_the_environment_is_left_alone(settings: Settings, make_spec: SpecFactory) -> None:
    engine = LocalExecutor(replace(settings, gpus=0), use_cgroups=False)
    try:
        assert engine.capacity().gpus == 0
        spec = make_spec(["sh", "-c", SHOW], environment={"CUDA_VISIBLE_DEVICES": "mine"})
        engine.start(spec)
        wait_for_exit(engine, spec.attempt_id)
        assert "cuda=[mine] nvidia=[] order=[]" in spec.log_path.read_text()
    finally:
        engine.shutdown(grace_seconds=0.2)


def test_detection_counts_what_nvidia_smi_lists(tmp_path: Path) -> None:
    inventory = detect_gpus()
    engine = LocalExecutor(Settings(data_dir=tmp_path), use_cgroups=False)
    try:
        assert engine.capacity().gpus == len(inventory.devices)
        assert inventory.note in engine.describe()
    finally:
        engine.shutdown(grace_seconds=0.2)

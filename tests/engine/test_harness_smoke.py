"""The harness itself: one job runs to SUCCEEDED, one to FAILED, with the kernel's exit codes."""

from __future__ import annotations

from pathlib import Path

from .harness import engine


def test_a_job_succeeds_and_a_failing_one_fails(tmp_path: Path) -> None:
    with engine(tmp_path / "data") as kiln:
        kiln.queue()
        ok, bad = kiln.definition("ok", "exit 0"), kiln.definition("bad", "exit 3")
        jobs = kiln.run_until([kiln.submit(ok), failing := kiln.submit(bad)])
    assert [job["status"] for job in jobs.values()] == ["SUCCEEDED", "FAILED"]
    assert jobs[failing]["container"]["exitCode"] == 3
    assert jobs[failing]["statusReason"] == "Essential container in task exited"

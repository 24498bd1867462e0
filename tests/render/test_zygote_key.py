"""Which jobs share a render zygote: those of one installation, whatever their own directories."""

from __future__ import annotations

from pathlib import Path

from kiln.render.zygote.paths import installation_key

SITE = "/venv/site-packages"


def test_a_relative_python_path_entry_does_not_give_each_job_a_zygote_of_its_own(tmp_path: Path) -> None:
    environ = {"PYTHONPATH": ".:lib", "KILN_VCPUS": "1"}
    first, second = str(tmp_path / "attempt-1"), str(tmp_path / "attempt-2")
    key = installation_key(environ, search_path=[first, f"{first}/lib", SITE], cwd=first)
    assert installation_key(environ, search_path=[second, f"{second}/lib", SITE], cwd=second) == key


def test_another_search_path_or_job_size_is_another_zygote(tmp_path: Path) -> None:
    environ = {"PYTHONPATH": ".", "KILN_VCPUS": "1"}
    job = str(tmp_path / "attempt")
    key = installation_key(environ, search_path=[job, SITE], cwd=job)
    assert installation_key(environ, search_path=["/elsewhere", SITE], cwd=job) != key
    assert installation_key({**environ, "KILN_VCPUS": "2"}, search_path=[job, SITE], cwd=job) != key
    # a job run from "/" keeps its absolute entries as they are
    from_root = installation_key(environ, search_path=["/", SITE], cwd="/")
    assert installation_key(environ, search_path=["/", "/other/site-packages"], cwd="/") != from_root

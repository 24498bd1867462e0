"""Who attempts run as: the policy (pure, against this host's passwd) and both real launchers.

The launcher tests use the executor's defaults (as root: a uid lent from `job_uids` for the attempt,
with `nobody`'s group), with a workdir and log under a folder others may pass through, as the
server's work root is.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.config import Settings, jobs_run_as_server_user, load_settings
from kiln.errors import ValidationError
from kiln.executors.base import AttemptSpec
from kiln.executors.images import ImageCatalogue
from kiln.executors.job_environment import inherited_environment
from kiln.executors.job_users import (
    DEFAULT_JOB_UIDS,
    JobUser,
    JobUsers,
    UidPool,
    UserRefused,
    blocked_on_the_way,
    lookup,
    parse_uid_range,
)
from kiln.executors.local import LocalExecutor
from kiln.server import check_start

from .helpers import exited, wait_for_exit

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="only root starts jobs as another user")
_ids = itertools.count()
FIRST_LENT = int(DEFAULT_JOB_UIDS.split("-")[0])


@pytest.fixture
def open_root() -> Iterator[Path]:
    """A folder the job user may pass through (pytest's own temp dirs are root's alone)."""
    root = Path(tempfile.mkdtemp(prefix="kiln-job-users-", dir="/var/tmp"))
    root.chmod(0o711)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_missing_users_and_groups_are_refused_in_dockers_words() -> None:
    with pytest.raises(UserRefused) as missing:
        lookup("no-such-user-kiln")
    assert missing.value.message == (
        "CannotStartContainerError: Error response from daemon: unable to find user no-such-user-kiln: "
        "no matching entries in passwd file"
    )
    with pytest.raises(UserRefused) as no_group:
        lookup("nobody:no-such-group-kiln")
    assert "unable to find group no-such-group-kiln: no matching entries in group file" in no_group.value.message


def test_a_user_is_a_name_or_a_uid_with_an_optional_group() -> None:
    nobody = pwd.getpwnam("nobody")
    assert lookup("nobody").uid == lookup(str(nobody.pw_uid)).uid == nobody.pw_uid
    assert lookup("nobody").gid == nobody.pw_gid
    assert lookup("nobody:0").gid == 0
    assert nobody.pw_gid in lookup("nobody").groups


@as_root
def test_root_lends_each_job_a_uid_and_honours_only_allowed_users() -> None:
    users = JobUsers()
    nobody = lookup("nobody")
    assert users.uids == (FIRST_LENT, FIRST_LENT + 65535) and not users.only_this_process_user
    assert users.default == JobUser(str(FIRST_LENT), FIRST_LENT, nobody.gid, (nobody.gid,), None, borrows_uid=True)
    assert users.resolve(None) == users.resolve("") == users.default
    assert users.resolve("nobody") == nobody  # named, as Docker's `--user nobody`: the shared user itself
    with pytest.raises(UserRefused, match=f"unable to find user {FIRST_LENT}"):  # a lent uid cannot be asked for
        users.resolve(str(FIRST_LENT))
    with pytest.raises(UserRefused, match="user daemon is not allowed to run jobs on this Kiln server"):
        users.resolve("daemon")
    with pytest.raises(UserRefused, match="user root is not allowed"):
        users.resolve("root")
    with pytest.raises(UserRefused, match="user 0 is not allowed"):
        users.resolve("0")
    allowing = JobUsers(None, ["daemon", "root"])
    assert allowing.resolve("daemon").name == "daemon" and allowing.resolve("0").name == "root"
    # A named job_user is what jobs run as, unless job_uids asks for lent uids with its group.
    assert JobUsers("nobody").default == nobody and JobUsers("nobody").uids is None
    assert JobUsers(job_uids="none").default == nobody
    daemon = lookup("daemon")
    lending = JobUsers("daemon", job_uids="3000000-3000009")
    assert (lending.uids, lending.default.gid, lending.default.borrows_uid) == ((3000000, 3000009), daemon.gid, True)
    assert JobUsers("root", job_uids="3000000-3000009").uids is None  # root asked for: nothing to lend


def test_uids_are_lent_lowest_first_and_come_back() -> None:
    template = JobUser("3000000", 3000000, 65534, (65534,), None, borrows_uid=True)
    pool = UidPool((3000000, 3000002))
    lent = [pool.lend(f"a{n}", template) for n in range(3)]
    assert [user.uid for user in lent] == [3000000, 3000001, 3000002]
    assert lent[1] == JobUser("3000001", 3000001, 65534, (65534,), None, borrows_uid=True)
    with pytest.raises(UserRefused) as exhausted:
        pool.lend("a3", template)
    assert exhausted.value.message == (
        "CannotStartContainerError: every uid of job_uids (3000000-3000002) is lent to a running attempt; "
        "widen job_uids in kiln.toml"
    )
    pool.give_back("a2")
    pool.give_back("a0")
    pool.give_back("a0")  # twice is once
    assert [pool.lend(name, template).uid for name in ("b0", "b1")] == [3000000, 3000002]
    named = JobUser("nobody", 65534, 65534, (65534,), None)
    assert pool.lend("c", named) is named and "c" not in pool.lent  # a named user is never lent a uid
    # A server reconnecting with another range: what is lent stays lent, and is never lent twice.
    wider = pool.resized((3000001, 3000004))
    assert wider.lent == {"a1": 3000001, "b0": 3000000, "b1": 3000002}
    assert [wider.lend(name, template).uid for name in ("d0", "d1")] == [3000003, 3000004]
    wider.give_back("b0")  # outside the new range: not lent again
    with pytest.raises(UserRefused):
        wider.lend("d2", template)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("2000000000", "must be FIRST-LAST"),
        ("ten-twenty", "must be FIRST-LAST"),
        ("20-10", "must be FIRST-LAST with 1000 <= FIRST <= LAST"),
        ("5-10", "must be FIRST-LAST with 1000 <= FIRST"),
        ("2000000000-2147483647", "LAST < 2147483647"),
        ("65000-65534", "holds uid 65534 of user nobody"),
    ],
)
def test_job_uids_must_be_a_range_no_user_has(spec: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        parse_uid_range(spec)
    assert parse_uid_range("none") is None and parse_uid_range(DEFAULT_JOB_UIDS) == (FIRST_LENT, FIRST_LENT + 65535)


@as_root
def test_unknown_configured_users_refuse_the_start() -> None:
    with pytest.raises(ValidationError, match="job_user 'no-such-user-kiln': no such user"):
        JobUsers("no-such-user-kiln")
    with pytest.raises(ValidationError, match="allowed_job_users: no such user 'no-such-user-kiln'"):
        JobUsers(None, ["no-such-user-kiln"])


def test_a_server_that_is_not_root_runs_jobs_as_itself_only() -> None:
    with pytest.raises(ValidationError, match="can start jobs only as itself"):
        JobUsers("nobody", euid=1000 if os.geteuid() == 0 else os.geteuid())
    nobody = pwd.getpwnam("nobody").pw_uid
    assert JobUsers(None, euid=nobody).default.uid == nobody
    assert JobUsers(None, euid=nobody).uids is None  # by default nothing is lent: it could not switch
    with pytest.raises(ValidationError, match="cannot lend uids to jobs"):
        JobUsers(None, job_uids="3000000-3000009", euid=nobody)


def test_workdirs_leave_the_data_dir_only_when_jobs_run_as_another_user(tmp_path: Path) -> None:
    own = pwd.getpwuid(os.geteuid()).pw_name
    assert jobs_run_as_server_user(own, ())
    assert Settings(data_dir=tmp_path, job_user=own).work_dir == tmp_path / "work"
    if os.geteuid() == 0:
        assert not jobs_run_as_server_user(None, ())
        shared = Settings(data_dir=tmp_path).work_dir
        assert shared.parent == Path("/var/lib/kiln/work") and tmp_path not in shared.parents
        assert not jobs_run_as_server_user("root", ("nobody",))


def test_a_closed_directory_on_the_way_is_named(open_root: Path) -> None:
    nobody = lookup("nobody")
    closed = open_root / "closed"
    (closed / "bin").mkdir(parents=True)
    program = closed / "bin" / "tool"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    closed.chmod(0o700)
    blocked = blocked_on_the_way(str(program), nobody)
    assert blocked == f"directory {closed} (mode 0700, owner {pwd.getpwuid(os.geteuid()).pw_name}) is closed to it"
    closed.chmod(0o711)
    assert blocked_on_the_way(str(program), nobody) is None
    program.chmod(0o744)
    assert "file " in (blocked_on_the_way(str(program), nobody) or "")
    root = JobUser("root", 0, 0, (0,), "/root")
    assert blocked_on_the_way(str(program), root) is None


def test_jobs_inherit_a_short_list_of_the_servers_variables() -> None:
    server = {
        "PATH": "/usr/bin", "LANG": "C.UTF-8", "LC_ALL": "C", "TZ": "UTC", "PYTHONPATH": "/src",
        "KILN_RENDER_ZYGOTE": "off", "SSL_CERT_FILE": "/etc/ssl/cert.pem", "HOME": "/root", "USER": "root",
        "AWS_SECRET_ACCESS_KEY": "secret", "AWS_ACCESS_KEY_ID": "id", "DATABASE_URL": "postgresql://x:y@z/db",
        "HTTPS_PROXY": "http://user:password@proxy:3128", "XDG_RUNTIME_DIR": "/run/user/0", "MY_TOOL_HOME": "/opt/t",
    }  # fmt: skip
    assert inherited_environment(server) == {
        "PATH": "/usr/bin", "LANG": "C.UTF-8", "LC_ALL": "C", "TZ": "UTC", "PYTHONPATH": "/src",
        "KILN_RENDER_ZYGOTE": "off", "SSL_CERT_FILE": "/etc/ssl/cert.pem",
    }  # fmt: skip
    assert inherited_environment(server, ("MY_TOOL_HOME",))["MY_TOOL_HOME"] == "/opt/t"


@as_root
@pytest.mark.parametrize("shell_launcher", [False, True], ids=["c-launcher", "shell-launcher"])
def test_both_launchers_start_the_job_as_the_job_user_in_its_own_workdir(
    open_root: Path, shell_launcher: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KILN_TEST_SECRET", "server-only")
    executor = LocalExecutor(Settings(data_dir=open_root / "data"), shell_launcher=shell_launcher)
    attempt_id = f"job-user-{next(_ids)}"
    spec = AttemptSpec(
        attempt_id=attempt_id, job_id=attempt_id, image="host",
        command=["sh", "-c", 'echo "$(id -u):$(id -G) $(stat -c "%u %a" .) $HOME $USER ${KILN_TEST_SECRET:-none} '
                 '$(umask)"; ls /proc/self/fd | tr \'\\n\' \' \''],
        environment={}, vcpus=1.0, memory_mib=128,
        log_path=open_root / "data" / "logs" / f"{attempt_id}.log", workdir=open_root / "work" / attempt_id,
    )  # fmt: skip
    try:
        executor.start(spec)
        event = exited(wait_for_exit(executor, attempt_id))
    finally:
        executor.shutdown(grace_seconds=0.2)
    assert event.exit_code == 0, spec.log_path.read_text()
    group = lookup("nobody").gid
    expected = f"{FIRST_LENT}:{group} {FIRST_LENT} 700 {spec.workdir} {FIRST_LENT} none 0002\n0 1 2 3 "
    assert spec.log_path.read_text() == expected
    assert spec.log_path.stat().st_uid == 0 and (spec.log_path.parent.stat().st_mode & 0o777) == 0o700


@as_root
def test_a_definitions_user_that_is_not_allowed_never_starts(open_root: Path) -> None:
    executor = LocalExecutor(Settings(data_dir=open_root / "data"))
    spec = AttemptSpec(
        attempt_id="refused-user", job_id="refused-user", image="host", command=["true"], environment={},
        vcpus=1.0, memory_mib=128, log_path=open_root / "refused.log", workdir=open_root / "refused", user="root",
    )  # fmt: skip
    try:
        executor.start(spec)
        event = exited(wait_for_exit(executor, spec.attempt_id))
    finally:
        executor.shutdown(grace_seconds=0.2)
    assert not event.started and event.reason is not None
    assert event.reason.startswith("CannotStartContainerError: user root is not allowed")
    assert not spec.workdir.exists()


def test_kiln_toml_names_job_users_roles_and_the_work_root(tmp_path: Path) -> None:
    (tmp_path / "kiln.toml").write_text(
        '[server]\njob_user = "nobody"\nallowed_job_users = ["daemon"]\njob_environment = ["HTTPS_PROXY"]\n'
        'work_root = "/srv/kiln-work"\n\n'
        '[job_roles."arn:aws:iam::123456789012:role/render"]\nAWS_ACCESS_KEY_ID = "AKIA"\nAWS_SECRET_ACCESS_KEY = "s"\n'
    )
    settings = load_settings(tmp_path)
    assert (settings.job_user, settings.allowed_job_users, settings.job_environment) == (
        "nobody",
        ("daemon",),
        ("HTTPS_PROXY",),
    )
    assert settings.work_dir == Path("/srv/kiln-work")
    assert settings.job_roles == {
        "arn:aws:iam::123456789012:role/render": {"AWS_ACCESS_KEY_ID": "AKIA", "AWS_SECRET_ACCESS_KEY": "s"}
    }
    assert "AKIA" not in repr(settings)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('[job_roles.render]\nA = "b"\n', "must be a role ARN"),
        ('[job_roles."arn:aws:iam::1:role/r"]\nA = 1\n', 'must be a table of VARIABLE = "value" strings'),
        ('[job_roles."arn:aws:iam::1:role/r"]\nAWS_BATCH_JOB_ID = "x"\n', "AWS_BATCH_JOB_ID is reserved"),
        ('[server]\njob_user = "no-such-user-kiln"\n', "job_user 'no-such-user-kiln': no such user on this host"),
        ('[server]\njob_uids = "10-20"\n', "job_uids '10-20' must be FIRST-LAST with 1000 <= FIRST"),
        ("[server]\njob_uids = 5\n", "job_uids must be a string"),
    ],
)
def test_wrong_job_settings_refuse_the_start(tmp_path: Path, table: str, message: str) -> None:
    """What `kiln server` checks before it writes anything (`check_start`)."""
    (tmp_path / "kiln.toml").write_text(table)
    with pytest.raises(ValidationError, match=message):
        check_start(load_settings(tmp_path))


def test_a_server_with_a_job_uids_range_held_by_a_user_does_not_start(tmp_path: Path) -> None:
    """The real `kiln server`: a clear error, exit 2, and nothing written to the data dir."""
    nobody = pwd.getpwnam("nobody").pw_uid
    (tmp_path / "kiln.toml").write_text(f'[server]\njob_uids = "{nobody - 5}-{nobody + 5}"\n')
    started = subprocess.run(
        [sys.executable, "-m", "kiln", "server", "--data-dir", str(tmp_path), "--port", "0"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert started.returncode == 2, started
    assert f"holds uid {nobody} of user nobody" in " ".join(started.stderr.split())
    assert sorted(path.name for path in tmp_path.iterdir()) == ["kiln.toml"]


@as_root
def test_a_program_the_job_user_cannot_reach_is_passed_over_in_path_or_named_in_the_reason(open_root: Path) -> None:
    closed, reachable = open_root / "closed", open_root / "open"
    for folder, word in ((closed, "closed"), (reachable, "open")):
        folder.mkdir()
        (folder / "kiln-tool").write_text(f"#!/bin/sh\necho {word}\n")
        (folder / "kiln-tool").chmod(0o755)
    closed.chmod(0o700)
    reachable.chmod(0o755)
    executor = LocalExecutor(Settings(data_dir=open_root / "data"))

    def run(attempt_id: str, path: str) -> tuple[str | None, str]:
        spec = AttemptSpec(
            attempt_id=attempt_id, job_id=attempt_id, image="host", command=["kiln-tool"],
            environment={"PATH": path}, vcpus=1.0, memory_mib=128,
            log_path=open_root / "logs" / f"{attempt_id}.log", workdir=open_root / "work" / attempt_id,
        )  # fmt: skip
        executor.start(spec)
        event = exited(wait_for_exit(executor, attempt_id))
        return event.reason, spec.log_path.read_text() if spec.log_path.exists() else ""

    try:
        assert run("path-both", f"{closed}:{reachable}:/usr/bin:/bin") == (None, "open\n")
        reason, _ = run("path-closed-only", f"{closed}:/usr/bin:/bin")
    finally:
        executor.shutdown(grace_seconds=0.2)
    assert reason == (
        f'CannotStartContainerError: exec: "{closed}/kiln-tool": permission denied: the job runs as uid {FIRST_LENT} '
        f"(lent from job_uids, group 65534) and the directory {closed} (mode 0700, owner root) is closed to it; make that path reachable "
        "for it (or install Kiln and the job's programs outside private directories such as /root), or pick another "
        "user with job_user in kiln.toml"
    )


@as_root
@pytest.mark.parametrize(
    ("shell_launcher", "wdns"),
    [(False, True), (True, True), (True, False)],
    ids=["c-launcher", "shell-launcher", "shell-launcher-nsenter-before-2.38"],
)
def test_an_image_in_a_private_directory_runs_as_the_job_user_who_still_cannot_list_it(
    open_root: Path, shell_launcher: bool, wdns: bool
) -> None:
    """The jobs' mount namespace (job_mounts.py) shows a job user the entry an image needs inside a
    directory closed to it, and nothing else there: as pyenv's Python under /root (0700) for the
    render image. Both launchers enter it (setns in C, nsenter in the shell one)."""
    closed = open_root / "private"
    (closed / "tools").mkdir(parents=True)
    (closed / "secret.txt").write_text("root's own\n")
    tool = closed / "tools" / "kiln-tool"
    tool.write_text(
        '#!/bin/sh\necho "tool ran as $(id -u)"; ls "$1" 2>/dev/null && echo listed; cat "$1/secret.txt" || true\n'
        'echo "cwd $(/bin/pwd)"\n'  # the workdir, reachable inside the namespace (not "(unreachable)")
    )
    tool.chmod(0o755)
    closed.chmod(0o700)
    catalogue = ImageCatalogue({"private/tool": [str(tool)]})
    executor = LocalExecutor(Settings(data_dir=open_root / "data"), catalogue, shell_launcher=shell_launcher)
    executor._nsenter_wdns = executor._nsenter_wdns and wdns  # an nsenter without --wdns: a shell enters the workdir
    attempt_id = f"private-image-{next(_ids)}"
    spec = AttemptSpec(
        attempt_id=attempt_id, job_id=attempt_id, image="private/tool", command=[str(closed)], environment={},
        vcpus=1.0, memory_mib=128, log_path=open_root / "logs" / f"{attempt_id}.log",
        workdir=open_root / "work" / attempt_id,
    )  # fmt: skip
    try:
        assert any("private directories shown to jobs" in line for line in executor.describe()), executor.describe()
        executor.start(spec)
        event = exited(wait_for_exit(executor, attempt_id))
    finally:
        executor.shutdown(grace_seconds=0.2)
    log = spec.log_path.read_text()
    assert event.exit_code == 0 and event.reason is None, (event, log)
    assert log.startswith(f"tool ran as {FIRST_LENT}\n"), log
    assert "listed" not in log and "root's own" not in log, log
    assert f"cwd {spec.workdir}\n" in log, log
    assert sorted(os.listdir(closed)) == ["secret.txt", "tools"]  # the host's view is untouched

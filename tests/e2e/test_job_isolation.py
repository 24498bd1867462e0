"""Jobs cannot reach the control plane: a real `kiln server --auth sigv4` run as root, default job user.

Every job here is a `host` job that tries something it must not manage and prints what happened;
the assertions read its log and its exit, and check afterwards that nothing changed and the server
still answers signed requests. The data dir lies in a directory others may pass through (not in
pytest's private temp dir), so only Kiln's own modes and the job's user stand in the way.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from kiln.config import shared_work_root
from kiln.executors.job_users import DEFAULT_JOB_UIDS, blocked_on_the_way, lookup
from tests.conftest import FAST_FLAGS, KilnServer, start_server
from tests.support import make_queue, submit, unique, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the server must run as root to start jobs as another user")

ROLE = "arn:aws:iam::123456789012:role/kiln-isolation-render"
ROLE_SECRET = "role-secret-for-jobs-0123456789"
SERVER_SECRET = "server-only-secret-9876543210"
OPERATOR_AWS_SECRET = "operator-aws-secret-abcdef"
OTHER_USER = "daemon"  # exists on every Debian-like system; allowed below
NOT_ALLOWED_USER = "bin"  # exists, not allowed
MARKER = "kiln-isolation-marker"
FIRST_LENT, LAST_LENT = map(int, DEFAULT_JOB_UIDS.split("-"))
# What a job tries to append: computed by the job, so the stored command itself does not contain it.
APPENDED, APPEND_COMMAND = "kiln-appended-by-a-job-42", "echo kiln-appended-by-a-job-$((6*7))"


@dataclass
class Isolated:
    server: KilnServer
    batch: Any
    queue: str

    @property
    def data_dir(self) -> Path:
        return self.server.data_dir

    def log(self, job: dict[str, Any]) -> str:
        return (self.data_dir / "logs" / f"{job['container']['logStreamName']}.log").read_text()

    def run(self, script: str, *, timeout: float = 60, **container: Any) -> dict[str, Any]:
        """A `host` job running `sh -c script`, until it ends."""
        return wait_for(self.batch, self.submit(script, **container), timeout=timeout)

    def submit(self, script: str, **container: Any) -> str:
        properties = {"image": "host", "vcpus": 1, "memory": 128, "command": ["sh", "-c", script], **container}
        name = unique("isolation")
        self.batch.register_job_definition(jobDefinitionName=name, type="container", containerProperties=properties)
        return submit(self.batch, self.queue, name)


def create_key(data_dir: Path) -> tuple[str, str]:
    done = subprocess.run(
        [sys.executable, "-m", "kiln", "keys", "create", "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    pairs = dict(line.split("=", 1) for line in done.stdout.splitlines())
    return pairs["AWS_ACCESS_KEY_ID"], pairs["AWS_SECRET_ACCESS_KEY"]


@pytest.fixture(scope="module")
def isolated() -> Iterator[Isolated]:
    # /var/tmp (1777) -> a 0711 folder -> the data dir: a job could reach the data dir by path, so
    # what keeps it out is the data dir's own mode and the job's user, not a private parent.
    root = Path(tempfile.mkdtemp(prefix="kiln-isolation-", dir="/var/tmp"))
    root.chmod(0o711)
    data_dir = root / "data"
    key_id, secret = create_key(data_dir)
    (data_dir / "kiln.toml").write_text(
        f'[server]\nallowed_job_users = ["{OTHER_USER}"]\n\n[job_roles."{ROLE}"]\nKILN_ROLE_SECRET = "{ROLE_SECRET}"\n'
    )
    environment = {"KILN_TEST_SECRET": SERVER_SECRET, "AWS_SECRET_ACCESS_KEY": OPERATOR_AWS_SECRET}
    server = start_server(root, [*FAST_FLAGS, "--auth", "sigv4"], env=environment)
    batch = boto3.client(
        "batch", endpoint_url=server.endpoint, region_name="us-east-1",
        aws_access_key_id=key_id, aws_secret_access_key=secret,
    )  # fmt: skip
    try:
        yield Isolated(server, batch, make_queue(batch))
    finally:
        server.close()
        shutil.rmtree(root, ignore_errors=True)


def attempt_lines(log: str, prefix: str) -> dict[str, str]:
    """`prefix what: outcome` lines of a job's log, by `what`."""
    found = {}
    for line in log.splitlines():
        if line.startswith(prefix):
            what, _, outcome = line.removeprefix(prefix).partition(": ")
            found[what] = outcome
    return found


def try_each(checks: dict[str, str]) -> str:
    """A script that runs each check (a shell command) and prints `try NAME: done|refused`."""
    return "; ".join(
        f"if {command} >/dev/null 2>&1; then echo 'try {name}: done'; else echo 'try {name}: refused'; fi"
        for name, command in checks.items()
    )


def test_a_job_runs_as_a_uid_lent_to_it_in_a_workdir_it_owns(isolated: Isolated) -> None:
    job = isolated.run("echo \"$(id -u) gid=$(id -G) dir=$(stat -c '%u %a' .) home=$HOME user=$USER umask=$(umask)\"")
    assert job["status"] == "SUCCEEDED", job
    workdir = shared_work_root(isolated.data_dir) / job["container"]["taskArn"].rsplit("/", 1)[-1]
    uid = int(isolated.log(job).split()[0])
    assert FIRST_LENT <= uid <= LAST_LENT, isolated.log(job)
    group = pwd.getpwnam("nobody").pw_gid
    expected = f"{uid} gid={group} dir={uid} 700 home={workdir} user={uid} umask=0002\n"
    assert isolated.log(job) == expected


def test_a_job_can_neither_read_nor_append_to_the_credentials_or_the_database(isolated: Isolated) -> None:
    data = isolated.data_dir
    credentials, database = data / "credentials", data / "kiln.db"
    before = credentials.read_bytes()
    script = try_each({
        "read credentials": f"cat {credentials}",
        "append credentials": f"sh -c '{APPEND_COMMAND} >> {credentials}'",
        "read database": f"cat {database}",
        "append database": f"sh -c '{APPEND_COMMAND} >> {database}'",
        "list data dir": f"ls {data}",
        "read config": f"cat {data}/kiln.toml",
    })  # fmt: skip
    job = isolated.run(script)
    assert job["status"] == "SUCCEEDED", job
    outcomes = attempt_lines(isolated.log(job), "try ")
    assert outcomes == dict.fromkeys(
        ["read credentials", "append credentials", "read database", "append database", "list data dir", "read config"],
        "refused",
    )
    assert credentials.read_bytes() == before
    for name in ("kiln.db", "kiln.db-wal"):
        if (data / name).exists():
            assert APPENDED.encode() not in (data / name).read_bytes(), name
    assert isolated.batch.describe_job_queues(jobQueues=[isolated.queue])["jobQueues"], "signed requests still work"


def test_a_job_cannot_read_other_jobs_logs_nor_list_the_logs(isolated: Isolated) -> None:
    first = isolated.run(f"echo {MARKER}-log-of-another-job")
    assert isolated.log(first) == f"{MARKER}-log-of-another-job\n"
    other_log = isolated.data_dir / "logs" / f"{first['container']['logStreamName']}.log"
    job = isolated.run(try_each({"list logs": f"ls {other_log.parent}", "read other log": f"cat {other_log}"}))
    assert job["status"] == "SUCCEEDED", job
    assert attempt_lines(isolated.log(job), "try ") == {"list logs": "refused", "read other log": "refused"}


def test_a_job_cannot_reach_the_supervisor_socket(isolated: Isolated) -> None:
    python = "/usr/bin/python3"
    if blocked_on_the_way(python, lookup("nobody")) is not None:
        pytest.skip(f"no interpreter the job user may run at {python} to try a Unix socket")
    socket_path = isolated.data_dir / "executor" / "supervisor.sock"
    assert socket_path.exists()
    connect = f"import socket; socket.socket(socket.AF_UNIX).connect('{socket_path}')"
    job = isolated.run(
        try_each({"connect": f'{python} -c "{connect}"', "list executor dir": f"ls {socket_path.parent}"})
    )
    assert attempt_lines(isolated.log(job), "try ") == {"connect": "refused", "list executor dir": "refused"}


def test_jobs_running_at_once_cannot_reach_each_others_processes_but_share_files(isolated: Isolated) -> None:
    """Two jobs of the default user at once: each has a uid of its own, so the second can neither
    read the first's environment (its role credentials), nor enter its workdir through /proc, nor
    signal it; files they write for each other (a frames folder) are shared through their group."""
    shared = isolated.data_dir.parent / unique("shared")
    shared.mkdir()
    shared.chmod(0o777)
    holder = isolated.submit(
        f"echo $$ > {shared}/pid.tmp; mv {shared}/pid.tmp {shared}/pid; mkdir {shared}/frames; "
        f"echo {MARKER} > secret; echo first > {shared}/frames/0001; sleep 60",
        jobRoleArn=ROLE,
    )
    try:
        assert wait_for(isolated.batch, holder, {"RUNNING"})["status"] == "RUNNING"
        deadline = time.monotonic() + 30
        while not (shared / "frames" / "0001").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        pid = int((shared / "pid").read_text())
        assert ROLE_SECRET.encode() in Path(f"/proc/{pid}/environ").read_bytes()  # it is there to be read
        checks = {
            "read environ": f"grep -q {ROLE_SECRET} /proc/{pid}/environ",
            "enter cwd": f"cat /proc/{pid}/cwd/secret",
            "signal": f"kill -0 {pid}",
            "write shared frames": f"sh -c 'echo second > {shared}/frames/0002'",
        }
        prying = isolated.run('echo "uid $(id -u)"; ' + try_each(checks))
        log = isolated.log(prying)
        assert attempt_lines(log, "try ") == {
            "read environ": "refused",
            "enter cwd": "refused",
            "signal": "refused",
            "write shared frames": "done",
        }, log
        holder_uid = Path(f"/proc/{pid}").stat().st_uid
        assert FIRST_LENT <= holder_uid <= LAST_LENT and log.startswith("uid ")
        assert int(log.split()[1]) != holder_uid
        assert (shared / "frames").stat().st_mode & 0o070 == 0o070  # umask 002: the group may write
        assert (shared / "frames" / "0002").read_text() == "second\n"
        assert isolated.batch.describe_jobs(jobs=[holder])["jobs"][0]["status"] == "RUNNING"
    finally:
        isolated.batch.terminate_job(jobId=holder, reason="test over")
        shutil.rmtree(shared, ignore_errors=True)


def test_a_job_cannot_list_the_workdirs_nor_read_another_users_workdir(isolated: Isolated) -> None:
    """A definition's `user` is that user, as in Docker: its workdir is its own."""
    holder = isolated.submit(f"echo {MARKER} > secret; echo ready; sleep 60", user=OTHER_USER)
    job = wait_for(isolated.batch, holder, {"RUNNING"})
    workdir = shared_work_root(isolated.data_dir) / job["container"]["taskArn"].rsplit("/", 1)[-1]
    try:
        deadline = time.monotonic() + 30
        while not (workdir / "secret").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (workdir / "secret").read_text() == f"{MARKER}\n"
        assert workdir.stat().st_uid == pwd.getpwnam(OTHER_USER).pw_uid
        checks = {"list workdirs": f"ls {workdir.parent}", "read other workdir": f"cat {workdir}/secret"}
        prying = isolated.run(try_each(checks))
        assert attempt_lines(isolated.log(prying), "try ") == {
            "list workdirs": "refused",
            "read other workdir": "refused",
        }
    finally:
        isolated.batch.terminate_job(jobId=holder, reason="test over")


def test_a_job_sees_no_descriptor_but_its_own_three(isolated: Isolated) -> None:
    job = isolated.run("ls /proc/self/fd")  # 3: the directory `ls` itself reads
    assert isolated.log(job).split() == ["0", "1", "2", "3"]


def test_a_job_inherits_none_of_the_servers_secrets(isolated: Isolated) -> None:
    job = isolated.run("env")
    environment = dict(line.split("=", 1) for line in isolated.log(job).splitlines() if "=" in line)
    assert "KILN_TEST_SECRET" not in environment
    assert environment.get("AWS_SECRET_ACCESS_KEY") is None
    assert "KILN_ROLE_SECRET" not in environment, "no role: no role credentials"
    assert SERVER_SECRET not in isolated.log(job) and OPERATOR_AWS_SECRET not in isolated.log(job)
    assert environment["PATH"] == os.environ["PATH"]  # what describes the host is inherited
    assert FIRST_LENT <= int(environment["USER"]) <= LAST_LENT and environment["LOGNAME"] == environment["USER"]


def test_a_jobs_role_hands_it_the_roles_variables_which_describe_jobs_never_shows(isolated: Isolated) -> None:
    job = isolated.run('echo "role=$KILN_ROLE_SECRET"', jobRoleArn=ROLE)
    assert job["status"] == "SUCCEEDED", job
    assert isolated.log(job) == f"role={ROLE_SECRET}\n"
    assert ROLE_SECRET not in str(job)  # container.environment, jobRoleArn and all
    assert job["container"].get("jobRoleArn") == ROLE


def test_a_definitions_user_is_honoured_when_allowed(isolated: Isolated) -> None:
    job = isolated.run('echo "user=$(id -un) dir=$(stat -c %U .) home=$HOME"', user=OTHER_USER)
    assert job["status"] == "SUCCEEDED", job
    entry = pwd.getpwnam(OTHER_USER)
    home = entry.pw_dir if os.path.isdir(entry.pw_dir) else None
    text = isolated.log(job)
    assert text.startswith(f"user={OTHER_USER} dir={OTHER_USER} home=")
    if home is not None:
        assert text == f"user={OTHER_USER} dir={OTHER_USER} home={home}\n"


@pytest.mark.parametrize(
    ("user", "reason"),
    [
        (
            "no-such-user-kiln",
            "CannotStartContainerError: Error response from daemon: unable to find user no-such-user-kiln: "
            "no matching entries in passwd file",
        ),
        (
            NOT_ALLOWED_USER,
            f"CannotStartContainerError: user {NOT_ALLOWED_USER} is not allowed to run jobs on this Kiln server "
            f"(allowed: nobody, {OTHER_USER}; add it to allowed_job_users in kiln.toml)",
        ),
        (
            "root",
            "CannotStartContainerError: user root is not allowed to run jobs on this Kiln server "
            f"(allowed: nobody, {OTHER_USER}; add it to allowed_job_users in kiln.toml)",
        ),
    ],
)
def test_a_definitions_user_is_refused_when_missing_or_not_allowed(isolated: Isolated, user: str, reason: str) -> None:
    job = isolated.run("echo ran", user=user)
    assert job["status"] == "FAILED", job
    assert job["statusReason"] == "Task failed to start"
    assert job["container"]["reason"] == reason


def test_the_render_image_runs_as_the_job_user(isolated: Isolated) -> None:
    """Kiln's render image as the default, unprivileged user. Where this interpreter lies behind a
    directory closed to that user (pyenv under /root, 0700, as on the test machines), the jobs'
    mount namespace shows them that entry alone (kiln/executors/job_mounts.py): the frame renders
    all the same, and the job still cannot list /root."""
    nobody = lookup("nobody")
    output = isolated.data_dir.parent / unique("render")
    output.mkdir()
    os.chown(output, 0, nobody.gid)
    output.chmod(0o770)  # what docs/security.md says: the jobs' group may write
    scene = isolated.data_dir.parent / "scene.blend"
    if not scene.exists():
        written = subprocess.run([sys.executable, "-m", "kiln", "sample-scene", str(scene), "--frames", "1"],
                                 capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
        assert written.returncode == 0, written.stderr
        scene.chmod(0o644)
    command = ["render", "-i", str(scene), "-o", str(output), "-f", "1", "--resolution-percent", "5", "--samples", "1"]
    name = unique("render")
    isolated.batch.register_job_definition(
        jobDefinitionName=name, type="container",
        containerProperties={"image": "kiln/render", "vcpus": 1, "memory": 2048, "command": command},
    )  # fmt: skip
    job = wait_for(isolated.batch, submit(isolated.batch, isolated.queue, name), timeout=180)
    assert job["status"] == "SUCCEEDED", (job, isolated.log(job))
    assert FIRST_LENT <= (output / "frames" / "0001.png").stat().st_uid <= LAST_LENT
    hidden = blocked_on_the_way(sys.executable, nobody)
    if hidden is not None:  # the namespace opened the way, and no more of it
        closed = hidden.split()[1]
        probe = isolated.run(f'ls -a {closed}; echo "listed: $?"')
        assert probe["status"] == "SUCCEEDED" and "listed: 0" not in isolated.log(probe), isolated.log(probe)

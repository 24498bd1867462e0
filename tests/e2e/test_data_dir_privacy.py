"""The data dir, the database, job logs and the credentials file are private to the server's user."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import boto3
import httpx
import pytest

from tests.conftest import FAST_FLAGS, KilnServer, free_port
from tests.support import make_queue, register_shell, submit, wait_for
from tests.ui.test_endpoints import PNG, render_shaped_job

BUCKET = "kiln-privacy"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_data_dir_database_and_job_logs_are_private(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)
    data_dir.chmod(0o755)  # as an older Kiln, or a user's mkdir, would have left it
    server = KilnServer(data_dir, free_port(), FAST_FLAGS)
    server.start()
    try:
        batch = server.client()
        job = wait_for(batch, submit(batch, make_queue(batch), register_shell(batch, "echo secret-ish output")))
        assert job["status"] == "SUCCEEDED"
        log_file = data_dir / "logs" / f"{job['container']['logStreamName']}.log"
        assert log_file.read_text() == "secret-ish output\n"
        assert mode(log_file) == 0o600
        for directory in (data_dir, data_dir / "logs"):
            assert mode(directory) == 0o700, directory
        # Jobs run as other users (lent uids): their workdirs live outside the data dir, under a root
        # they may pass through but not list (tests/e2e/test_job_isolation.py).
        from kiln.config import shared_work_root

        assert not (data_dir / "work").exists() and mode(shared_work_root(data_dir)) == 0o711
        for name in ("kiln.db", "kiln.db-wal", "kiln.lock"):
            assert mode(data_dir / name) == 0o600, name
    finally:
        server.stop()


def test_keys_create_writes_a_private_credentials_file(tmp_path: Path) -> None:
    data_dir = tmp_path / "fresh" / "data"
    result = subprocess.run(
        [sys.executable, "-m", "kiln", "keys", "create", "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert mode(data_dir) == 0o700
    assert mode(data_dir / "credentials") == 0o600
    key_id = result.stdout.splitlines()[0].removeprefix("AWS_ACCESS_KEY_ID=")
    assert len(key_id) == 20 and key_id.startswith("AKIA")


def refused_start(data_dir: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "kiln", "server", "--port", str(free_port()), "--data-dir", str(data_dir)]
    result = subprocess.run([*command, *flags], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2, result.stderr
    return result


def snapshot(data_dir: Path) -> dict[str, tuple[int, int, int]]:
    """Every entry under the data dir (and the dir itself): mode, size, modification time."""
    if not data_dir.exists():
        return {}
    entries = {".": data_dir.lstat()}
    entries.update({str(path.relative_to(data_dir)): path.lstat() for path in data_dir.rglob("*")})
    return {name: (info.st_mode, info.st_size, info.st_mtime_ns) for name, info in entries.items()}


def processes_naming(data_dir: Path) -> list[str]:
    """Command lines of live processes that name the data dir (a supervisor names its executor dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if entry.name.isdigit() and str(data_dir) in command:
            found.append(command)
    return found


@pytest.mark.parametrize(
    ("content", "message"),
    [('{"keys": []}\n', "is accessible by other users (mode 644)"), ("not json", "is not a Kiln credentials file")],
)
def test_server_refuses_a_credentials_file_others_can_read(tmp_path: Path, content: str, message: str) -> None:
    """Refused before anything is written: no database, no supervisor, no mode narrowed."""
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)
    data_dir.chmod(0o755)
    credentials = data_dir / "credentials"
    credentials.write_text(content)
    credentials.chmod(0o644 if "644" in message else 0o600)
    before = snapshot(data_dir)
    result = refused_start(data_dir, "--auth", "sigv4")
    assert message in result.stderr.replace("\n", "")
    if "644" in message:
        assert f"chmod 600 {credentials}" in result.stderr.replace("\n", "")
    assert snapshot(data_dir) == before
    assert not (data_dir / "kiln.db").exists() and not (data_dir / "executor").exists()
    assert processes_naming(data_dir) == []


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--executor", "bogus"], "unknown executor 'bogus'"), (["--host", "0.0.0.0"], "without authentication")],
)
def test_a_refused_start_writes_nothing(tmp_path: Path, flags: list[str], message: str) -> None:
    data_dir = tmp_path / "never" / "data"
    result = refused_start(data_dir, *flags)
    assert message in result.stderr.replace("\n", "")
    assert not (tmp_path / "never").exists()
    assert processes_naming(data_dir) == []


# ------------------------------------------------ nothing under the data dir is readable by others


def readable_by_others(data_dir: Path) -> list[str]:
    """Entries under the data dir with any group/other permission, attempt work dirs (`work/`) left out."""
    exposed = []
    for root, directories, files in os.walk(data_dir):
        if Path(root) == data_dir:
            directories[:] = [name for name in directories if name != "work"]
        for name in [*directories, *files]:
            path = Path(root, name)
            if not path.is_symlink() and mode(path) & 0o077:
                exposed.append(f"{path.relative_to(data_dir)} {mode(path):o}")
    return exposed


def test_nothing_kiln_writes_under_the_data_dir_is_readable_by_others(tmp_path: Path, s3_endpoint: str) -> None:
    """After jobs ran and the dashboard served an S3 video (copied into `dashboard-cache`) and a frame."""
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="out/output.mp4", Body=b"\0\0\0\x18ftypmp42" * 64)
    s3.put_object(Bucket=BUCKET, Key="out/frames/0001.png", Body=PNG)
    server = KilnServer(tmp_path / "data", free_port(), FAST_FLAGS, env={"AWS_ENDPOINT_URL_S3": s3_endpoint})
    server.start()
    try:
        batch = server.client()
        job = wait_for(batch, submit(batch, make_queue(batch), register_shell(batch, "echo private")))
        assert job["status"] == "SUCCEEDED"
        stitch = render_shaped_job(batch, ["stitch", "-i", f"s3://{BUCKET}/out", "-o", f"s3://{BUCKET}/out"])
        base = f"{server.endpoint}/kiln/v1/renders/{stitch}"
        video = httpx.get(f"{base}/video", timeout=30)
        assert video.status_code == 200 and video.content.startswith(b"\0\0\0\x18ftyp")
        assert httpx.get(f"{base}/frames/0001.png", timeout=30).content == PNG
        assert [path.suffix for path in (server.data_dir / "dashboard-cache").iterdir()] == [".mp4"]
        assert readable_by_others(server.data_dir) == []
    finally:
        server.close()
    assert readable_by_others(server.data_dir) == []

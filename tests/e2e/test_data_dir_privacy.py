"""The data dir, the database, job logs and the credentials file are private to the server's user."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

from tests.conftest import FAST_FLAGS, KilnServer, free_port
from tests.support import make_queue, register_shell, submit, wait_for


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
        for directory in (data_dir, data_dir / "logs", data_dir / "work"):
            assert mode(directory) == 0o700, directory
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


def test_server_refuses_a_credentials_file_others_can_read(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    credentials = data_dir / "credentials"
    credentials.write_text('{"keys": []}\n')
    credentials.chmod(0o644)
    command = [sys.executable, "-m", "kiln", "server", "--auth", "sigv4", "--port", str(free_port())]
    result = subprocess.run(
        [*command, "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    assert "is accessible by other users (mode 644)" in result.stderr
    assert f"chmod 600 {credentials}" in result.stderr.replace("\n", "")
